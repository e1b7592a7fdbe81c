package lballoc

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Service is what the allocator reads of a Service.
type Service struct {
	Key     string // namespace/name
	Created time.Time
	// LoadBalancer is spec.type == LoadBalancer.
	LoadBalancer bool
	// Class is spec.loadBalancerClass; empty when the Service has none.
	Class string
	// Families are spec.ipFamilies, primary first.
	Families []ipfamily.Family
	// Requested is spec.loadBalancerIP, when it is a valid address.
	Requested netip.Addr
	// Ingress are the IPs of status.loadBalancer.ingress, in order.
	Ingress []netip.Addr
	// IngressOther says the status also holds entries that are no plain IP (a
	// hostname, an unparsable address), which a write of ours replaces.
	IngressOther bool
	// ResourceVersion is the version the status was read from.
	ResourceVersion string
}

// serviceOf reads a Service's fields the allocator uses.
func serviceOf(s *corev1.Service) Service {
	out := Service{
		Key:             s.Namespace + "/" + s.Name,
		Created:         s.CreationTimestamp.Time,
		LoadBalancer:    s.Spec.Type == corev1.ServiceTypeLoadBalancer,
		ResourceVersion: s.ResourceVersion,
	}
	if s.Spec.LoadBalancerClass != nil {
		out.Class = *s.Spec.LoadBalancerClass
	}
	for _, f := range s.Spec.IPFamilies {
		switch f {
		case corev1.IPv4Protocol:
			out.Families = append(out.Families, ipfamily.IPv4)
		case corev1.IPv6Protocol:
			out.Families = append(out.Families, ipfamily.IPv6)
		}
	}
	if a, err := netip.ParseAddr(s.Spec.LoadBalancerIP); err == nil {
		out.Requested = a.Unmap()
	}
	for _, in := range s.Status.LoadBalancer.Ingress {
		a, err := netip.ParseAddr(in.IP)
		if err != nil || in.Hostname != "" {
			out.IngressOther = true
			continue
		}
		out.Ingress = append(out.Ingress, a.Unmap())
	}
	return out
}

// Params are what the allocator hands out and to whom.
type Params struct {
	// Pools per family, in the order addresses are taken from them.
	Pools map[ipfamily.Family][]config.IPPool
	// Class is the loadBalancerClass answered; DefaultClass also answers Services
	// without one.
	Class        string
	DefaultClass bool
}

// ParamsOf builds Params from the [loadbalancer] section.
func ParamsOf(c config.LoadBalancer) Params {
	return Params{
		Pools:        map[ipfamily.Family][]config.IPPool{ipfamily.IPv4: c.IPv4Pools, ipfamily.IPv6: c.IPv6Pools},
		Class:        c.Class,
		DefaultClass: c.DefaultClass,
	}
}

// Answers reports whether the allocator gives s its addresses.
func (p Params) Answers(s Service) bool {
	if !s.LoadBalancer {
		return false
	}
	if s.Class == "" {
		return p.DefaultClass
	}
	return s.Class == p.Class
}

// inPools reports whether a is in one of the pools.
func (p Params) inPools(a netip.Addr) bool {
	for _, pool := range p.Pools[ipfamily.Of(a)] {
		if pool.Contains(a) {
			return true
		}
	}
	return false
}

// Reason classifies a Problem.
type Reason string

// The problems the allocator reports, each naming the Service.
const (
	// ReasonConflict: the Service's status holds an address another Service holds
	// too; the older one keeps it, this one gets another.
	ReasonConflict Reason = "Conflict"
	// ReasonOutsidePools: the Service's status holds an address in no pool (after
	// a pool change); it gets one from the pools instead.
	ReasonOutsidePools Reason = "OutsidePools"
	// ReasonRequestUnavailable: spec.loadBalancerIP is in no pool or held by
	// another Service; the Service keeps what it has, or waits.
	ReasonRequestUnavailable Reason = "RequestUnavailable"
	// ReasonExhausted: no free address of a family; retried when one frees.
	ReasonExhausted Reason = "PoolExhausted"
	// ReasonNoPool: none of the Service's families has a pool.
	ReasonNoPool Reason = "NoPool"
)

// Problem is one thing the allocator could not do as the Service asks.
type Problem struct {
	Service string `json:"service"`
	Reason  Reason `json:"reason"`
	Message string `json:"message"`
}

// Allocation is the allocator's decision for every Service.
type Allocation struct {
	// Status maps every Service the allocator answers to the ingress IPs its status
	// must hold (none: empty). Services not in Status are not written.
	Status map[string][]netip.Addr
	// Held are the pool addresses held by Services the allocator does not answer
	// (another class, or its own class switched off): never handed out.
	Held     map[netip.Addr]string
	Problems []Problem
	// Used and Size count the addresses of each family's pools.
	Used map[ipfamily.Family]int
	Size map[ipfamily.Family]float64
}

