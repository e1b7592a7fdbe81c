package netpol

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
)

// ClusterNetworkPolicies (policy.networking.k8s.io/v1beta1) add two tiers around the
// NetworkPolicies: the Admin tier decides first, the Baseline tier last. Each is
// compiled into one chain per direction it has rules for (KUBE-ROUTER-CI-/CE-),
// whose rules, in the policy's order, write the action of the first rule that
// matches into two mark bits next to the allow mark (the decision: Accept, Deny or
// Pass) and never overwrite one written before. Every such chain starts by
// returning when a decision or the allow mark is already set, so the first matching
// rule of the first policy in order wins. A pod a ClusterNetworkPolicy's subject
// selects gets a pod chain for each direction the policy has rules in, like a pod a
// NetworkPolicy isolates, and its pod chain reads:
//
//	(ingress) the node to its own pods -> RETURN
//	-j KUBE-ROUTER-CI-<admin policy>        for each Admin policy, by priority then name
//	decision Deny -> DROP                   denied by the Admin tier
//	decision Accept -> allow mark, decision cleared: nothing below denies it
//	decision Pass -> decision cleared        on to the NetworkPolicy tier
//	then, when NetworkPolicies isolate the pod in this direction (the NetworkPolicy tier
//	always decides for such pods): their chains, and no allow mark -> DROP
//	else: -j KUBE-ROUTER-CI-<baseline policy> for each Baseline policy (skipped when
//	the Admin tier accepted), decision Deny -> DROP, and the rest is allowed
//	clear the marks
//
// Policies of one tier with the same priority are ordered by name: the API leaves
// their order to the implementation, and a fixed order keeps every node alike.
// Pass in the Baseline tier falls through to the default, allow.
//
// Peers: namespaces and pods select pods anywhere in the cluster (peer sets shared
// with NetworkPolicies that select the same pods); nodes (experimental) selects the
// addresses in the Nodes' status; networks are CIDRs, matched by address. Ports:
// TCP, UDP and SCTP with a port or a range, and destinationNamedPort (experimental),
// resolved on the pods the traffic goes to: the subject pods on this node for
// ingress, the peer pods for egress. domainNames needs DNS interception, which
// kube-routerd does not do: such a peer matches nothing (the API allows it in
// Accept rules only) and is reported. A peer with no field kube-routerd knows (a
// newer CRD) fails closed as the API asks: an Accept rule matches nothing through
// it, a Deny or Pass rule becomes Deny for all traffic.

// Decision codes in the two mark bits above the allow mark.
const (
	decisionAccept = 1
	decisionDeny   = 2
	decisionPass   = 3
)

// decisionMark is the mark value of a decision code.
func (o options) decisionMark(code uint32) uint32 { return code * (o.MarkBit << 1) }

// decisionMask covers the decision bits.
func (o options) decisionMask() uint32 { return o.decisionMark(3) }

// tierLetter sorts the Admin tier before the Baseline tier in a pod's lists.
func tierLetter(t policyv1beta1.Tier) string {
	if t == policyv1beta1.AdminTier {
		return "A"
	}
	return "B"
}

// clusterKey is the compiled key of a ClusterNetworkPolicy: its name, which no
// NetworkPolicy's "namespace/name" can equal.
func clusterKey(name string) string { return name }

// clusterHashKey names a ClusterNetworkPolicy in chain and set name hashes; upper
// case keeps it apart from every NetworkPolicy's namespace.
func clusterHashKey(name string) string { return "ClusterNetworkPolicy/" + name }

// cnpRule is one rule of either direction, in the compiler's terms.
type cnpRule struct {
	name      string
	action    policyv1beta1.ClusterNetworkPolicyRuleAction
	peers     []cnpPeer
	protocols []policyv1beta1.ClusterNetworkPolicyProtocol
}

// cnpPeer is an ingress or egress peer; the ingress ones have no nodes, networks or
// domain names.
type cnpPeer struct {
	namespaces  *metav1.LabelSelector
	pods        *policyv1beta1.NamespacedPod
	nodes       *metav1.LabelSelector
	networks    []policyv1beta1.CIDR
	domainNames []policyv1beta1.DomainName
}

func ingressRules(p *policyv1beta1.ClusterNetworkPolicy) []cnpRule {
	out := make([]cnpRule, len(p.Spec.Ingress))
	for i, r := range p.Spec.Ingress {
		out[i] = cnpRule{name: r.Name, action: r.Action, protocols: r.Protocols}
		for _, peer := range r.From {
			out[i].peers = append(out[i].peers, cnpPeer{namespaces: peer.Namespaces, pods: peer.Pods})
		}
	}
	return out
}

