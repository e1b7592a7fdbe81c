package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// LoadBalancer configures the load-balancer IP allocator: one node at a time (the
// holder of a Lease) gives Services of type LoadBalancer addresses from the pools
// and writes them to status.loadBalancer.ingress, where the routing controller
// finds them to advertise.
type LoadBalancer struct {
	Enabled bool `toml:"enabled"`
	// IPv4Pools and IPv6Pools are the addresses handed out, each a CIDR or an
	// inclusive range "first-last".
	IPv4Pools []IPPool `toml:"ipv4_pools"`
	IPv6Pools []IPPool `toml:"ipv6_pools"`
	// Class is the spec.loadBalancerClass the allocator answers.
	Class string `toml:"class"`
	// DefaultClass also answers Services without a loadBalancerClass.
	DefaultClass bool `toml:"default_class"`
	// LeaseNamespace and LeaseName name the Lease whose holder allocates.
	LeaseNamespace string `toml:"lease_namespace"`
	LeaseName      string `toml:"lease_name"`
	// LeaseDuration is how long followers wait after the leader's last renewal
	// before one of them takes over: the failover time when a leader dies.
	LeaseDuration Duration `toml:"lease_duration"`
}

// DefaultLoadBalancerClass is kube-router's class, so Services written for its
// allocator keep their addresses under kube-routerd.
const DefaultLoadBalancerClass = "kube-router"

func defaultLoadBalancer() LoadBalancer {
	return LoadBalancer{
		Class:          DefaultLoadBalancerClass,
		DefaultClass:   true,
		LeaseNamespace: "kube-system",
		LeaseName:      "kube-routerd-lballoc",
		LeaseDuration:  Duration{15 * time.Second},
	}
}

// IPPool is an inclusive range of addresses of one family, written as a CIDR
// ("192.0.2.0/28", every address of it) or as "first-last".
type IPPool struct{ First, Last netip.Addr }

// UnmarshalText parses a CIDR or a "first-last" range.
func (p *IPPool) UnmarshalText(text []byte) error {
	s := strings.TrimSpace(string(text))
	if first, last, ok := strings.Cut(s, "-"); ok {
		a, err1 := netip.ParseAddr(strings.TrimSpace(first))
		b, err2 := netip.ParseAddr(strings.TrimSpace(last))
		switch {
		case err1 != nil || err2 != nil:
			return fmt.Errorf("invalid address range %q (want \"first-last\", e.g. \"192.0.2.10-192.0.2.20\")", s)
		case a.Is4() != b.Is4():
			return fmt.Errorf("invalid address range %q: first and last are of different IP families", s)
		case b.Less(a):
			return fmt.Errorf("invalid address range %q: last comes before first", s)
		}
		*p = IPPool{First: a, Last: b}
		return nil
	}
	var pre Prefix
	if err := pre.UnmarshalText([]byte(s)); err != nil {
		return fmt.Errorf("%v (want a CIDR or a range \"first-last\")", err)
	}
	*p = PoolOf(pre.Prefix)
	return nil
}

// MarshalText writes the pool as a CIDR when it is one, else as "first-last".
func (p IPPool) MarshalText() ([]byte, error) {
	if !p.First.IsValid() {
		return []byte(""), nil
	}
	for bits := 0; bits <= p.First.BitLen(); bits++ {
		if pre := netip.PrefixFrom(p.First, bits).Masked(); pre.Addr() == p.First && PoolOf(pre) == p {
			return []byte(pre.String()), nil
		}
	}
	return []byte(p.First.String() + "-" + p.Last.String()), nil
}

// PoolOf returns every address of a prefix as a pool.
func PoolOf(pre netip.Prefix) IPPool {
	first := pre.Masked().Addr()
	last := first.AsSlice()
	for i := range last {
		hostBits := max(0, min(8, (i+1)*8-pre.Bits()))
		last[i] |= byte(0xff) >> (8 - hostBits)
	}
	l, _ := netip.AddrFromSlice(last)
	return IPPool{First: first, Last: l}
}

// Contains reports whether a is in the pool.
func (p IPPool) Contains(a netip.Addr) bool {
	a = a.Unmap()
	return a.BitLen() == p.First.BitLen() && !a.Less(p.First) && !p.Last.Less(a)
}

func (p IPPool) overlaps(o IPPool) bool {
	return p.First.BitLen() == o.First.BitLen() && !p.Last.Less(o.First) && !o.Last.Less(p.First)
}

func (p IPPool) String() string {
	b, _ := p.MarshalText()
	return string(b)
}

func (c LoadBalancer) validate(v *validator, proxy ServiceProxy) {
	if !c.Enabled {
		return
	}
	if len(c.IPv4Pools)+len(c.IPv6Pools) == 0 {
		// Named after the pools, so a pool dropped for its format is reported once.
		v.add("loadbalancer.ipv4_pools", "the allocator is enabled without a pool: set ipv4_pools, ipv6_pools or both")
	}
	var seen []IPPool
	for _, f := range []struct {
		key   string
		pools []IPPool
		is4   bool
	}{{"loadbalancer.ipv4_pools", c.IPv4Pools, true}, {"loadbalancer.ipv6_pools", c.IPv6Pools, false}} {
		for _, p := range f.pools {
			if p.First.Is4() != f.is4 {
				v.add(f.key, fmt.Sprintf("%s is not of this list's IP family", p))
				continue
			}
			for _, o := range seen {
				if p.overlaps(o) {
					v.add(f.key, fmt.Sprintf("%s overlaps %s: an address may be in one pool only", p, o))
				}
			}
			seen = append(seen, p)
			if len(proxy.LoadBalancerIPRanges) > 0 && !poolInPrefixes(p, proxy.LoadBalancerIPRanges) {
				v.add(f.key, fmt.Sprintf("%s is not inside service_proxy.loadbalancer_ip_ranges: the service proxy would not program its addresses", p))
			}
		}
	}
	if c.Class != "" {
		if errs := validation.IsQualifiedName(c.Class); len(errs) > 0 {
			v.add("loadbalancer.class", fmt.Sprintf("invalid loadBalancerClass %q: want a label-style name such as \"kube-router\" or \"example.com/bare-metal\"", c.Class))
		}
	} else if !c.DefaultClass {
		v.add("loadbalancer.class", "is empty and default_class is off: the allocator would answer no Service")
	}
	if errs := validation.IsDNS1123Label(c.LeaseNamespace); len(errs) > 0 {
		v.add("loadbalancer.lease_namespace", fmt.Sprintf("invalid namespace %q: want a DNS label (lower-case letters, digits and '-')", c.LeaseNamespace))
	}
	if errs := validation.IsDNS1123Subdomain(c.LeaseName); len(errs) > 0 {
		v.add("loadbalancer.lease_name", fmt.Sprintf("invalid Lease name %q: want a DNS subdomain (lower-case letters, digits, '-' and '.')", c.LeaseName))
	}
	if c.LeaseDuration.Duration < 2*time.Second {
		v.add("loadbalancer.lease_duration", "must be at least 2s")
	}
}

// poolInPrefixes reports whether one of ps holds the whole pool.
func poolInPrefixes(p IPPool, ps []Prefix) bool {
	for _, pre := range ps {
		if pre.Contains(p.First) && pre.Contains(p.Last) {
			return true
		}
	}
	return false
}
