package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

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
//	mangle FORWARD -> KUBE-ROUTER-DSR-MSS: the SYN-ACKs of this node's DSR endpoints
//	  get an MSS that fits IPVS's tunnel (dsrMSSChain).
//
// Chains are recomputed as a whole; only the hairpin, source range and MSS rules
// depend on Services, so a change rewrites at most those chains. Sets change entry by
// entry.
const (
	chainServices    = "KUBE-ROUTER-SERVICES"
	chainPostrouting = "KUBE-ROUTER-POSTROUTING"
	// chainSourceRanges drops clients outside a load-balancer IP's
	// loadBalancerSourceRanges; filter KUBE-ROUTER-SERVICES enters it first.
	chainSourceRanges = "KUBE-ROUTER-LB-SOURCES"
	chainDSRMSS       = "KUBE-ROUTER-DSR-MSS"

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
	// dsrOverhead is what a DSR endpoint's MSS leaves free of its interface's MTU:
	// the outer header of IPVS's tunnel (IPIP, ip6ip6) and the inner IP and TCP headers.
	dsrOverhead int
}

var families = []family{
	{ipfamily.IPv4, ipfamily.IPv4, setVIPsV4, setLocalV4, ipvs.LedgerSetV4, "icmp", "icmp-port-unreachable", 20 + 20 + 20},
	{ipfamily.IPv6, ipfamily.IPv6, setVIPsV6, setLocalV6, ipvs.LedgerSetV6, "ipv6-icmp", "icmp6-port-unreachable", 40 + 40 + 20},
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
		{Table: iptables.TableMangle, Chain: "FORWARD", Rule: to(chainDSRMSS)},
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
func firewallChains(f family, opts FirewallOptions, hairpin []netip.Addr, restricted []*virtualServer, nodeAddrs []netip.Addr) []netfilter.Chain {
	mark := fmt.Sprintf("0x%x", masqueradeMark)
	served := "-m set --match-set " + f.ledger + " dst,dst"
	filter := []string{
		"-j " + chainSourceRanges,
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
		{Table: iptables.TableFilter, Name: chainSourceRanges, Rules: sourceRangeRules(restricted, nodeAddrs)},
		{Table: iptables.TableFilter, Name: chainServices, Rules: filter},
		{Table: iptables.TableNAT, Name: chainServices, Rules: nat},
		{Table: iptables.TableNAT, Name: chainPostrouting, Rules: post},
	}
}

// sourceRangeRules admit the clients inside each restricted load-balancer IP's source
// ranges and drop the others, as kube-proxy does: restricted holds virtual services
// of one family, sorted by key. The node's own connections to a load-balancer IP
// come from that IP itself (the address is local); like kube-proxy, they pass when
// one of the node's addresses is inside the ranges.
func sourceRangeRules(restricted []*virtualServer, nodeAddrs []netip.Addr) []string {
	var rules []string
	for _, vs := range restricted {
		vip := netip.PrefixFrom(vs.Addr, vs.Addr.BitLen()).String()
		proto := strings.ToLower(vs.Proto.String())
		port := fmt.Sprintf("-p %s -m %s --dport %d", proto, proto, vs.Port)
		for _, p := range vs.SourceRanges {
			rules = append(rules, "-s "+p.String()+" -d "+vip+" "+port+" -j RETURN")
		}
		if slices.ContainsFunc(nodeAddrs, func(a netip.Addr) bool {
			return slices.ContainsFunc(vs.SourceRanges, func(p netip.Prefix) bool { return p.Contains(a) })
		}) {
			rules = append(rules, "-s "+vip+" -d "+vip+" "+port+" -j RETURN")
		}
		comment := `-m comment --comment "` + vs.Owner.String() + ":" + vs.PortName + ` loadBalancerSourceRanges"`
		rules = append(rules, fmt.Sprintf("-d %s -p %s %s -m %s --dport %d -j DROP", vip, proto, comment, proto, vs.Port))
	}
	return rules
}

// dsrMSSChain clamps the MSS in the SYN-ACKs of this node's DSR endpoints. A pod
// advertises the MSS of its own interface's MTU, but the client's segments reach it
// inside IPVS's tunnel, whose outer header then does not fit: IPVS answers with an
// ICMP "fragmentation needed" that must reach the client, and a client behind a
// firewall dropping ICMP hangs. The SYN-ACK is the one place to fix it: the MSS a
// client's SYN carries only limits what the pod sends. The SYN-ACK leaves the pod
// with the virtual address as its source and is forwarded by the pod's own node,
// whether or not IPVS ran there, so each node clamps its own endpoints'. local holds
// the family's DSR virtual services with an endpoint here, sorted by key; podMTU is
// the smallest MTU of their pods' interfaces, 0 when no pod was found (no rules).
func dsrMSSChain(f family, local []*virtualServer, podMTU int) netfilter.Chain {
	c := netfilter.Chain{Table: iptables.TableMangle, Name: chainDSRMSS}
	if podMTU == 0 {
		return c
	}
	for _, vs := range local {
		if vs.Proto != ipvs.TCP {
			continue
		}
		vip := netip.PrefixFrom(vs.Addr, vs.Addr.BitLen()).String()
		c.Rules = append(c.Rules, fmt.Sprintf(`-s %s -p tcp -m comment --comment "%s:%s DSR" -m tcp --sport %d `+
			`--tcp-flags SYN,RST,ACK SYN,ACK -j TCPMSS --set-mss %d`, vip, vs.Owner, vs.PortName, vs.Port, podMTU-f.dsrOverhead))
	}
	return c
}

// keepsClientAddr reports whether traffic to vs from outside the cluster keeps its
// source address: externalTrafficPolicy Local, which leaves only local endpoints, and
// DSR, whose endpoints answer the client directly.
func keepsClientAddr(vs *virtualServer) bool {
	return vs != nil && (vs.DSR || vs.LocalOnly && vs.Kind != ClusterIP)
}

// Owner is what the service proxy's firewall has in the kernel. The IPVS ledger sets
// are the IPVS reconciler's (internal/dataplane/ipvs).
var Owner = netfilter.Owner{
	Name:   "service proxy",
	Tables: []string{iptables.TableFilter, iptables.TableNAT, iptables.TableMangle},
	Chains: []string{chainServices, chainPostrouting, chainSourceRanges, chainDSRMSS},
	Sets:   []string{setVIPsV4, setVIPsV6, setLocalV4, setLocalV6},
}