func egressRules(p *policyv1beta1.ClusterNetworkPolicy) []cnpRule {
	out := make([]cnpRule, len(p.Spec.Egress))
	for i, r := range p.Spec.Egress {
		out[i] = cnpRule{name: r.Name, action: r.Action, protocols: r.Protocols}
		for _, peer := range r.To {
			out[i].peers = append(out[i].peers, cnpPeer{namespaces: peer.Namespaces, pods: peer.Pods,
				nodes: peer.Nodes, networks: peer.Networks, domainNames: peer.DomainNames})
		}
	}
	return out
}

// compileCluster compiles one ClusterNetworkPolicy against the index.
func compileCluster(p *policyv1beta1.ClusterNetworkPolicy, idx *index, o options) *compiledPolicy {
	c := &compiledPolicy{Key: clusterKey(p.Name), Cluster: true, Tier: p.Spec.Tier, Priority: p.Spec.Priority,
		SetMeaning: map[string]string{}}
	if p.Spec.Tier != policyv1beta1.AdminTier && p.Spec.Tier != policyv1beta1.BaselineTier {
		c.Problems = append(c.Problems, fmt.Sprintf("tier %q: want Admin or Baseline (policy ignored)", p.Spec.Tier))
		return c
	}
	c.Ingress, c.Egress = len(p.Spec.Ingress) > 0, len(p.Spec.Egress) > 0
	hashKey := clusterHashKey(p.Name)
	targets, err := subjectTargets(p.Spec.Subject, idx, o)
	if err != nil {
		c.Problems = append(c.Problems, fmt.Sprintf("subject: %v (policy selects no pods)", err))
		c.Ingress, c.Egress = false, false
		return c
	}
	for _, t := range targets {
		c.Targets = append(c.Targets, t.Key())
	}
	b := &policyBuilder{policy: hashKey, idx: idx, o: o, out: c, targets: targets}
	if c.Ingress {
		chain := netfilter.Chain{Table: iptables.TableFilter, Name: name(cnpIngressKind, hashKey, o.familyTag())}
		chain.Rules = append(chain.Rules, o.undecidedGuard())
		for i, r := range ingressRules(p) {
			chain.Rules = append(chain.Rules, b.clusterRule("ingress", i, r)...)
		}
		c.Chains = append(c.Chains, chain)
	}
	if c.Egress {
		chain := netfilter.Chain{Table: iptables.TableFilter, Name: name(cnpEgressKind, hashKey, o.familyTag())}
		chain.Rules = append(chain.Rules, o.undecidedGuard())
		for i, r := range egressRules(p) {
			chain.Rules = append(chain.Rules, b.clusterRule("egress", i, r)...)
		}
		c.Chains = append(c.Chains, chain)
	}
	sort.Slice(c.Sets, func(i, j int) bool { return c.Sets[i].Name < c.Sets[j].Name })
	// Two policies may name the same shared set: keep it once.
	c.Sets = slices.CompactFunc(c.Sets, func(a, b ipset.SetEntries) bool { return a.Name == b.Name })
	return c
}

// undecidedGuard opens a ClusterNetworkPolicy chain: a packet an earlier policy
// decided, or the Admin tier accepted, skips it.
func (o options) undecidedGuard() string {
	return fmt.Sprintf("-m mark ! --mark 0x0/0x%x -j RETURN", o.MarkBit|o.decisionMask())
}

// subjectTargets returns the local pods a subject selects, by namespace and name.
func subjectTargets(s policyv1beta1.ClusterNetworkPolicySubject, idx *index, o options) ([]*Pod, error) {
	var nsSel, podSel *metav1.LabelSelector
	switch {
	case s.Namespaces != nil:
		nsSel = s.Namespaces
	case s.Pods != nil:
		nsSel, podSel = &s.Pods.NamespaceSelector, &s.Pods.PodSelector
	default:
		return nil, fmt.Errorf("neither namespaces nor pods set")
	}
	inNamespace, pods, err := selectors(idx, nsSel, podSel)
	if err != nil {
		return nil, err
	}
	var out []*Pod
	for _, p := range idx.podsOnNode(o.NodeName) {
		if o.isLocalTarget(p) && inNamespace[p.Namespace] && pods.Matches(labels.Set(p.Labels)) {
			out = append(out, p)
		}
	}
	return out, nil
}

// selectors parses a namespace selector and a pod selector (nil: every pod) and
// returns the namespaces the first selects.
func selectors(idx *index, nsSel, podSel *metav1.LabelSelector) (map[string]bool, labels.Selector, error) {
	ns, pods, err := parseSelectors(nsSel, podSel)
	if err != nil {
		return nil, nil, err
	}
	inNamespace := map[string]bool{}
	for name, n := range idx.Namespaces {
		if ns.Matches(labels.Set(n.Labels)) {
			inNamespace[name] = true
		}
	}
	return inNamespace, pods, nil
}

