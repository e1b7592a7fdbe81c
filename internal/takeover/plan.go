package takeover

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Kind is a kind of kernel or file system object.
type Kind string

// The kinds of objects kube-router leaves.
const (
	KindRule    Kind = "iptables rule"
	KindChain   Kind = "iptables chain"
	KindSet     Kind = "ipset"
	KindIPRule  Kind = "ip rule"
	KindRoute   Kind = "route"
	KindTunnel  Kind = "tunnel"
	KindCNIFile Kind = "CNI config"
	KindBridge  Kind = "bridge"
	KindIPVS    Kind = "IPVS service"
)

// Object is one object of kube-router's; the fields its Kind uses are set.
type Object struct {
	Kind   Kind
	Domain Domain
	// Family, Table and Chain locate a chain (Name) or a rule (Rule).
	Family ipfamily.Family
	Table  string
	Chain  string
	Rule   string
	// Name is a chain's, set's, link's or file's name.
	Name    string
	Route   route.TableRoute
	IPRule  route.IPRule
	Link    route.Link
	Service ipvs.Key
}

func (o Object) String() string {
	switch o.Kind {
	case KindRule:
		return fmt.Sprintf("iptables IPv%d %s rule in %s: %s", o.Family, o.Table, o.Chain, o.Rule)
	case KindChain:
		return fmt.Sprintf("iptables IPv%d %s chain %s", o.Family, o.Table, o.Name)
	case KindRoute:
		return "route " + o.Route.String()
	case KindIPRule:
		return o.IPRule.String()
	case KindTunnel:
		return fmt.Sprintf("tunnel %s (%s)", o.Link.Name, o.Link.Kind)
	case KindIPVS:
		return "IPVS service " + o.Service.String()
	}
	return string(o.Kind) + " " + o.Name
}

// View is what the kernel and the CNI directory hold, as far as a takeover looks.
type View struct {
	// IPTables holds the rules of every chain by family, table and chain.
	IPTables map[ipfamily.Family]map[string]map[string][]string
	Sets     []string
	// ZebraRoutes are the main table's routes of protocol zebra.
	ZebraRoutes []route.TableRoute
	// PolicyRoutes are the routes of tables 77-79.
	PolicyRoutes []route.TableRoute
	IPRules      []route.IPRule
	Links        []route.Link
	// CNIFiles are the paths of kube-router's CNI files that exist.
	CNIFiles []string
	// OurCNIWritten says kube-routerd's own CNI configuration is on disk.
	OurCNIWritten bool
	// PodCIDRs are the pod CIDRs of every Node of the cluster.
	PodCIDRs []netip.Prefix
}

// Waiting is an object of kube-router's kept for now, and why.
type Waiting struct {
	Object
	Reason string
	// Retry says a later look may find it removable; without it only a restart with
	// another config can.
	Retry bool
}

func (w Waiting) String() string { return w.Object.String() + ": " + w.Reason }

// Plan is what to do with kube-router's objects. Remove is in the order that keeps
// traffic flowing: references before what they refer to (jumps, then chains, then
// sets), policy rules before their tables' routes, routes before their tunnels, and
// our replacements first in every case (the caller plans only once they are live).
type Plan struct {
	Adopt  []Object
	Remove []Object
	Wait   []Waiting
}

// Empty reports whether nothing of kube-router's is left to act on.
func (p Plan) Empty() bool { return len(p.Adopt) == 0 && len(p.Remove) == 0 && len(p.Wait) == 0 }

// Compute plans the takeover of what v shows. enabled says which of kube-routerd's
// controllers run: an object whose job no running controller took over is kept.
func Compute(v View, enabled map[Domain]bool) Plan {
	var p Plan
	remove := func(o Object) {
		if enabled[o.Domain] {
			p.Remove = append(p.Remove, o)
		} else {
			p.Wait = append(p.Wait, Waiting{Object: o, Reason: fmt.Sprintf("kube-routerd's %s controller is off, so nothing replaces it", o.Domain)})
		}
	}
	planIPTables(v, &p, remove)
	for _, s := range v.Sets {
		if theirSet(s) {
			remove(Object{Kind: KindSet, Domain: setDomain(s), Name: s})
		}
	}
	planRouting(v, &p, remove)
	for _, f := range v.CNIFiles {
		o := Object{Kind: KindCNIFile, Domain: DomainPodNet, Name: f}
		if v.OurCNIWritten {
			remove(o)
		} else {
			p.Wait = append(p.Wait, Waiting{Object: o, Reason: "kube-routerd's CNI configuration is not written yet", Retry: true})
		}
	}
	return p
}

