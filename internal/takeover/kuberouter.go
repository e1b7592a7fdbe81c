// Package takeover moves a node from kube-router to kube-routerd: it finds what
// kube-router left in the kernel and in the CNI directory, adopts what kube-routerd
// uses as it is, and removes the rest once kube-routerd's own replacement carries the
// traffic, logging one line per object.
//
// This file is the one audited place that says what is kube-router's. Its facts come
// from kube-router's documented names (docs/research: "Upstream dataplane layout");
// an object that matches none of them, or that is ours, is never touched.
package takeover

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/netpol"
	"github.com/kube-routerd/kube-routerd/internal/podnet"
	"github.com/kube-routerd/kube-routerd/internal/proxy"
)

// Domain is the part of kube-routerd that takes over a kube-router object's job.
// Nothing is removed while its domain's controller is off: the old object would be
// the only one doing the job.
type Domain string

// The domains, named like the controllers.
const (
	DomainProxy   Domain = "proxy"
	DomainNetpol  Domain = "netpol"
	DomainRouting Domain = "routing"
	DomainPodNet  Domain = "podnet"
)

// kube-router's chain name prefixes. kube-routerd writes under the same prefixes, so
// a chain is kube-router's only when none of our controllers owns it.
var chainPrefixes = []string{"KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-"}

// kube-router's set name prefixes; IPv6 sets carry "inet6:" before them.
var setPrefixes = []string{"kube-router-", "KUBE-SRC-", "KUBE-DST-"}

const inet6SetPrefix = "inet6:"

// kube-router's routing: pod CIDR routes of protocol 17 (zebra), policy routing
// tables 77 (pod traffic back into tunnels), 78 (DSR) and 79 (external IPs), and a
// tunnel per remote node named tun-<hex(sha256(node IP))[:11]>.
const (
	protocolZebra   = 17
	tablePodRouting = 77
	tableDSR        = 78
	tableExternalIP = 79
)

// policyTables are kube-router's policy routing tables.
var policyTables = []int{tablePodRouting, tableDSR, tableExternalIP}

var tunnelName = regexp.MustCompile(`^tun-[0-9a-f]{11}$`)

// tunnelKinds are the link kinds of kube-router's tunnels (IPIP, ip6ip6).
var tunnelKinds = []string{"ipip", "ip6tnl"}

// cniFiles are the names kube-router's CNI configuration goes by in the CNI directory.
var cniFiles = []string{"10-kuberouter.conflist", "10-kuberouter.conf"}

// bridgeName is the pod bridge of kube-router's CNI configuration; ours is the same
// bridge, so running pods stay attached to it.
const bridgeName = "kube-bridge"

// forwardAcceptComments mark kube-router's FORWARD ACCEPTs for pod traffic. They are
// adopted, not removed: kube-routerd adds no such rule, and where FORWARD's policy
// is DROP the pods would lose their network without them.
var forwardAcceptComments = []string{
	`"allow outbound traffic from pods"`,
	`"allow inbound traffic to pods"`,
	`"allow outbound node port traffic on node interface with which node ip is associated"`,
}

// ourComment starts the comment of every rule kube-routerd puts in a built-in chain.
const ourComment = `"kube-routerd`

// builtinChains are where kube-router's jumps and single rules live.
var builtinChains = []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// owners are what each controller of ours has in the kernel.
var owners = []netfilter.Owner{netpol.Owner, proxy.Owner, podnet.Owner}

func ourChain(name string) bool {
	return slices.ContainsFunc(owners, func(o netfilter.Owner) bool { return o.OwnsChain(name) })
}

func ourSet(name string) bool {
	return name == ipvs.LedgerSetV4 || name == ipvs.LedgerSetV6 ||
		slices.ContainsFunc(owners, func(o netfilter.Owner) bool { return o.OwnsSet(name) })
}

// theirChain reports whether an iptables chain is kube-router's.
func theirChain(name string) bool {
	return hasAnyPrefix(name, chainPrefixes) && !ourChain(name)
}

// chainDomain says which controller replaces a chain of kube-router's (or the chain
// of ours a kube-router jump enters).
func chainDomain(name string) Domain {
	switch name {
	case "KUBE-ROUTER-SERVICES", "KUBE-ROUTER-HAIRPIN":
		return DomainProxy
	}
	return DomainNetpol
}