// parseSelectors parses a namespace selector and a pod selector (nil: every pod).
func parseSelectors(nsSel, podSel *metav1.LabelSelector) (labels.Selector, labels.Selector, error) {
	ns, err := metav1.LabelSelectorAsSelector(nsSel)
	if err != nil {
		return nil, nil, fmt.Errorf("namespace selector: %w", err)
	}
	pods := labels.Everything()
	if podSel != nil {
		if pods, err = metav1.LabelSelectorAsSelector(podSel); err != nil {
			return nil, nil, fmt.Errorf("pod selector: %w", err)
		}
	}
	return ns, pods, nil
}

// clusterRule compiles rule i of direction dir into iptables rules that write its
// decision, unless one is written already.
func (b *policyBuilder) clusterRule(dir string, i int, r cnpRule) []string {
	o := b.o
	ruleID := dir + "/" + strconv.Itoa(i)
	label := ruleID
	if r.name != "" {
		label += " (" + r.name + ")"
	}
	action := r.action
	code, ok := map[policyv1beta1.ClusterNetworkPolicyRuleAction]uint32{
		policyv1beta1.ClusterNetworkPolicyRuleActionAccept: decisionAccept,
		policyv1beta1.ClusterNetworkPolicyRuleActionDeny:   decisionDeny,
		policyv1beta1.ClusterNetworkPolicyRuleActionPass:   decisionPass,
	}[action]
	if !ok {
		b.problem("%s rule %d: unknown action %q (rule denies all traffic)", dir, i, action)
		return []string{b.decisionRule(label+" fail closed", "", "", decisionDeny)}
	}
	peerSide, addrFlag := "src", "-s"
	if dir == "egress" {
		peerSide, addrFlag = "dst", "-d"
	}
	var peerMatches []string
	// One shared set per selector peer, as for NetworkPolicies: a peer recurring
	// across rules with different companions is held once.
	selectorPeers := map[string]parsedPeer{}
	for j, peer := range r.peers {
		switch {
		case peer.namespaces != nil || peer.pods != nil:
			nsSel, podSel := peer.namespaces, (*metav1.LabelSelector)(nil)
			if peer.pods != nil {
				nsSel, podSel = &peer.pods.NamespaceSelector, &peer.pods.PodSelector
			}
			nsS, podS, err := parseSelectors(nsSel, podSel)
			if err != nil {
				if action != policyv1beta1.ClusterNetworkPolicyRuleActionAccept {
					b.problem("%s rule %d peer %d: %v (rule denies all traffic)", dir, i, j, err)
					return []string{b.decisionRule(label+" fail closed", "", "", decisionDeny)}
				}
				b.problem("%s rule %d peer %d: %v (matches nothing)", dir, i, j, err)
				continue
			}
			selectorPeers[selectorKey(nsS, podS)] = parsedPeer{namespaces: nsS, pods: podS}
		case peer.nodes != nil:
			set, err := b.nodeSet(peer.nodes)
			if err != nil {
				b.problem("%s rule %d peer %d: nodes: %v (matches nothing)", dir, i, j, err)
				continue
			}
			peerMatches = append(peerMatches, "-m set --match-set "+set+" "+peerSide)
		case len(peer.networks) > 0:
			for _, n := range peer.networks {
				cidr, err := netip.ParsePrefix(string(n))
				if err != nil {
					b.problem("%s rule %d peer %d: network %q: %v (matches nothing)", dir, i, j, n, err)
					continue
				}
				if o.Family.Has(cidr.Addr()) {
					peerMatches = append(peerMatches, addrFlag+" "+cidr.Masked().String())
				}
			}
		case len(peer.domainNames) > 0:
			b.problem("%s rule %d peer %d: domainNames need DNS interception, which kube-routerd does not do (matches nothing)", dir, i, j)
		default:
			if action != policyv1beta1.ClusterNetworkPolicyRuleActionAccept {
				b.problem("%s rule %d peer %d: no peer field kube-routerd knows (rule denies all traffic)", dir, i, j)
				return []string{b.decisionRule(label+" fail closed", "", "", decisionDeny)}
			}
			b.problem("%s rule %d peer %d: no peer field kube-routerd knows (matches nothing)", dir, i, j)
		}
	}
	keys := slices.Sorted(maps.Keys(selectorPeers))
	// The peer pods: named ports of egress rules resolve on them.
	peerPods := b.peersPods(keys, selectorPeers)
	var setMatches []string
	for _, key := range keys {
		set := b.sharedPeerSet(key, selectorPeers[key])
		b.out.SetMeaning[set] = peerWords(key)
		setMatches = append(setMatches, "-m set --match-set "+set+" "+peerSide)
	}
	peerMatches = append(setMatches, peerMatches...)

	portMatches := b.clusterPorts(dir, i, r.protocols, peerPods)
	var out []string
	for _, pm := range portMatches {
		for _, peer := range peerMatches {
			out = append(out, b.decisionRule(label, peer, pm, code))
		}
	}
	return out
}

