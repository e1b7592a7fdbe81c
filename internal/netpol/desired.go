// Package netpol is kube-routerd's network policy controller: it compiles
// networking.k8s.io/v1 NetworkPolicies and policy.networking.k8s.io/v1beta1
// ClusterNetworkPolicies (desired_cnp.go: the Admin and Baseline tiers around the
// NetworkPolicies), the pods they select and the namespaces they name into iptables
// chains and ipsets for the pods on this node (desired*.go: compile, names, affects,
// assemble), and applies only what changed (reconcile.go).
//
// Layout in the filter table (IPv4 and IPv6 alike):
//
//	FORWARD -> KUBE-ROUTER-FORWARD
//	OUTPUT, source not a node address (what IPVS forwards) -> KUBE-ROUTER-FORWARD
//	INPUT, not to what IPVS serves (pods' traffic to the node) -> KUBE-ROUTER-FORWARD
//	  conntrack RELATED,ESTABLISHED -> RETURN (replies to allowed connections)
//	  IPv6 neighbour solicitation and advertisement on the link -> RETURN
//	  -s/-d <node's pod CIDR>, not a node address, not in KUBE-ROUTER-ENFORCED-<4|6>
//	    -> DROP (a pod not enforced yet; see enforcedLedger)
//	  -s <pod IP> -> KUBE-ROUTER-PE-<pod>  (pods isolated for egress)
//	  -d <pod IP> -> KUBE-ROUTER-PI-<pod>  (pods isolated for ingress)
//	KUBE-ROUTER-PI-<pod>: node's own addresses RETURN; jump to each selecting policy's
//	  ingress chain KUBE-ROUTER-NI-<policy>, whose rules set the allow mark; unmarked
//	  packets are (logged and) dropped; the mark is cleared and the packet returns.
//	  With ClusterNetworkPolicies, the Admin tier's chains KUBE-ROUTER-CI-<policy>
//	  come first and the Baseline tier's stand in for the NetworkPolicies of a pod
//	  they do not isolate (desired_cnp.go).
//
// A pod's connection to a Service VIP never crosses FORWARD: IPVS takes it in INPUT
// and sends it to the backend through OUTPUT, with the client's address as source.
// The OUTPUT jump sends it through the same dispatch, so the client's egress and a
// local backend's ingress policies apply as they do to pod-to-pod traffic.
//
// Our chains only DROP or RETURN: allowed traffic continues through FORWARD (or
// OUTPUT) as if we were not there.
package netpol

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// options are the node-wide compiler settings.
type options struct {
	NodeName string
	// Family says which pod IPs and ipBlocks this compilation covers.
	Family ipfamily.Family
	// MarkBit is the packet mark bit policy chains set to say "allowed".
	MarkBit uint32
	// ServiceLedger says the service proxy keeps its ledger sets (what IPVS serves) in
	// this namespace: traffic to those is left to IPVS in INPUT.
	ServiceLedger bool
	// BetaNamespaceIsolation honours betaIsolationAnnotation.
	BetaNamespaceIsolation bool
	// IsolateUntilEnforced drops new traffic from and to the addresses in PodCIDRs
	// that are not in the enforced ledger: pods the controller has not seen yet.
	IsolateUntilEnforced bool
	// PodCIDRs are this node's pod networks (its Node's spec.podCIDRs) of Family.
	PodCIDRs []netip.Prefix
	// LogDrops adds an NFLOG rule before each drop, at most LogRatePerMinute.
	LogDrops         bool
	NFLOGGroup       int
	LogRatePerMinute int
}

// defaultMarkBit is the allow mark; kube-proxy uses 0x4000 and 0x8000.
const defaultMarkBit uint32 = 0x10000