// theirSet reports whether an ipset is kube-router's.
func theirSet(name string) bool {
	return hasAnyPrefix(strings.TrimPrefix(name, inet6SetPrefix), setPrefixes) && !ourSet(name)
}

// setDomain says which controller replaces a set of kube-router's.
func setDomain(name string) Domain {
	switch strings.TrimPrefix(name, inet6SetPrefix) {
	case "kube-router-svip", "kube-router-svip-prt", "kube-router-local-ips":
		return DomainProxy
	case "kube-router-pod-subnets", "kube-router-node-ips":
		return DomainPodNet
	}
	return DomainNetpol
}

// ruleVerdict says what a rule in a built-in chain is.
type ruleVerdict int

const (
	notTheirs ruleVerdict = iota
	theirsToRemove
	theirsToAdopt
)

// classifyRule decides whether rule (iptables-save syntax, without "-A CHAIN") in a
// built-in chain is kube-router's: a jump into a chain of kube-router's, kube-router's
// jump (not carrying our comment) into a chain whose name we share, a match on one of
// its sets (pod egress MASQUERADE), or its IPVS SNAT in nat POSTROUTING.
func classifyRule(table, chain, rule string) (ruleVerdict, Domain) {
	ours := strings.Contains(rule, "--comment "+ourComment)
	target := jumpTarget(rule)
	switch {
	case theirChain(target):
		return theirsToRemove, chainDomain(target)
	case ourChain(target) && !ours:
		return theirsToRemove, chainDomain(target)
	}
	for _, set := range matchedSets(rule) {
		if theirSet(set) {
			return theirsToRemove, setDomain(set)
		}
	}
	if table == "nat" && chain == "POSTROUTING" && !ours && target == "SNAT" &&
		strings.Contains(rule, "-m ipvs") && strings.Contains(rule, "--vmethod MASQ") {
		return theirsToRemove, DomainProxy
	}
	if chain == "FORWARD" && target == "ACCEPT" {
		for _, c := range forwardAcceptComments {
			if strings.Contains(rule, "--comment "+c) {
				return theirsToAdopt, DomainPodNet
			}
		}
	}
	return notTheirs, ""
}

// theirIPRule reports whether a policy routing rule is kube-router's: from one of the
// cluster's pod CIDRs to table 77, or to its DSR and external IP tables by firewall
// mark or at the priorities it uses.
func theirIPRule(r route.IPRule, podCIDRs []netip.Prefix) bool {
	switch r.Table {
	case tablePodRouting:
		return r.Src.IsValid() && slices.ContainsFunc(podCIDRs, func(p netip.Prefix) bool {
			return p.Bits() <= r.Src.Bits() && p.Contains(r.Src.Addr())
		})
	case tableDSR, tableExternalIP:
		return r.Mark != 0 || r.Priority == 32764 || r.Priority == 32765
	}
	return false
}

// theirTunnel reports whether a link is one of kube-router's tunnels.
func theirTunnel(name, kind string) bool {
	return tunnelName.MatchString(name) && slices.Contains(tunnelKinds, kind)
}

// theirMainRoute reports whether a route of the main table is kube-router's: of
// protocol zebra, to a pod CIDR of the cluster or into one of its tunnels (zebra is
// also Quagga's protocol, so the protocol alone does not prove it).
func theirMainRoute(r route.TableRoute, podCIDRs []netip.Prefix, theirTunnels map[string]bool) bool {
	if r.Protocol != protocolZebra {
		return false
	}
	return theirTunnels[r.Device] || slices.ContainsFunc(podCIDRs, func(p netip.Prefix) bool {
		return p.Bits() <= r.Dst.Bits() && p.Contains(r.Dst.Addr())
	})
}

func hasAnyPrefix(s string, prefixes []string) bool {
	return slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(s, p) })
}

// jumpTarget returns the target of a rule's -j ("" if none).
func jumpTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "--jump" {
			return f[i+1]
		}
	}
	return ""
}

// matchedSets returns the sets a rule matches with --match-set.
func matchedSets(rule string) []string {
	f := strings.Fields(rule)
	var out []string
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "--match-set" {
			out = append(out, f[i+1])
		}
	}
	return out
}