// planIPTables plans kube-router's rules in built-in chains, then its chains.
func planIPTables(v View, p *Plan, remove func(Object)) {
	for _, fam := range []ipfamily.Family{ipfamily.IPv4, ipfamily.IPv6} {
		tables := v.IPTables[fam]
		for _, table := range sortedKeys(tables) {
			for _, chain := range builtinChains {
				for _, rule := range tables[table][chain] {
					o := Object{Kind: KindRule, Family: fam, Table: table, Chain: chain, Rule: rule}
					switch verdict, domain := classifyRule(table, chain, rule); verdict {
					case theirsToRemove:
						o.Domain = domain
						remove(o)
					case theirsToAdopt:
						o.Domain = domain
						p.Adopt = append(p.Adopt, o)
					}
				}
			}
		}
	}
	for _, fam := range []ipfamily.Family{ipfamily.IPv4, ipfamily.IPv6} {
		tables := v.IPTables[fam]
		for _, table := range sortedKeys(tables) {
			for _, chain := range sortedKeys(tables[table]) {
				if theirChain(chain) {
					remove(Object{Kind: KindChain, Domain: chainDomain(chain), Family: fam, Table: table, Name: chain})
				}
			}
		}
	}
}

// planRouting plans kube-router's policy rules, the routes of its tables, its zebra
// routes and its tunnels. A zebra route to a pod CIDR of a current node is left for
// the routing controller to replace in place (same destination and metric) when it
// learns the prefix: deleting it first would cut that node's pods off until then.
func planRouting(v View, p *Plan, remove func(Object)) {
	tunnels := map[string]bool{}
	for _, l := range v.Links {
		if theirTunnel(l.Name, l.Kind) {
			tunnels[l.Name] = true
		}
	}
	leadTheirs, leadOthers := map[int]bool{}, map[int]bool{}
	for _, r := range v.IPRules {
		if theirIPRule(r, v.PodCIDRs) {
			leadTheirs[r.Table] = true
			remove(Object{Kind: KindIPRule, Domain: DomainRouting, IPRule: r})
		} else if slices.Contains(policyTables, r.Table) {
			leadOthers[r.Table] = true
		}
	}
	for _, r := range v.PolicyRoutes {
		if (leadTheirs[r.Table] && !leadOthers[r.Table]) || r.Protocol == protocolZebra || tunnels[r.Device] {
			remove(Object{Kind: KindRoute, Domain: DomainRouting, Route: r})
		}
	}
	inUse := map[string]string{} // tunnel -> a route kept on it
	for _, r := range v.ZebraRoutes {
		if !theirMainRoute(r, v.PodCIDRs, tunnels) {
			if tunnels[r.Device] {
				inUse[r.Device] = r.String()
			}
			continue
		}
		o := Object{Kind: KindRoute, Domain: DomainRouting, Route: r}
		if slices.Contains(v.PodCIDRs, r.Dst) {
			p.Wait = append(p.Wait, Waiting{Object: o, Reason: "kube-routerd replaces it in place once it learns a route to " + r.Dst.String(), Retry: true})
			inUse[r.Device] = r.String()
			continue
		}
		remove(o)
	}
	for _, l := range v.Links {
		if !tunnels[l.Name] {
			continue
		}
		o := Object{Kind: KindTunnel, Domain: DomainRouting, Link: l}
		if r, ok := inUse[l.Name]; ok {
			p.Wait = append(p.Wait, Waiting{Object: o, Reason: "route " + r + " still uses it", Retry: true})
			continue
		}
		remove(o)
	}
}

// ReplacedInPlace returns kube-router's zebra routes of an earlier view whose
// destinations our routes now hold and no zebra route does: the routing controller
// replaced them without a moment without a route.
func ReplacedInPlace(before, zebraNow []route.TableRoute, ours []netip.Prefix) []route.TableRoute {
	var out []route.TableRoute
	for _, r := range before {
		still := slices.ContainsFunc(zebraNow, func(n route.TableRoute) bool { return n.Dst == r.Dst })
		if !still && slices.Contains(ours, r.Dst) {
			out = append(out, r)
		}
	}
	return out
}

// TheirServices returns the virtual services kube-router left: on an address of the
// dummy interface both daemons use, and not in our ledger.
func TheirServices(services []ipvs.Service, ledger []ipvs.Key, dummyAddrs []netip.Addr) []ipvs.Key {
	var out []ipvs.Key
	for _, s := range services {
		if slices.Contains(dummyAddrs, s.Addr) && !slices.Contains(ledger, s.Key) {
			out = append(out, s.Key)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