// compiledPolicy is one NetworkPolicy turned into chains and sets for this node.
type compiledPolicy struct {
	Key     string // namespace/name
	Ingress bool   // the policy isolates its targets for ingress
	Egress  bool   // the policy isolates its targets for egress
	// Targets are the keys of the local pods the policy selects, sorted.
	Targets []string
	// Chains are the policy's ingress and egress chains (when it has those types).
	Chains []netfilter.Chain
	// Sets are the ipsets the chains reference, entries sorted.
	Sets []ipset.SetEntries
	// Problems describe parts of the policy that could not be compiled; those parts
	// match nothing.
	Problems []string
	// SetMeaning says what each of Sets holds, in words, for explain.
	SetMeaning map[string]string
	// Cluster says this is a ClusterNetworkPolicy (Key is its name) of Tier, at
	// Priority; its targets are its subject's pods and its chains write decisions
	// (desired_cnp.go).
	Cluster  bool
	Tier     policyv1beta1.Tier
	Priority int32
}

// Desired is the whole state the controller wants in the kernel for one family.
type Desired struct {
	// Chains are the local pods' chains (pods by namespace and name), then the
	// policies' chains (policies by key), then topChain; Sets are the policies' sets,
	// policies by key; Jumps are options.hookJumps; Ledgers is the enforced ledger
	// while options.isolating.
	netfilter.Ruleset
	Pods  int // local pods with at least one isolated direction
	Rules int // total rules in Chains
}

// SetEntriesCount is the number of entries over all sets.
func (d *Desired) SetEntriesCount() int {
	n := 0
	for _, s := range d.Sets {
		n += len(s.Entries)
	}
	return n
}

func (o options) familyTag() string { return strconv.Itoa(int(o.Family)) }

// podIP returns the pod's address of the compiled family.
func (o options) podIP(p *Pod) (netip.Addr, bool) {
	if i := slices.IndexFunc(p.IPs, o.Family.Has); i >= 0 {
		return p.IPs[i], true
	}
	return netip.Addr{}, false
}

// podIPText is podIP as set entries write it, shared by every set listing the pod.
func (o options) podIPText(p *Pod) (string, bool) {
	if i := slices.IndexFunc(p.IPs, o.Family.Has); i >= 0 {
		return p.IPText(i), true
	}
	return "", false
}

// hasLocalPods reports whether any pod this node polices has an address of o's family.
func (o options) hasLocalPods(idx *index) bool {
	return slices.ContainsFunc(idx.podsOnNode(o.NodeName), o.isLocalTarget)
}

// isLocalTarget reports whether p is a pod this node polices.
func (o options) isLocalTarget(p *Pod) bool {
	if p.NodeName != o.NodeName || p.HostNetwork {
		return false
	}
	_, ok := o.podIP(p)
	return ok
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
}

func sortedPods(m map[string]*Pod) []*Pod {
	out := make([]*Pod, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

func uniquePods(pods []*Pod) []*Pod {
	seen := map[*Pod]bool{}
	out := pods[:0]
	for _, p := range pods {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func joinNonEmpty(parts ...string) string {
	out := parts[:0:0]
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}

// saveOrder moves a rule's -s, -d and -p options to its front, in that order, where
// iptables-save prints them: a rule written in the form the kernel reads back is
// never rewritten by a full sync or a restart that finds it in place.
func saveOrder(rule string) string {
	var front [3]string // -s, -d, -p with their values
	var rest []string
	fields := strings.Fields(rule)
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		if strings.HasPrefix(f, `"`) { // a quoted argument: keep it whole
			j := i
			for !strings.HasSuffix(fields[j], `"`) || (j == i && len(f) == 1) {
				j++
			}
			rest = append(rest, strings.Join(fields[i:j+1], " "))
			i = j
			continue
		}
		if slot := strings.Index("sdp", strings.TrimPrefix(f, "-")); len(f) == 2 && f[0] == '-' && slot >= 0 && i+1 < len(fields) {
			front[slot] = f + " " + fields[i+1]
			i++
			continue
		}
		rest = append(rest, f)
	}
	return joinNonEmpty(append(front[:], rest...)...)
}

// truncate keeps s within n bytes and free of quotes, for comments and log prefixes.
func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, `"`, "'")
	if len(s) > n {
		return s[:n]
	}
	return s
}