// Allocate decides the addresses of every Service from the Services' status alone,
// so a new leader, or this one after a restart, decides the same as the last: an
// address in a Service's status stays with it while the Service is answered, wants
// that family and the address is in a pool. Services are handled oldest first
// (then by name), which settles conflicts: the older Service keeps an address two
// claim. New addresses are the lowest free ones of the pools, in pool order.
func Allocate(p Params, services []Service) Allocation {
	svcs := slices.Clone(services)
	slices.SortFunc(svcs, func(a, b Service) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.Key, b.Key))
	})
	a := Allocation{
		Status: map[string][]netip.Addr{},
		Held:   map[netip.Addr]string{},
		Used:   map[ipfamily.Family]int{},
		Size:   map[ipfamily.Family]float64{},
	}
	owner := map[netip.Addr]string{}
	// What other load balancers hold is never ours to give. (A Service that is no
	// load balancer has no ingress: the API server clears it with the type.)
	for _, s := range svcs {
		if p.Answers(s) || !s.LoadBalancer {
			continue
		}
		for _, ip := range s.Ingress {
			if _, taken := owner[ip]; !taken && p.inPools(ip) {
				owner[ip], a.Held[ip] = s.Key, s.Key
			}
		}
	}
	assigned := map[string]map[ipfamily.Family]netip.Addr{}
	for _, s := range svcs {
		if p.Answers(s) {
			assigned[s.Key] = keep(p, s, owner, &a.Problems)
		}
	}
	for _, s := range svcs {
		if p.Answers(s) {
			allocate(p, s, assigned[s.Key], owner, &a.Problems)
			var ips []netip.Addr
			for _, f := range wantedFamilies(p, s) {
				if ip, ok := assigned[s.Key][f]; ok {
					ips = append(ips, ip)
				}
			}
			a.Status[s.Key] = ips
		}
	}
	for ip := range owner {
		a.Used[ipfamily.Of(ip)]++
	}
	for f, pools := range p.Pools {
		for _, pool := range pools {
			a.Size[f] += poolSize(pool)
		}
	}
	return a
}

// wantedFamilies are the Service's families, or the first family with a pool when
// it names none (the API server always names them; objects built by hand may not).
func wantedFamilies(p Params, s Service) []ipfamily.Family {
	if len(s.Families) > 0 {
		return s.Families
	}
	for _, f := range ipfamily.Both {
		if len(p.Pools[f]) > 0 {
			return []ipfamily.Family{f}
		}
	}
	return nil
}

// keep takes the addresses of the Service's status that it may keep: one per wanted
// family, in a pool, not taken by an older Service.
func keep(p Params, s Service, owner map[netip.Addr]string, problems *[]Problem) map[ipfamily.Family]netip.Addr {
	kept := map[ipfamily.Family]netip.Addr{}
	wanted := wantedFamilies(p, s)
	for _, ip := range s.Ingress {
		f := ipfamily.Of(ip)
		if _, dup := kept[f]; dup || !slices.Contains(wanted, f) {
			continue // a family it no longer has, or a second address of one
		}
		switch holder, taken := owner[ip]; {
		case !p.inPools(ip):
			*problems = append(*problems, Problem{s.Key, ReasonOutsidePools,
				fmt.Sprintf("%s is in no %s pool; assigning another", ip, f)})
		case taken:
			*problems = append(*problems, Problem{s.Key, ReasonConflict,
				fmt.Sprintf("%s is also held by %s, which keeps it; assigning another", ip, holder)})
		default:
			owner[ip], kept[f] = s.Key, ip
		}
	}
	return kept
}

// allocate gives the Service an address of every wanted family it lacks, the
// requested one when it is of that family, and moves a kept address to the
// requested one when that is free.
func allocate(p Params, s Service, assigned map[ipfamily.Family]netip.Addr, owner map[netip.Addr]string, problems *[]Problem) {
	wanted := wantedFamilies(p, s)
	pooled := false
	for _, f := range wanted {
		pooled = pooled || len(p.Pools[f]) > 0
	}
	if !pooled {
		*problems = append(*problems, Problem{s.Key, ReasonNoPool,
			fmt.Sprintf("no pool of its IP families %v", wanted)})
		return
	}
	for _, f := range wanted {
		if len(p.Pools[f]) == 0 {
			continue // dual-stack where only one family has pools: one address
		}
		current, has := assigned[f]
		if r := s.Requested; r.IsValid() && f.Has(r) && r != current {
			switch holder, taken := owner[r]; {
			case !p.inPools(r):
				*problems = append(*problems, Problem{s.Key, ReasonRequestUnavailable,
					fmt.Sprintf("spec.loadBalancerIP %s is in no %s pool", r, f)})
			case taken:
				*problems = append(*problems, Problem{s.Key, ReasonRequestUnavailable,
					fmt.Sprintf("spec.loadBalancerIP %s is held by %s", r, holder)})
			default:
				if has {
					delete(owner, current)
				}
				owner[r], assigned[f] = s.Key, r
			}
			continue
		}
		if has {
			continue
		}
		ip, ok := lowestFree(p.Pools[f], owner)
		if !ok {
			*problems = append(*problems, Problem{s.Key, ReasonExhausted,
				fmt.Sprintf("no free %s address in the pools", f)})
			continue
		}
		owner[ip], assigned[f] = s.Key, ip
	}
}

// lowestFree returns the first address of the pools, in order, nobody holds. It
// steps over held addresses only, so it costs at most one step per Service.
func lowestFree(pools []config.IPPool, owner map[netip.Addr]string) (netip.Addr, bool) {
	for _, pool := range pools {
		for ip := pool.First; ip.IsValid(); ip = ip.Next() {
			if _, taken := owner[ip]; !taken {
				return ip, true
			}
			if ip == pool.Last {
				break
			}
		}
	}
	return netip.Addr{}, false
}

// poolSize is the number of addresses of a pool (as a float: an IPv6 pool may hold
// 2^64 and more).
func poolSize(p config.IPPool) float64 {
	first, last := p.First.As16(), p.Last.As16()
	size := 0.0
	for i := range 16 {
		size = size*256 + float64(int(last[i])-int(first[i]))
	}
	return size + 1
}

// Free is the number of free addresses of a family.
func (a Allocation) Free(f ipfamily.Family) float64 {
	return math.Max(0, a.Size[f]-float64(a.Used[f]))
}
