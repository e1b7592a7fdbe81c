package proxy

import (
	"fmt"
	"net/netip"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// The service proxy's firewall, per IP family:
//
//	filter INPUT -> KUBE-ROUTER-SERVICES: traffic to a VIP is let through to IPVS only
//	  on a port some Service serves (ledger set kube-router-svc-ports); anything else
//	  to a VIP (set kube-router-svip) but ICMP is rejected.
//	nat PREROUTING, OUTPUT -> KUBE-ROUTER-SERVICES: connections to a service are marked
//	  for masquerade, unless they come from a cluster CIDR or go to a service that keeps
//	  the client address (externalTrafficPolicy Local, set kube-router-svc-local).
//	nat POSTROUTING -> KUBE-ROUTER-POSTROUTING: marked connections are masqueraded, and
//	  so are hairpin connections (a local endpoint reaching itself through a service),
//	  which the endpoint would otherwise drop for carrying its own source address.
//
// Chains are recomputed as a whole; only the hairpin rules depend on Services, so a
// change rewrites at most that chain. Sets change entry by entry.
const (
	chainServices    = "KUBE-ROUTER-SERVICES"
	chainPostrouting = "KUBE-ROUTER-POSTROUTING"

	// masqueradeMark is the packet mark bit that asks for masquerading; netpol uses
	// 0x10000 and kube-proxy 0x4000 and 0x8000.
	masqueradeMark uint32 = 0x20000

	setVIPsV4  = "kube-router-svip"
	setVIPsV6  = "kube-router-svip6"
	setLocalV4 = "kube-router-svc-local"
	setLocalV6 = "kube-router-svc-local6"
)

// jumpComment marks our jumps from built-in chains.
const jumpComment = "kube-routerd service proxy"

// FirewallOptions are the configured masquerade settings.
type FirewallOptions struct {
	MasqueradeAll bool
	// ClusterCIDRs are the pod networks; traffic from elsewhere is masqueraded. With
	// none, every connection counts as coming from outside.
	ClusterCIDRs []netip.Prefix
}

// family is what differs between the IPv4 and IPv6 firewall.
type family struct {
	proto                    ipfamily.Family
	ipsetFamily              ipfamily.Family
	vipSet, localSet, ledger string
	icmp, reject             string
}

var families = []family{
	{ipfamily.IPv4, ipfamily.IPv4, setVIPsV4, setLocalV4, ipvs.LedgerSetV4, "icmp", "icmp-port-unreachable"},
	{ipfamily.IPv6, ipfamily.IPv6, setVIPsV6, setLocalV6, ipvs.LedgerSetV6, "ipv6-icmp", "icmp6-port-unreachable"},
}

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return families[0]
	}
	return families[1]
}

func (f family) jumps() []netfilter.Jump {
	to := func(target string) string {
		return iptables.RuleText([]string{"-m", "comment", "--comment", jumpComment, "-j", target})
	}
	return []netfilter.Jump{
		{Table: iptables.TableFilter, Chain: "INPUT", Rule: to(chainServices)},
		{Table: iptables.TableNAT, Chain: "PREROUTING", Rule: to(chainServices)},
		{Table: iptables.TableNAT, Chain: "OUTPUT", Rule: to(chainServices)},
		{Table: iptables.TableNAT, Chain: "POSTROUTING", Rule: to(chainPostrouting)},
	}
}

// sets are the sets the firewall keeps (the ledger set is the IPVS reconciler's).
func (f family) sets() []ipset.Set {
	return []ipset.Set{
		{Name: f.vipSet, Type: ipset.HashIP, Family: f.ipsetFamily},
		{Name: f.localSet, Type: ipset.HashIPPort, Family: f.ipsetFamily},
	}
}

// firewallChains returns the rules of our chains for one family, in iptables-save's
// canonical form so that they compare equal to what the kernel reports. hairpin lists
// the local endpoint addresses of that family, sorted.
func firewallChains(f family, opts FirewallOptions, hairpin []netip.Addr) []netfilter.Chain {
	mark := fmt.Sprintf("0x%x", masqueradeMark)
	served := "-m set --match-set " + f.ledger + " dst,dst"
	filter := []string{
		served + " -j RETURN",
		"-p " + f.icmp + " -m set --match-set " + f.vipSet + " dst -j RETURN",
		// Only new connections: replies to the node's own connections to a VIP (the
		// kernel picks the VIP as their source) come back to the VIP on the client's port.
		"-m set --match-set " + f.vipSet + " dst -m conntrack --ctstate NEW -j REJECT --reject-with " + f.reject,
	}
	var nat []string
	if !opts.MasqueradeAll {
		nat = append(nat, "-m set --match-set "+f.localSet+" dst,dst -j RETURN")
		for _, p := range opts.ClusterCIDRs {
			if p.Addr().Is4() == (f.proto == ipfamily.IPv4) {
				nat = append(nat, "-s "+p.Masked().String()+" -j RETURN")
			}
		}
	}
	nat = append(nat, served+" -j MARK --set-xmark "+mark+"/"+mark)
	post := make([]string, 0, len(hairpin)+3)
	for _, a := range hairpin {
		host := netip.PrefixFrom(a, a.BitLen()).String()
		post = append(post, "-s "+host+" -d "+host+" -j MASQUERADE")
	}
	post = append(post,
		"-m mark ! --mark "+mark+"/"+mark+" -j RETURN",
		// Cleared so that a packet looping back through the node is judged afresh.
		"-j MARK --set-xmark 0x0/"+mark,
		"-j MASQUERADE",
	)
	return []netfilter.Chain{
		{Table: iptables.TableFilter, Name: chainServices, Rules: filter},
		{Table: iptables.TableNAT, Name: chainServices, Rules: nat},
		{Table: iptables.TableNAT, Name: chainPostrouting, Rules: post},
	}
}

// keepsClientAddr reports whether traffic to vs from outside the cluster keeps its
// source address: externalTrafficPolicy Local, which leaves only local endpoints.
func keepsClientAddr(vs *virtualServer) bool {
	return vs != nil && vs.LocalOnly && vs.Kind != ClusterIP
}

// Owner is what the service proxy's firewall has in the kernel. The IPVS ledger sets
// are the IPVS reconciler's (internal/dataplane/ipvs).
var Owner = netfilter.Owner{
	Name:   "service proxy",
	Tables: []string{iptables.TableFilter, iptables.TableNAT},
	Chains: []string{chainServices, chainPostrouting},
	Sets:   []string{setVIPsV4, setVIPsV6, setLocalV4, setLocalV6},
}
