package netpol

import (
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// explainOver explains a connection over the fixture with policies compiled for
// each node as that node does; n1 is the asking node.
func explainOver(t *testing.T, idx *index, o options, src, dst, proto string, port int, policies ...*networkingv1.NetworkPolicy) Verdict {
	t.Helper()
	pod := func(key string) *Pod {
		p := idx.Pod(key[:1], key[2:])
		if p == nil {
			t.Fatalf("no pod %s", key)
		}
		return p
	}
	v, err := explainConnection(pod(src), pod(dst), proto, port, ipfamily.IPv4, func(nodeName, _ string) (*compiledModel, error) {
		on := o
		on.NodeName = nodeName
		m := &compiledModel{thisNode: nodeName == o.NodeName}
		for _, p := range policies {
			m.policies = append(m.policies, compilePolicy(p, idx, on))
		}
		m.ruleset = assemble(m.policies, idx, on)
		return m, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestExplain(t *testing.T) {
	deny := policy("x", "deny", nil)
	fromB := policy("x", "from-b", l("app", "a"), ingress(port(tcp, intstr.FromString("http")), pods(l("app", "b"))))
	fromTeamB := policy("x", "from-team-b", nil, ingress(nil, nss(l("team", "b"))))
	fromBlock := policy("x", "from-block", nil, ingress(port(tcp, intstr.FromInt32(80)), block("10.0.0.0/16", "10.0.1.2/32")))
	bEgressDNS := policy("x", "b-dns-only", l("app", "b"), types(networkingv1.PolicyTypeEgress), egress(port(udp, intstr.FromInt32(53))))
	cNoEgress := policy("y", "c-no-egress", l("app", "c"), types(networkingv1.PolicyTypeEgress))

	type sideWant struct {
		tier      string
		policies  []string
		allowedBy []RuleMatch
		thisNode  bool
	}
	for _, tc := range []struct {
		name        string
		beta        bool
		policies    []*networkingv1.NetworkPolicy
		src, dst    string
		proto       string
		port        int
		egress      sideWant
		ingress     sideWant
		allowed     bool
		betaIngress bool
	}{
		{name: "no policies", src: "x/b", dst: "x/a", proto: "tcp", port: 80, allowed: true,
			egress: sideWant{tier: TierNotIsolated, thisNode: true}, ingress: sideWant{tier: TierNotIsolated, thisNode: true}},
		{name: "default deny", policies: p(deny), src: "x/b", dst: "x/a", proto: "tcp", port: 80,
			egress:  sideWant{tier: TierNotIsolated, thisNode: true},
			ingress: sideWant{tier: TierIsolation, policies: []string{"x/deny"}, thisNode: true}},
		{name: "podSelector on a named port", policies: p(deny, fromB), src: "x/b", dst: "x/a", proto: "tcp", port: 80, allowed: true,
			egress: sideWant{tier: TierNotIsolated, thisNode: true},
			ingress: sideWant{tier: TierPolicy, policies: []string{"x/deny", "x/from-b"}, thisNode: true,
				allowedBy: []RuleMatch{{Policy: "x/from-b", Rule: "ingress/0", Peer: "pods app=b in namespace x", Port: "TCP/http (named port)"}}}},
		{name: "named port resolves to another number", policies: p(deny, fromB), src: "x/b", dst: "x/a", proto: "tcp", port: 8080,
			egress:  sideWant{tier: TierNotIsolated, thisNode: true},
			ingress: sideWant{tier: TierIsolation, policies: []string{"x/deny", "x/from-b"}, thisNode: true}},
		{name: "namespaceSelector", policies: p(deny, fromTeamB), src: "y/a", dst: "x/a", proto: "udp", port: 53, allowed: true,
			egress: sideWant{tier: TierNotIsolated, thisNode: true},
			ingress: sideWant{tier: TierPolicy, policies: []string{"x/deny", "x/from-team-b"}, thisNode: true,
				allowedBy: []RuleMatch{{Policy: "x/from-team-b", Rule: "ingress/0", Peer: "all pods in namespaces team=b", Port: "any port"}}}},
		{name: "namespaceSelector leaves out the own namespace", policies: p(deny, fromTeamB), src: "x/b", dst: "x/a", proto: "udp", port: 53,
			egress:  sideWant{tier: TierNotIsolated, thisNode: true},
			ingress: sideWant{tier: TierIsolation, policies: []string{"x/deny", "x/from-team-b"}, thisNode: true}},
		{name: "ipBlock", policies: p(fromBlock), src: "y/a", dst: "x/a", proto: "tcp", port: 80, allowed: true,
			egress: sideWant{tier: TierNotIsolated, thisNode: true},
			ingress: sideWant{tier: TierPolicy, policies: []string{"x/from-block"}, thisNode: true,
				allowedBy: []RuleMatch{{Policy: "x/from-block", Rule: "ingress/0", Peer: "ipBlock 10.0.0.0/16 except 10.0.1.2/32", Port: "TCP 80"}}}},
		{name: "ipBlock except", policies: p(fromBlock), src: "x/b", dst: "x/a", proto: "tcp", port: 80,
			egress:  sideWant{tier: TierNotIsolated, thisNode: true},
			ingress: sideWant{tier: TierIsolation, policies: []string{"x/from-block"}, thisNode: true}},
		{name: "egress isolation", policies: p(bEgressDNS), src: "x/b", dst: "x/a", proto: "tcp", port: 80,
			egress:  sideWant{tier: TierIsolation, policies: []string{"x/b-dns-only"}, thisNode: true},
			ingress: sideWant{tier: TierNotIsolated, thisNode: true}},
		{name: "egress allowed", policies: p(bEgressDNS), src: "x/b", dst: "x/a", proto: "udp", port: 53, allowed: true,
			egress: sideWant{tier: TierPolicy, policies: []string{"x/b-dns-only"}, thisNode: true,
				allowedBy: []RuleMatch{{Policy: "x/b-dns-only", Rule: "egress/0", Peer: "any peer", Port: "UDP 53"}}},
			ingress: sideWant{tier: TierNotIsolated, thisNode: true}},
		{name: "both sides deny, both shown", policies: p(bEgressDNS, deny), src: "x/b", dst: "x/a", proto: "tcp", port: 80,
			egress:  sideWant{tier: TierIsolation, policies: []string{"x/b-dns-only"}, thisNode: true},
			ingress: sideWant{tier: TierIsolation, policies: []string{"x/deny"}, thisNode: true}},
		{name: "beta namespace isolation", beta: true, src: "y/a", dst: "z/a", proto: "tcp", port: 80, betaIngress: true,
			egress:  sideWant{tier: TierNotIsolated, thisNode: true},
			ingress: sideWant{tier: TierIsolation, thisNode: true}},
		{name: "beta annotation without beta mode", src: "y/a", dst: "z/a", proto: "tcp", port: 80, allowed: true,
			egress: sideWant{tier: TierNotIsolated, thisNode: true}, ingress: sideWant{tier: TierNotIsolated, thisNode: true}},
		{name: "source on another node", policies: p(cNoEgress, deny, fromTeamB), src: "y/c", dst: "x/a", proto: "tcp", port: 80,
			egress: sideWant{tier: TierIsolation, policies: []string{"y/c-no-egress"}},
			ingress: sideWant{tier: TierPolicy, policies: []string{"x/deny", "x/from-team-b"}, thisNode: true,
				allowedBy: []RuleMatch{{Policy: "x/from-team-b", Rule: "ingress/0", Peer: "all pods in namespaces team=b", Port: "any port"}}}},
		{name: "the node to its own pod", policies: p(deny), src: "x/host", dst: "x/a", proto: "tcp", port: 80, allowed: true,
			egress:  sideWant{tier: TierHostNetwork},
			ingress: sideWant{tier: TierNode, thisNode: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := opts()
			o.BetaNamespaceIsolation = tc.beta
			v := explainOver(t, fixture(), o, tc.src, tc.dst, tc.proto, tc.port, tc.policies...)
			check := func(dir string, got Side, want sideWant) {
				t.Helper()
				if got.Tier != want.tier || !slices.Equal(got.Policies, want.policies) || !slices.Equal(got.AllowedBy, want.allowedBy) ||
					(want.tier != TierHostNetwork && got.ThisNode != want.thisNode) {
					t.Errorf("%s: got %+v, want %+v", dir, got, want)
				}
				if wantAllowed := want.tier != TierIsolation; got.Allowed != wantAllowed {
					t.Errorf("%s: allowed %v, want %v", dir, got.Allowed, wantAllowed)
				}
			}
			check("egress", v.Egress, tc.egress)
			check("ingress", v.Ingress, tc.ingress)
			if v.Allowed != tc.allowed || v.Ingress.BetaIsolation != tc.betaIngress {
				t.Errorf("allowed %v beta %v, want %v %v", v.Allowed, v.Ingress.BetaIsolation, tc.allowed, tc.betaIngress)
			}
		})
	}
}

// TestExplainAgreesWithTheRules compares explain's verdict with the fake kernel's,
// which the writer filled from the same compilation, for every pair of local pods
// and a spread of ports under several policy sets.
func TestExplainAgreesWithTheRules(t *testing.T) {
	sets := [][]*networkingv1.NetworkPolicy{
		nil,
		p(policy("x", "deny", nil)),
		p(policy("x", "deny", nil), policy("x", "from-b", l("app", "a"), ingress(port(tcp, intstr.FromString("http")), pods(l("app", "b"))))),
		p(policy("x", "from-block", nil, ingress(port(udp, intstr.FromInt32(53)), block("10.0.0.0/8", "10.0.2.0/24")))),
		p(policy("x", "egress", nil, types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromString("http")), nss(l("team", "b"))))),
		p(policy("y", "both", nil, types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress),
			ingress(nil, pods(l("app", "a"))), egress(port(tcp, intstr.FromInt32(80), 8080), block("10.0.1.0/24")))),
	}
	local := []string{"x/a", "x/b", "y/a", "z/a"}
	for i, policies := range sets {
		for _, beta := range []bool{false, true} {
			idx, o := fixture(), opts()
			o.BetaNamespaceIsolation = beta
			k, _, _, _ := apply(t, idx, o, policies...)
			for _, src := range local {
				for _, dst := range local {
					if src == dst {
						continue
					}
					for _, pp := range []struct {
						proto string
						port  int
					}{{"tcp", 80}, {"tcp", 8080}, {"tcp", 81}, {"udp", 53}, {"udp", 80}} {
						v := explainOver(t, idx, o, src, dst, pp.proto, pp.port, policies...)
						kernel := k.allowed(t, packet{src: addrOf(t, idx, src), dst: addrOf(t, idx, dst), proto: pp.proto, dport: pp.port})
						if v.Allowed != kernel {
							t.Errorf("set %d beta %v: %s -> %s %s/%d: explain says %v, the rules %v (%+v)", i, beta, src, dst, pp.proto, pp.port, v.Allowed, kernel, v)
						}
					}
				}
			}
		}
	}
}

func p(policies ...*networkingv1.NetworkPolicy) []*networkingv1.NetworkPolicy { return policies }
