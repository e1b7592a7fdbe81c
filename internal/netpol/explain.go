package netpol

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Verdict is what the policies say about a new connection from one pod to another,
// read from the compiled chains and sets (the ones the kernel is given), not from
// the policies themselves: explain and the kernel cannot disagree.
type Verdict struct {
	Source      Endpoint        `json:"source"`
	Destination Endpoint        `json:"destination"`
	Protocol    string          `json:"protocol"`
	Port        int             `json:"port"`
	Family      ipfamily.Family `json:"family"`
	// Egress is the source pod's side, enforced on the source's node; Ingress is the
	// destination pod's, enforced on the destination's node.
	Egress  Side `json:"egress"`
	Ingress Side `json:"ingress"`
	Allowed bool `json:"allowed"`
}

// Endpoint is one end of the connection.
type Endpoint struct {
	Pod         string     `json:"pod"`
	IP          netip.Addr `json:"ip"`
	Node        string     `json:"node"`
	HostNetwork bool       `json:"hostNetwork,omitempty"`
}

// Tiers say what decided one side.
const (
	// TierHostNetwork: the pod uses the node's network; no policy applies to it.
	TierHostNetwork = "host network"
	// TierNotIsolated: no policy isolates the pod in this direction.
	TierNotIsolated = "not isolated"
	// TierNode: the node always reaches its own pods.
	TierNode = "node to its own pods"
	// TierPolicy: a rule of a policy selecting the pod allows the connection.
	TierPolicy = "allowed by policy"
	// TierIsolation: policies isolate the pod and none of their rules allows it.
	TierIsolation = "denied by isolation"
	// TierAdminAccept and TierAdminDeny: a rule of an Admin tier
	// ClusterNetworkPolicy decided, before any NetworkPolicy.
	TierAdminAccept = "accepted by the Admin tier"
	TierAdminDeny   = "denied by the Admin tier"
	// TierBaselineAccept, TierBaselinePass and TierBaselineDeny: no NetworkPolicy
	// isolates the pod and a rule of a Baseline tier ClusterNetworkPolicy decided (a
	// Pass there leaves the default, allow).
	TierBaselineAccept = "accepted by the Baseline tier"
	TierBaselinePass   = "passed by the Baseline tier to the default"
	TierBaselineDeny   = "denied by the Baseline tier"
)

// Side is the verdict of one direction.
type Side struct {
	Pod string `json:"pod"`
	// EnforcedOn is the node whose rules decide this side; ThisNode says it is the one
	// asked. Another node's side is compiled here as that node would compile it from
	// the same objects and settings.
	EnforcedOn string `json:"enforcedOn"`
	ThisNode   bool   `json:"thisNode"`
	Tier       string `json:"tier"`
	Allowed    bool   `json:"allowed"`
	// Policies are the policies isolating the pod in this direction.
	Policies []string `json:"policies,omitempty"`
	// BetaIsolation: the namespace's beta annotation isolates the pod for ingress.
	BetaIsolation bool `json:"betaIsolation,omitempty"`
	// AllowedBy are the rules that allow the connection.
	AllowedBy []RuleMatch `json:"allowedBy,omitempty"`
	// ClusterRules are the ClusterNetworkPolicy rules that matched, in order: an
	// Admin tier Pass, then the rule that decided, if any.
	ClusterRules []RuleMatch `json:"clusterRules,omitempty"`
}

// RuleMatch is one policy rule that matched, in words.
type RuleMatch struct {
	Policy string `json:"policy"`
	Rule   string `json:"rule"` // "ingress/0": direction and index in the spec
	Peer   string `json:"peer"`
	Port   string `json:"port"`
	// Tier (Admin or Baseline) and Action (Accept, Deny or Pass) of a
	// ClusterNetworkPolicy rule.
	Tier   string `json:"tier,omitempty"`
	Action string `json:"action,omitempty"`
}

// compiledModel is one node's compiled state for one family: what the kernel holds
// (or would, for another node) and the policies it came from.
type compiledModel struct {
	thisNode bool // the asking node's own, as handed to its kernel
	ruleset  *Desired
	policies []*compiledPolicy
}

