package netpol

import (
	"context"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// --- ClusterNetworkPolicy builders ---

const (
	accept = policyv1beta1.ClusterNetworkPolicyRuleActionAccept
	deny   = policyv1beta1.ClusterNetworkPolicyRuleActionDeny
	pass   = policyv1beta1.ClusterNetworkPolicyRuleActionPass
	admin  = policyv1beta1.AdminTier
	base   = policyv1beta1.BaselineTier
)

// cnp builds a ClusterNetworkPolicy whose subject is the pods of the namespaces
// matching subjectNS.
func cnp(name string, tier policyv1beta1.Tier, priority int32, subjectNS map[string]string, mutate ...func(*policyv1beta1.ClusterNetworkPolicySpec)) *policyv1beta1.ClusterNetworkPolicy {
	p := &policyv1beta1.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: policyv1beta1.ClusterNetworkPolicySpec{Tier: tier, Priority: priority,
			Subject: policyv1beta1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: subjectNS}}},
	}
	for _, m := range mutate {
		m(&p.Spec)
	}
	return p
}

// subjectPods makes the subject the pods matching podL in the namespaces matching nsL.
func subjectPodsOf(podL, nsL map[string]string) func(*policyv1beta1.ClusterNetworkPolicySpec) {
	return func(s *policyv1beta1.ClusterNetworkPolicySpec) {
		s.Subject = policyv1beta1.ClusterNetworkPolicySubject{Pods: &policyv1beta1.NamespacedPod{
			NamespaceSelector: metav1.LabelSelector{MatchLabels: nsL}, PodSelector: metav1.LabelSelector{MatchLabels: podL}}}
	}
}

func cIn(action policyv1beta1.ClusterNetworkPolicyRuleAction, protos []policyv1beta1.ClusterNetworkPolicyProtocol, from ...policyv1beta1.ClusterNetworkPolicyEgressPeer) func(*policyv1beta1.ClusterNetworkPolicySpec) {
	return func(s *policyv1beta1.ClusterNetworkPolicySpec) {
		r := policyv1beta1.ClusterNetworkPolicyIngressRule{Action: action, Protocols: protos}
		for _, p := range from {
			r.From = append(r.From, policyv1beta1.ClusterNetworkPolicyIngressPeer{Namespaces: p.Namespaces, Pods: p.Pods})
		}
		s.Ingress = append(s.Ingress, r)
	}
}

func cOut(action policyv1beta1.ClusterNetworkPolicyRuleAction, protos []policyv1beta1.ClusterNetworkPolicyProtocol, to ...policyv1beta1.ClusterNetworkPolicyEgressPeer) func(*policyv1beta1.ClusterNetworkPolicySpec) {
	return func(s *policyv1beta1.ClusterNetworkPolicySpec) {
		s.Egress = append(s.Egress, policyv1beta1.ClusterNetworkPolicyEgressRule{Action: action, Protocols: protos, To: to})
	}
}

func cNS(nsL map[string]string) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: &metav1.LabelSelector{MatchLabels: nsL}}
}

func cPods(podL, nsL map[string]string) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Pods: &policyv1beta1.NamespacedPod{
		NamespaceSelector: metav1.LabelSelector{MatchLabels: nsL}, PodSelector: metav1.LabelSelector{MatchLabels: podL}}}
}

func cNets(cidrs ...policyv1beta1.CIDR) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Networks: cidrs}
}

func cNodes(nodeL map[string]string) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Nodes: &metav1.LabelSelector{MatchLabels: nodeL}}
}

func cPort(proto string, from int32, to ...int32) []policyv1beta1.ClusterNetworkPolicyProtocol {
	port := &policyv1beta1.Port{Number: from}
	if len(to) > 0 {
		port = &policyv1beta1.Port{Range: &policyv1beta1.PortRange{Start: from, End: to[0]}}
	}
	var p policyv1beta1.ClusterNetworkPolicyProtocol
	switch proto {
	case "tcp":
		p.TCP = &policyv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}
	case "udp":
		p.UDP = &policyv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: port}
	case "sctp":
		p.SCTP = &policyv1beta1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: port}
	}
	return []policyv1beta1.ClusterNetworkPolicyProtocol{p}
}

func cNamedPort(name string) []policyv1beta1.ClusterNetworkPolicyProtocol {
	return []policyv1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: name}}
}