// decisionRule writes code when the packet matches peer and port and no decision is
// written yet.
func (b *policyBuilder) decisionRule(label, peer, port string, code uint32) string {
	o := b.o
	comment := fmt.Sprintf(`-m comment --comment "%s"`, truncate(b.out.Key+" "+label, commentMaxBytes))
	guard := fmt.Sprintf("-m mark --mark 0x0/0x%x", o.decisionMask())
	mark := fmt.Sprintf("-j MARK --set-xmark 0x%x/0x%x", o.decisionMark(code), o.decisionMask())
	return saveOrder(joinNonEmpty(comment, peer, port, guard, mark))
}

// clusterPorts compiles a rule's protocols into port matches ("" for any).
func (b *policyBuilder) clusterPorts(dir string, i int, protocols []policyv1beta1.ClusterNetworkPolicyProtocol, peerPods func() []*Pod) []string {
	if len(protocols) == 0 {
		return []string{""}
	}
	var out []string
	for j, p := range protocols {
		var proto string
		var dport *policyv1beta1.Port
		switch {
		case p.TCP != nil:
			proto, dport = "tcp", p.TCP.DestinationPort
		case p.UDP != nil:
			proto, dport = "udp", p.UDP.DestinationPort
		case p.SCTP != nil:
			proto, dport = "sctp", p.SCTP.DestinationPort
		case p.DestinationNamedPort != "":
			holders := b.targets
			if dir == "egress" {
				holders = peerPods()
			}
			out = append(out, "-m set --match-set "+b.namedPortSet(dir, i, j, "", p.DestinationNamedPort, holders, "")+" dst,dst")
			continue
		default:
			b.problem("%s rule %d protocol %d: no protocol kube-routerd knows (matches nothing)", dir, i, j)
			continue
		}
		switch {
		case dport == nil:
			out = append(out, "-p "+proto)
		case dport.Range != nil:
			if dport.Range.End < dport.Range.Start {
				b.problem("%s rule %d protocol %d: range end %d below start %d (matches nothing)", dir, i, j, dport.Range.End, dport.Range.Start)
				continue
			}
			out = append(out, fmt.Sprintf("-p %s -m %s --dport %d:%d", proto, proto, dport.Range.Start, dport.Range.End))
		default:
			out = append(out, fmt.Sprintf("-p %s -m %s --dport %d", proto, proto, dport.Number))
		}
	}
	return out
}

// nodeSet adds the set of the addresses of the Nodes sel selects.
func (b *policyBuilder) nodeSet(sel *metav1.LabelSelector) (string, error) {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return "", err
	}
	entries := map[string]struct{}{}
	for _, n := range b.idx.Nodes {
		if !s.Matches(labels.Set(n.Labels)) {
			continue
		}
		for _, ip := range n.IPs {
			if b.o.Family.Has(ip) {
				entries[ip.String()] = struct{}{}
			}
		}
	}
	set := b.addSharedSet(peerSetKind, ipset.HashIP, entries, "nodes "+s.String())
	b.out.SetMeaning[set] = "nodes " + s.String()
	if s.Empty() {
		b.out.SetMeaning[set] = "all nodes"
	}
	return set, nil
}

// ClusterNode is what the compiler knows of a Node: what a nodes peer selects.
type ClusterNode struct {
	Labels map[string]string
	IPs    []netip.Addr
}

// nodeFromAPI converts a Node object for nodes peers: every address of its status
// that is an IP.
func nodeFromAPI(n *corev1.Node) *ClusterNode {
	out := &ClusterNode{Labels: n.Labels}
	for _, a := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil && !slices.Contains(out.IPs, ip.Unmap()) {
			out.IPs = append(out.IPs, ip.Unmap())
		}
	}
	return out
}

// orderKey sorts a ClusterNetworkPolicy's chain in a pod's list: tier, priority,
// name; the chain name is its last field.
func orderKey(c *compiledPolicy, chain string) string {
	return fmt.Sprintf("%s %04d %s %s", tierLetter(c.Tier), c.Priority, c.Key, chain)
}

// orderedChain reads the chain and the tier back from an orderKey.
func orderedChain(key string) (chain string, admin bool) {
	return key[strings.LastIndexByte(key, ' ')+1:], key[0] == 'A'
}