// explainConnection traces a new connection from src to dst on port/proto
// (lower-case: tcp, udp, sctp) through the compiled state of the nodes that enforce
// each side. modelOf returns the model of a node, for the policies of a namespace at
// least.
func explainConnection(src, dst *Pod, proto string, port int, family ipfamily.Family, modelOf func(node, namespace string) (*compiledModel, error)) (Verdict, error) {
	o := options{Family: family}
	srcIP, ok1 := o.podIP(src)
	dstIP, ok2 := o.podIP(dst)
	if !ok1 || !ok2 {
		return Verdict{}, fmt.Errorf("%s and %s do not both have an IPv%d address", src.Key(), dst.Key(), family)
	}
	v := Verdict{
		Source:      Endpoint{Pod: src.Key(), IP: srcIP, Node: src.NodeName, HostNetwork: src.HostNetwork},
		Destination: Endpoint{Pod: dst.Key(), IP: dstIP, Node: dst.NodeName, HostNetwork: dst.HostNetwork},
		Protocol:    proto, Port: port, Family: family,
	}
	p := packet{src: srcIP, dst: dstIP, proto: proto, dport: port}
	var err error
	if v.Egress, err = explainSide(src, src, dst, p, family, podEgressKind, modelOf); err != nil {
		return Verdict{}, err
	}
	if v.Ingress, err = explainSide(dst, src, dst, p, family, podIngressKind, modelOf); err != nil {
		return Verdict{}, err
	}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v, nil
}

// explainSide traces the packet on pod's node and reads pod's chain of kind
// (podEgressKind or podIngressKind) out of the trace.
func explainSide(pod, src, dst *Pod, p packet, family ipfamily.Family, kind string, modelOf func(node, namespace string) (*compiledModel, error)) (Side, error) {
	node := pod.NodeName
	side := Side{Pod: pod.Key(), EnforcedOn: node}
	if pod.HostNetwork {
		side.Tier, side.Allowed = TierHostNetwork, true
		return side, nil
	}
	m, err := modelOf(node, pod.Namespace)
	if err != nil {
		return side, err
	}
	side.ThisNode = m.thisNode
	// The hook the packet takes on that node: to one of its own addresses, from one
	// of them, or through it.
	hook := "FORWARD"
	switch {
	case src.HostNetwork && src.NodeName == node:
		hook, p.srcLocal = "OUTPUT", true
	case dst.HostNetwork && dst.NodeName == node:
		hook, p.dstLocal = "INPUT", true
	}
	e := rulesetEvaluator(&m.ruleset.Ruleset)
	e.pastDrops = true
	_, trace, err := e.verdict(hook, p)
	if err != nil {
		return side, fmt.Errorf("reading the compiled rules of node %s: %w", node, err)
	}
	policyOf := map[string]*compiledPolicy{}
	for _, c := range m.policies {
		for _, ch := range c.Chains {
			policyOf[ch.Name] = c
		}
	}
	podChain := name(kind, pod.Key(), options{Family: family}.familyTag())
	side.Tier, side.Allowed = TierNotIsolated, true
	if hook == "OUTPUT" && kind == podIngressKind {
		// The node's own packets to its pods never enter the policy chains.
		side.Tier = TierNode
	}
	o := options{Family: family, MarkBit: defaultMarkBit}
	isolated, byNode := false, false
	var adminDecision, baselineDecision *RuleMatch
	entered := map[string]bool{} // NetworkPolicy chains the pod's chain jumped to
	for _, s := range trace {
		c := policyOf[s.target]
		switch {
		case s.chain == topChain && s.target == podChain:
			isolated = true
		case s.chain == podChain && c != nil && !c.Cluster:
			entered[s.target] = true
			side.Policies = append(side.Policies, c.Key)
		case s.chain == podChain && s.target == "RETURN":
			byNode = true
		case s.target == "MARK" && entered[s.chain]:
			side.AllowedBy = append(side.AllowedBy, describeRule(s.rule, policyOf[s.chain], kind == podEgressKind))
		case s.target == "MARK" && policyOf[s.chain] != nil && policyOf[s.chain].Cluster:
			cp := policyOf[s.chain]
			rm := describeRule(s.rule, cp, kind == podEgressKind)
			rm.Tier, rm.Action = string(cp.Tier), o.decisionOf(s.rule)
			side.ClusterRules = append(side.ClusterRules, rm)
			switch {
			case cp.Tier == "Admin" && rm.Action != "Pass":
				adminDecision = &rm
			case cp.Tier != "Admin":
				baselineDecision = &rm
			}
		}
	}
	npIsolated := isolated && m.ruleset.isolatesByPolicy(podChain)
	switch {
	case byNode:
		side.Tier, side.Allowed = TierNode, true
	case adminDecision != nil:
		side.Tier, side.Allowed = TierAdminDeny, false
		if adminDecision.Action == "Accept" {
			side.Tier, side.Allowed = TierAdminAccept, true
		}
	case npIsolated && len(side.AllowedBy) > 0:
		side.Tier, side.Allowed = TierPolicy, true
	case npIsolated:
		side.Tier, side.Allowed = TierIsolation, false
	case baselineDecision != nil:
		side.Tier, side.Allowed = map[string]string{"Accept": TierBaselineAccept, "Pass": TierBaselinePass, "Deny": TierBaselineDeny}[baselineDecision.Action], baselineDecision.Action != "Deny"
	}
	// A pod chain that isolates without policies is the beta annotation's isolation.
	side.BetaIsolation = npIsolated && len(side.Policies) == 0
	return side, nil
}