// compileBoth compiles NetworkPolicies and ClusterNetworkPolicies, as a sync does.
func compileBoth(idx *index, o options, nps []*networkingv1.NetworkPolicy, cnps []*policyv1beta1.ClusterNetworkPolicy) []*compiledPolicy {
	var out []*compiledPolicy
	for _, p := range nps {
		out = append(out, compilePolicy(p, idx, o))
	}
	for _, p := range cnps {
		out = append(out, compileCluster(p, idx, o))
	}
	return out
}

// applyCluster compiles both kinds of policies and applies them to fresh fakes.
func applyCluster(t *testing.T, idx *index, o options, nps []*networkingv1.NetworkPolicy, cnps []*policyv1beta1.ClusterNetworkPolicy) (*kernel, []*compiledPolicy) {
	t.Helper()
	ipt, sets := iptables.NewFake(o.Family), ipset.NewFake()
	compiled := compileBoth(idx, o, nps, cnps)
	if _, err := newWriter(ipt, sets, slog.Default()).Apply(&assemble(compiled, idx, o).Ruleset, true); err != nil {
		t.Fatal(err)
	}
	return readKernel(t, ipt, sets), compiled
}

func TestClusterPolicySemantics(t *testing.T) {
	teamB := l("team", "b")
	inX := l("ns", "x")
	fromYtoX := policy("x", "from-y", nil, ingress(nil, nss(teamB)))
	denyAllX := policy("x", "deny", nil)
	egressDenyX := policy("x", "egress-deny", nil, types(networkingv1.PolicyTypeEgress))
	idx := fixture()
	idx.Nodes["n1"] = &ClusterNode{Labels: l("role", "worker"), IPs: []netip.Addr{mustAddr("192.168.0.10")}}
	idx.Nodes["n2"] = &ClusterNode{Labels: l("role", "control-plane"), IPs: []netip.Addr{mustAddr("192.168.0.2")}}

	for _, tc := range []struct {
		name     string
		nps      []*networkingv1.NetworkPolicy
		cnps     []*policyv1beta1.ClusterNetworkPolicy
		probes   []probe
		problems int
	}{
		{name: "Admin Deny wins over a NetworkPolicy that allows",
			nps:    p(fromYtoX),
			cnps:   cp(cnp("deny-b", admin, 10, inX, cIn(deny, nil, cNS(teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, false}, {"z/a", "x/a", "tcp", 80, false}, {"x/b", "x/a", "tcp", 80, false}}},
		{name: "Admin Deny applies to its subject only and only in its direction",
			cnps:   cp(cnp("deny-b", admin, 10, inX, cIn(deny, nil, cNS(teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, false}, {"z/a", "x/a", "tcp", 80, true}, {"y/a", "z/a", "tcp", 80, true}, {"x/a", "y/a", "tcp", 80, true}}},
		{name: "Admin Pass hands over to the NetworkPolicy, skipping lower Admin rules",
			nps: p(fromYtoX),
			cnps: cp(cnp("pass-b", admin, 10, inX, cIn(pass, nil, cNS(teamB))),
				cnp("deny-all", admin, 20, inX, cIn(deny, nil, cNS(nil)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, true}, {"z/a", "x/a", "tcp", 80, false}, {"x/b", "x/a", "tcp", 80, false}}},
		{name: "Admin Accept wins over a NetworkPolicy that denies",
			nps:    p(denyAllX),
			cnps:   cp(cnp("accept-b", admin, 10, inX, cIn(accept, nil, cNS(teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, true}, {"z/a", "x/a", "tcp", 80, false}}},
		{name: "Admin Accept also skips the Baseline tier",
			cnps: cp(cnp("accept-b", admin, 10, inX, cIn(accept, nil, cNS(teamB))),
				cnp("base-deny", base, 0, inX, cIn(deny, nil, cNS(nil)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, true}, {"z/a", "x/a", "tcp", 80, false}}},
		{name: "Baseline Deny applies where no NetworkPolicy isolates",
			cnps:   cp(cnp("base-deny-b", base, 10, inX, cIn(deny, nil, cNS(teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, false}, {"z/a", "x/a", "tcp", 80, true}, {"y/a", "z/a", "tcp", 80, true}}},
		{name: "a NetworkPolicy overrides the Baseline tier for the pods it isolates",
			nps:  p(policy("x", "from-y-to-a", l("app", "a"), ingress(nil, nss(teamB)))),
			cnps: cp(cnp("base-deny-b", base, 10, inX, cIn(deny, nil, cNS(teamB)))),
			probes: []probe{
				{"y/a", "x/a", "tcp", 80, true}, {"z/a", "x/a", "tcp", 80, false}, // x/a: isolated by the NetworkPolicy
				{"y/a", "x/b", "tcp", 80, false}, {"z/a", "x/b", "tcp", 80, true}, // x/b: Baseline
			}},
		{name: "Baseline Accept and Pass allow, the first matching rule decides",
			cnps: cp(cnp("base", base, 10, inX, cIn(pass, cPort("tcp", 81), cNS(nil)), cIn(accept, cPort("tcp", 80), cNS(teamB)), cIn(deny, nil, cNS(nil)))),
			probes: []probe{
				{"y/a", "x/a", "tcp", 80, true}, {"z/a", "x/a", "tcp", 81, true}, {"y/a", "x/a", "tcp", 82, false}, {"z/a", "x/a", "tcp", 80, false},
			}},
		{name: "lower priority value decides first",
			cnps: cp(cnp("b-deny", admin, 20, inX, cIn(deny, nil, cNS(teamB))),
				cnp("a-accept", admin, 10, inX, cIn(accept, nil, cNS(teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, true}}},
		{name: "lower priority value decides first (swapped)",
			cnps: cp(cnp("b-deny", admin, 5, inX, cIn(deny, nil, cNS(teamB))),
				cnp("a-accept", admin, 10, inX, cIn(accept, nil, cNS(teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, false}}},
		{name: "the same priority is ordered by name",
			cnps: cp(cnp("b-deny", admin, 10, inX, cIn(deny, nil, cNS(teamB))),
				cnp("a-accept", admin, 10, inX, cIn(accept, nil, cNS(teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, true}}},
		{name: "rules of one policy decide in their order",
			cnps:   cp(cnp("ordered", admin, 10, inX, cIn(deny, cPort("tcp", 80), cNS(teamB)), cIn(accept, nil, cNS(teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, false}, {"y/a", "x/a", "tcp", 81, true}}},
		{name: "port ranges are inclusive and per protocol",
			cnps: cp(cnp("range", admin, 10, inX, cIn(deny, cPort("tcp", 1000, 2000), cNS(nil)))),
			probes: []probe{
				{"y/a", "x/a", "tcp", 999, true}, {"y/a", "x/a", "tcp", 1000, false}, {"y/a", "x/a", "tcp", 2000, false},
				{"y/a", "x/a", "tcp", 2001, true}, {"y/a", "x/a", "udp", 1500, true},
			}},
		{name: "UDP and SCTP ports",
			cnps: cp(cnp("udp-sctp", admin, 10, inX, cIn(deny, append(cPort("udp", 53), cPort("sctp", 9)...), cNS(nil)))),
			probes: []probe{
				{"y/a", "x/a", "udp", 53, false}, {"y/a", "x/a", "tcp", 53, true}, {"y/a", "x/a", "sctp", 9, false}, {"y/a", "x/a", "udp", 9, true},
			}},
		{name: "ingress named ports resolve on the subject pods",
			cnps: cp(cnp("named", admin, 10, inX, cIn(accept, cNamedPort("http"), cNS(nil)), cIn(deny, nil, cNS(nil)))),
			probes: []probe{
				{"y/a", "x/a", "tcp", 80, true}, {"y/a", "x/a", "tcp", 8080, false}, {"y/a", "x/b", "tcp", 8080, true}, {"y/a", "x/b", "tcp", 80, false},
			}},
		{name: "egress named ports resolve on the peer pods",
			cnps: cp(cnp("named-out", admin, 10, inX, cOut(accept, cNamedPort("http"), cNS(teamB)), cOut(deny, nil, cNS(nil)))),
			probes: []probe{
				{"x/a", "y/a", "tcp", 80, true}, {"x/a", "y/a", "tcp", 8080, false}, {"x/a", "z/a", "tcp", 80, false},
			}},
		{name: "pods peers need both selectors",
			cnps:   cp(cnp("pods", admin, 10, inX, cIn(deny, nil, cPods(l("app", "a"), teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, false}, {"y/c", "x/a", "tcp", 80, true}}},
		{name: "a pods subject selects pods of the namespaces it selects",
			cnps:   cp(cnp("subject-pods", admin, 10, nil, subjectPodsOf(l("app", "b"), inX), cIn(deny, nil, cNS(nil)))),
			probes: []probe{{"y/a", "x/b", "tcp", 80, false}, {"y/a", "x/a", "tcp", 80, true}, {"x/a", "y/a", "tcp", 80, true}}},
		{name: "networks match by address, egress only",
			cnps: cp(cnp("nets", admin, 10, inX, cOut(deny, nil, cNets("203.0.113.0/24", "2001:db8::/32")))),
			probes: []probe{
				{"x/a", "203.0.113.5", "tcp", 443, false}, {"x/a", "198.51.100.1", "tcp", 443, true}, {"203.0.113.5", "x/a", "tcp", 80, true},
			}},
		{name: "nodes peers match the selected nodes' addresses",
			cnps: cp(cnp("nodes", admin, 10, inX, cOut(deny, cPort("tcp", 6443), cNodes(l("role", "control-plane"))))),
			probes: []probe{
				{"x/a", "192.168.0.2", "tcp", 6443, false}, {"x/a", "192.168.0.2", "tcp", 22, true}, {"y/a", "192.168.0.2", "tcp", 6443, true},
			}},
		{name: "egress Accept skips the NetworkPolicy egress tier but not the peer's ingress",
			nps:  p(egressDenyX, policy("y", "deny-in", nil)),
			cnps: cp(cnp("accept-out", admin, 10, inX, cOut(accept, nil, cNS(nil)))),
			probes: []probe{
				{"x/a", "z/a", "tcp", 80, true}, {"x/a", "y/a", "tcp", 80, false},
			}},
		{name: "Admin egress Deny to a namespace",
			cnps:   cp(cnp("deny-out", admin, 10, inX, cOut(deny, cPort("udp", 53), cNS(teamB)))),
			probes: []probe{{"x/a", "y/a", "udp", 53, false}, {"x/a", "y/a", "tcp", 53, true}, {"x/a", "z/a", "udp", 53, true}}},
		{name: "a domainNames peer matches nothing and is reported",
			cnps: cp(cnp("dns", admin, 10, inX, cOut(accept, nil, policyv1beta1.ClusterNetworkPolicyEgressPeer{DomainNames: []policyv1beta1.DomainName{"example.com"}}),
				cOut(deny, nil, cNets("0.0.0.0/0")))),
			probes: []probe{{"x/a", "203.0.113.5", "tcp", 443, false}}, problems: 1},
		{name: "a Deny peer without a known field fails closed: deny all",
			cnps:   cp(cnp("unknown", admin, 10, inX, cIn(deny, cPort("tcp", 1), policyv1beta1.ClusterNetworkPolicyEgressPeer{}))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, false}, {"y/a", "z/a", "tcp", 80, true}}, problems: 1},
		{name: "an Accept peer without a known field matches nothing",
			nps:    p(denyAllX),
			cnps:   cp(cnp("unknown", admin, 10, inX, cIn(accept, nil, policyv1beta1.ClusterNetworkPolicyEgressPeer{}))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, false}}, problems: 1},
		{name: "an invalid subject selector selects nothing and the rest works",
			cnps: cp(cnp("bad", admin, 10, nil, func(s *policyv1beta1.ClusterNetworkPolicySpec) {
				s.Subject.Namespaces = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: "Bogus"}}}
			}, cIn(deny, nil, cNS(nil))), cnp("good", admin, 20, inX, cIn(deny, nil, cNS(teamB)))),
			probes: []probe{{"y/a", "x/a", "tcp", 80, false}, {"z/a", "x/a", "tcp", 80, true}, {"y/a", "z/a", "tcp", 80, true}}, problems: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, compiled := applyCluster(t, idx, opts(), tc.nps, tc.cnps)
			problems := 0
			for _, c := range compiled {
				problems += len(c.Problems)
			}
			if problems != tc.problems {
				t.Errorf("got %d problems, want %d", problems, tc.problems)
			}
			for _, pr := range tc.probes {
				pk := packet{src: addrOf(t, idx, pr.from), dst: addrOf(t, idx, pr.to), proto: pr.proto, dport: pr.port}
				if got := k.allowed(t, pk); got != pr.want {
					t.Errorf("%s -> %s %s/%d: allowed=%v, want %v", pr.from, pr.to, pr.proto, pr.port, got, pr.want)
				}
				// Replies pass whatever the tiers say.
				pk.established = true
				if !k.allowed(t, pk) {
					t.Errorf("%s -> %s %s/%d established was dropped", pr.from, pr.to, pr.proto, pr.port)
				}
			}
			// The node always reaches its pods.
			node := packet{src: mustAddr("192.168.0.10"), dst: addrOf(t, idx, "x/a"), proto: "tcp", dport: 80, srcLocal: true}
			if !k.allowed(t, node) {
				t.Error("node -> x/a was dropped")
			}
		})
	}
}

// TestClusterPolicyIPv6 checks that the tiers compile for IPv6 alike: networks of
// the family apply, the other family's are left out.
func TestClusterPolicyIPv6(t *testing.T) {
	idx := newIndex(node)
	idx.Namespaces["x"] = &Namespace{Name: "x", Labels: l("ns", "x")}
	idx.Namespaces["y"] = &Namespace{Name: "y", Labels: l("ns", "y")}
	idx.SetPod(&Pod{Namespace: "x", Name: "a", NodeName: node, IPs: []netip.Addr{mustAddr("10.0.1.1"), mustAddr("fd00::1")}})
	idx.SetPod(&Pod{Namespace: "y", Name: "b", NodeName: node, IPs: []netip.Addr{mustAddr("10.0.2.1"), mustAddr("fd00::2")}})
	o := opts()
	o.Family = ipfamily.IPv6
	k, _ := applyCluster(t, idx, o, nil, cp(
		cnp("deny-y", admin, 1, l("ns", "x"), cIn(deny, nil, cNS(l("ns", "y")))),
		cnp("deny-net", admin, 2, l("ns", "x"), cOut(deny, nil, cNets("2001:db8::/32", "203.0.113.0/24")))))
	for _, pr := range []probe{
		{"fd00::2", "fd00::1", "tcp", 80, false}, {"fd00::1", "fd00::2", "tcp", 80, true},
		{"fd00::1", "2001:db8::1", "tcp", 80, false}, {"fd00::1", "2001:db9::1", "tcp", 80, true},
	} {
		pk := packet{src: mustAddr(pr.from), dst: mustAddr(pr.to), proto: pr.proto, dport: pr.port}
		if got := k.allowed(t, pk); got != pr.want {
			t.Errorf("%s -> %s: allowed=%v, want %v", pr.from, pr.to, got, pr.want)
		}
	}
}

// TestClusterPolicyChainsAreOrderedByTierAndPriority reads a pod chain: Admin
// chains by priority, then the NetworkPolicy chains, no Baseline chains for a pod a
// NetworkPolicy isolates.
func TestClusterPolicyChainsAreOrderedByTierAndPriority(t *testing.T) {
	idx := fixture()
	o := opts()
	compiled := compileBoth(idx, o, p(policy("x", "np", nil)), cp(
		cnp("second", admin, 20, l("ns", "x"), cIn(deny, nil, cNS(nil))),
		cnp("first", admin, 3, l("ns", "x"), cIn(deny, nil, cNS(nil))),
		cnp("baseline", base, 0, l("ns", "x"), cIn(deny, nil, cNS(nil)))))
	d := assemble(compiled, idx, o)
	podChain := name(podIngressKind, "x/a", o.familyTag())
	var jumps []string
	for _, c := range d.Chains {
		if c.Name != podChain {
			continue
		}
		for _, r := range c.Rules {
			if strings.HasPrefix(r, "-j KUBE-ROUTER-") {
				jumps = append(jumps, strings.TrimPrefix(r, "-j "))
			}
		}
	}
	want := []string{
		name(cnpIngressKind, clusterHashKey("first"), "4"), name(cnpIngressKind, clusterHashKey("second"), "4"),
		name(polIngressKind, "x/np", "4"),
	}
	if strings.Join(jumps, " ") != strings.Join(want, " ") {
		t.Fatalf("pod chain jumps %v, want %v", jumps, want)
	}
}

func cp(policies ...*policyv1beta1.ClusterNetworkPolicy) []*policyv1beta1.ClusterNetworkPolicy {
	return policies
}

// explainCluster explains a connection over the fixture with both kinds of
// policies compiled for each node as that node does.
func explainCluster(t *testing.T, src, dst, proto string, port int, nps []*networkingv1.NetworkPolicy, cnps []*policyv1beta1.ClusterNetworkPolicy) Verdict {
	t.Helper()
	idx := fixture()
	v, err := explainConnection(idx.Pod(src[:1], src[2:]), idx.Pod(dst[:1], dst[2:]), proto, port, ipfamily.IPv4, func(nodeName, _ string) (*compiledModel, error) {
		o := opts()
		o.NodeName = nodeName
		m := &compiledModel{thisNode: nodeName == node, policies: compileBoth(idx, o, nps, cnps)}
		m.ruleset = assemble(m.policies, idx, o)
		return m, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestExplainClusterTiers(t *testing.T) {
	teamB, inX := l("team", "b"), l("ns", "x")
	fromYtoX := policy("x", "from-y", nil, ingress(nil, nss(teamB)))
	for _, tc := range []struct {
		name    string
		nps     []*networkingv1.NetworkPolicy
		cnps    []*policyv1beta1.ClusterNetworkPolicy
		tier    string
		allowed bool
		rules   []RuleMatch
	}{
		{name: "Admin Deny names the policy and rule",
			nps:   p(fromYtoX),
			cnps:  cp(cnp("deny-b", admin, 10, inX, cIn(accept, cPort("tcp", 9), cNS(teamB)), cIn(deny, cPort("tcp", 80), cNS(teamB)))),
			tier:  TierAdminDeny,
			rules: []RuleMatch{{Policy: "deny-b", Rule: "ingress/1", Peer: "all pods in namespaces team=b", Port: "TCP 80", Tier: "Admin", Action: "Deny"}}},
		{name: "Admin Accept", nps: p(policy("x", "deny", nil)),
			cnps: cp(cnp("accept-b", admin, 10, inX, cIn(accept, nil, cNS(teamB)))), tier: TierAdminAccept, allowed: true,
			rules: []RuleMatch{{Policy: "accept-b", Rule: "ingress/0", Peer: "all pods in namespaces team=b", Port: "any port", Tier: "Admin", Action: "Accept"}}},
		{name: "Admin Pass to the NetworkPolicy tier", nps: p(fromYtoX),
			cnps: cp(cnp("pass", admin, 10, inX, cIn(pass, nil, cNS(teamB))), cnp("deny", admin, 20, inX, cIn(deny, nil, cNS(nil)))),
			tier: TierPolicy, allowed: true,
			rules: []RuleMatch{{Policy: "pass", Rule: "ingress/0", Peer: "all pods in namespaces team=b", Port: "any port", Tier: "Admin", Action: "Pass"}}},
		{name: "Baseline Deny", cnps: cp(cnp("base", base, 10, inX, cIn(deny, nil, cNS(teamB)))), tier: TierBaselineDeny,
			rules: []RuleMatch{{Policy: "base", Rule: "ingress/0", Peer: "all pods in namespaces team=b", Port: "any port", Tier: "Baseline", Action: "Deny"}}},
		{name: "NetworkPolicy over Baseline", nps: p(fromYtoX), cnps: cp(cnp("base", base, 10, inX, cIn(deny, nil, cNS(teamB)))),
			tier: TierPolicy, allowed: true},
		{name: "Baseline Accept", cnps: cp(cnp("base", base, 10, inX, cIn(accept, nil, cNS(teamB)), cIn(deny, nil, cNS(nil)))),
			tier: TierBaselineAccept, allowed: true,
			rules: []RuleMatch{{Policy: "base", Rule: "ingress/0", Peer: "all pods in namespaces team=b", Port: "any port", Tier: "Baseline", Action: "Accept"}}},
		{name: "no rule matches", cnps: cp(cnp("base", base, 10, inX, cIn(deny, nil, cNS(l("team", "q"))))),
			tier: TierNotIsolated, allowed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := explainCluster(t, "y/a", "x/a", "tcp", 80, tc.nps, tc.cnps)
			got := v.Ingress
			if got.Tier != tc.tier || got.Allowed != tc.allowed || v.Allowed != tc.allowed || !slices.Equal(got.ClusterRules, tc.rules) {
				t.Errorf("ingress side: got tier %q allowed %v rules %+v; want %q %v %+v", got.Tier, got.Allowed, got.ClusterRules, tc.tier, tc.allowed, tc.rules)
			}
			// explain reads the rules the kernel gets: it must agree with them.
			k, _ := applyCluster(t, fixture(), opts(), tc.nps, tc.cnps)
			idx := fixture()
			if kernel := k.allowed(t, packet{src: addrOf(t, idx, "y/a"), dst: addrOf(t, idx, "x/a"), proto: "tcp", dport: 80}); kernel != v.Allowed {
				t.Errorf("kernel allows %v, explain %v", kernel, v.Allowed)
			}
		})
	}
}

// TestIncrementalSyncWithClusterPoliciesMatchesFullSync makes single changes (pod
// labels here and on other nodes, new pods, policies of both kinds) with
// ClusterNetworkPolicies present, syncs incrementally, and checks that a full sync
// from scratch finds nothing else to write: what affectsCluster leaves alone and
// the memoised peer sets kept are indeed unchanged.
func TestIncrementalSyncWithClusterPoliciesMatchesFullSync(t *testing.T) {
	ctx := context.Background()
	bc := newBenchController(t, 5, Dataplane{IPTables: []iptables.Interface{iptables.NewFake(ipfamily.IPv4)}, IPSets: ipset.NewFake()})
	bc.addClusterPolicies(t, 20)
	if _, err := bc.c.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	changes := []struct {
		name string
		do   func(*benchController, testing.TB, int)
	}{
		{"local pod relabelled", (*benchController).relabelPod},
		{"remote pod relabelled", (*benchController).relabelRemotePod},
		{"local pod added", (*benchController).addLocalPod},
		{"policy changed", (*benchController).changePolicy},
		{"cluster network policy changed", (*benchController).changeClusterPolicy},
	}
	for n := range 30 {
		ch := changes[n%len(changes)]
		ch.do(bc, t, n)
		if _, err := bc.c.sync(ctx, false); err != nil {
			t.Fatal(err)
		}
		incremental := *bc.c.families[0].asm.last
		if _, err := bc.c.sync(ctx, true); err != nil {
			t.Fatal(err)
		}
		full := bc.c.families[0].asm.last
		if !reflect.DeepEqual(incremental.Chains, full.Chains) || !reflect.DeepEqual(incremental.Sets, full.Sets) {
			t.Fatalf("change %d (%s): the incremental sync differs from a full one", n, ch.name)
		}
	}
}

// TestClusterPeersRecurringAcrossRulesShareOneSet gives three ClusterNetworkPolicies
// a rule admitting one team's namespaces and one namespace of their own. The team's
// pods are held in one set that all three rules match; a set per rule (the union of
// its peers) repeated them in each.
func TestClusterPeersRecurringAcrossRulesShareOneSet(t *testing.T) {
	idx := newIndex(node)
	teamPod := mustAddr("10.0.9.1")
	idx.Namespaces["team"] = &Namespace{Name: "team", Labels: l("team", "a")}
	idx.SetPod(&Pod{Namespace: "team", Name: "t", NodeName: node, IPs: []netip.Addr{teamPod}})
	var cnps []*policyv1beta1.ClusterNetworkPolicy
	for i, ns := range []string{"x", "y", "z"} {
		idx.Namespaces[ns] = &Namespace{Name: ns, Labels: l("ns", ns)}
		idx.SetPod(&Pod{Namespace: ns, Name: "p", NodeName: node, IPs: []netip.Addr{mustAddr("10.0." + strconv.Itoa(i+1) + ".1")}})
		cnps = append(cnps, cnp("admit-"+ns, admin, int32(i+1), l("ns", ns), cIn(accept, nil, cNS(l("team", "a")), cNS(l("ns", ns)))))
	}
	o := opts()
	d := assemble(compileBoth(idx, o, nil, cnps), idx, o)
	holding := 0
	for _, s := range d.Sets {
		if slices.Contains(s.Entries, teamPod.String()) {
			holding++
		}
	}
	if holding != 1 {
		t.Errorf("the team's pod is in %d sets, want 1", holding)
	}
	k, _ := applyCluster(t, idx, o, nil, cnps)
	for _, pr := range []probe{
		{"10.0.9.1", "10.0.2.1", "tcp", 80, true}, {"10.0.1.1", "10.0.1.1", "tcp", 80, true},
	} {
		pk := packet{src: mustAddr(pr.from), dst: mustAddr(pr.to), proto: pr.proto, dport: pr.port}
		if got := k.allowed(t, pk); got != pr.want {
			t.Errorf("%s -> %s: allowed=%v, want %v", pr.from, pr.to, got, pr.want)
		}
	}
}
