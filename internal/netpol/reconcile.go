package netpol

import (
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Owner is what network policy has in the kernel: the top chain, the chains of pods,
// policies and cluster network policies, the sets of peers, except lists and named ports, and the enforced
// ledgers.
var Owner = netfilter.Owner{
	Name:   "network policy",
	Tables: []string{iptables.TableFilter},
	Chains: []string{topChain},
	ChainPrefixes: []string{chainPrefix + podIngressKind + "-", chainPrefix + podEgressKind + "-", chainPrefix + polIngressKind + "-", chainPrefix + polEgressKind + "-",
		chainPrefix + cnpIngressKind + "-", chainPrefix + cnpEgressKind + "-"},
	Sets:        []string{enforcedSet + "4", enforcedSet + "6"},
	SetPrefixes: []string{chainPrefix + peerSetKind + "-", chainPrefix + exceptSetKind + "-", chainPrefix + namedPortKind + "-"},
}

// jumpRule sends forwarded traffic through our top chain; it goes first so that an
// ACCEPT earlier in FORWARD cannot bypass policy.
var jumpRule = []string{"-m", "comment", "--comment", "kube-routerd network policy", "-j", topChain}

// outputJumpRule sends the traffic IPVS forwards through our top chain too. A pod's
// connection to a Service VIP is local to the node, so IPVS takes it in INPUT and
// sends it on, to the backend, through OUTPUT, never FORWARD: without this jump
// neither the client's egress nor a local backend's ingress policy would see it.
// What IPVS sends on keeps the client's address as source; what the node itself
// sends has one of the node's addresses, which the match leaves alone (kubelet
// probes, the node's own connections to Services). The match is xt_addrtype, which
// every kernel we run on has, unlike xt_ipvs (a kernel without IPVS, like the test
// hosts', has none); no packet goes through both FORWARD and OUTPUT, so nothing is
// policed twice.
var outputJumpRule = []string{"-m", "comment", "--comment", "kube-routerd network policy for traffic IPVS forwards",
	"-m", "addrtype", "!", "--src-type", "LOCAL", "-j", topChain}

// inputJumpRule sends what reaches the node's own addresses through our top chain,
// so that a local pod's egress policies govern its connections to the node (a
// hostNetwork server, a node-local resolver) as they govern any other. Only the
// dispatch on the pod's source address matches there: replies to the node's own
// connections pass as ESTABLISHED, and nothing else is dispatched. A connection to
// something IPVS serves (a Service VIP or a NodePort, in the service proxy's ledger
// set) is left to IPVS: it takes it after filter INPUT and sends it to the backend
// through OUTPUT, where outputJumpRule applies the policies to the real backend.
func inputJumpRule(serviceLedger string) []string {
	rule := []string{"-m", "comment", "--comment", "kube-routerd network policy for traffic to the node"}
	if serviceLedger != "" {
		rule = append(rule, "-m", "set", "!", "--match-set", serviceLedger, "dst,dst")
	}
	return append(rule, "-j", topChain)
}

// hookJumps are the jumps from built-in chains to our top chain.
func (o options) hookJumps() []netfilter.Jump {
	ledger := ""
	if o.ServiceLedger {
		ledger = ipvs.LedgerSetV4
		if o.Family == ipfamily.IPv6 {
			ledger = ipvs.LedgerSetV6
		}
	}
	return []netfilter.Jump{
		{Table: iptables.TableFilter, Chain: "FORWARD", Rule: iptables.RuleText(jumpRule)},
		{Table: iptables.TableFilter, Chain: "OUTPUT", Rule: iptables.RuleText(outputJumpRule)},
		{Table: iptables.TableFilter, Chain: "INPUT", Rule: iptables.RuleText(inputJumpRule(ledger))},
	}
}