// isolatesByPolicy reports whether the pod chain named chain ends in the drop of
// what no NetworkPolicy allows: NetworkPolicies (or the beta annotation) isolate it.
func (d *Desired) isolatesByPolicy(chain string) bool {
	for _, c := range d.Chains {
		if c.Name == chain {
			return slices.ContainsFunc(c.Rules, func(r string) bool { return strings.Contains(r, "not allowed by policy\"") })
		}
	}
	return false
}

// decisionOf reads the action a ClusterNetworkPolicy rule writes.
func (o options) decisionOf(rule string) string {
	f := tokens(rule)
	v, _, _ := parseMark(f[len(f)-1])
	switch v {
	case o.decisionMark(decisionAccept):
		return "Accept"
	case o.decisionMark(decisionDeny):
		return "Deny"
	}
	return "Pass"
}

// describeRule puts a compiled rule that set the allow mark into words: the policy
// rule it comes from (its comment), its peer and its port.
func describeRule(rule string, c *compiledPolicy, egress bool) RuleMatch {
	rm := RuleMatch{Policy: c.Key, Peer: "any peer", Port: "any port"}
	addrFlag := "-s"
	if egress {
		addrFlag = "-d"
	}
	f := tokens(rule)
	var peer, except []string
	for i := 0; i+1 < len(f); i++ {
		switch {
		case f[i] == "--comment":
			rm.Rule = strings.TrimPrefix(f[i+1], c.Key+" ")
		case f[i] == addrFlag:
			peer = append(peer, "ipBlock "+f[i+1])
		case f[i] == "-p" && rm.Port == "any port":
			rm.Port = "any " + strings.ToUpper(f[i+1]) + " port"
		case f[i] == "--dport":
			rm.Port = strings.Replace(rm.Port, "any ", "", 1)
			rm.Port = strings.TrimSuffix(rm.Port, " port") + " " + f[i+1]
		case f[i] == "--match-set" && i+2 < len(f):
			meaning := c.SetMeaning[f[i+1]]
			switch {
			case strings.HasPrefix(meaning, "named port "):
				rm.Port = strings.TrimPrefix(meaning, "named port ") + " (named port)"
			case strings.HasPrefix(meaning, "except "):
				except = append(except, meaning)
			default:
				peer = append(peer, meaning)
			}
		}
	}
	if len(peer) > 0 {
		rm.Peer = strings.Join(append(peer, except...), " ")
	}
	return rm
}
