package netpol

import (
	"net/netip"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

func TestAffects(t *testing.T) {
	ns := map[string]*Namespace{"x": {Name: "x", Labels: l("team", "a")}, "y": {Name: "y", Labels: l("team", "b")}}
	pod := func(namespace string, labels map[string]string) *Pod {
		return &Pod{Namespace: namespace, Name: "p", Labels: labels, NodeName: node, IPs: []netip.Addr{mustAddr("10.0.9.9")}}
	}
	for _, tc := range []struct {
		name     string
		policy   *networkingv1.NetworkPolicy
		old, new *Pod
		want     bool
	}{
		{"a new pod its podSelector selects", policy("x", "p", l("app", "a")), nil, pod("x", l("app", "a")), true},
		{"a new pod in its namespace that no selector matches", policy("x", "p", l("app", "a"), ingress(nil, pods(l("app", "b")))), nil, pod("x", l("app", "c")), false},
		{"a pod in another namespace, with only same-namespace peers", policy("x", "p", nil, ingress(nil, pods(nil))), nil, pod("y", nil), false},
		{"a pod in another namespace its namespaceSelector matches", policy("x", "p", nil, ingress(nil, nss(l("team", "b")))), nil, pod("y", nil), true},
		{"a pod in another namespace its namespaceSelector does not match", policy("x", "p", nil, ingress(nil, nss(l("team", "c")))), nil, pod("y", nil), false},
		{"a pod anywhere, for an egress named port to everyone", policy("x", "p", nil, types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromString("http")))), nil, pod("y", nil), true},
		{"a relabel in another namespace that keeps the peer match", policy("x", "p", nil, ingress(nil, both(l("app", "b"), l("team", "b")))), pod("y", l("app", "b", "v", "1")), pod("y", l("app", "b", "v", "2")), false},
		{"a relabel in another namespace into the peer selector", policy("x", "p", nil, ingress(nil, both(l("app", "b"), l("team", "b")))), pod("y", l("app", "c")), pod("y", l("app", "b")), true},
		{"a relabel in a namespace a namespace-wide peer selects", policy("x", "p", nil, ingress(nil, nss(l("team", "b")))), pod("y", l("app", "b")), pod("y", l("app", "c")), false},
		{"a new pod inside an egress ipBlock with a named port", policy("x", "p", nil, types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromString("http")), block("10.0.9.0/24"))), nil, pod("y", nil), true},
		{"a deleted pod inside an egress ipBlock with a named port", policy("x", "p", nil, types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromString("http")), block("10.0.9.0/24"))), pod("y", nil), nil, true},
		{"a new pod outside an egress ipBlock with a named port", policy("x", "p", nil, types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromString("http")), block("10.0.8.0/24"))), nil, pod("y", nil), false},
		{"a relabel inside an egress ipBlock with a named port", policy("x", "p", nil, types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromString("http")), block("10.0.9.0/24"))), pod("y", l("v", "1")), pod("y", l("v", "2")), false},
		{"a new pod inside an egress ipBlock with numeric ports", policy("x", "p", nil, types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromInt32(80)), block("10.0.9.0/24"))), nil, pod("y", nil), false},
		{"a deleted pod its podSelector selected", policy("x", "p", l("app", "a")), pod("x", l("app", "a")), nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.new
			if p == nil {
				p = tc.old
			}
			if got := affects(tc.policy, tc.old, tc.new, ns[p.Namespace], metav1.LabelSelectorAsSelector); got != tc.want {
				t.Fatalf("Affects = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestAffectsCluster(t *testing.T) {
	ns := map[string]*Namespace{"x": {Name: "x", Labels: l("team", "a")}, "y": {Name: "y", Labels: l("team", "b")}}
	pod := func(namespace string, labels map[string]string) *Pod {
		return &Pod{Namespace: namespace, Name: "p", Labels: labels, NodeName: node, IPs: []netip.Addr{mustAddr("10.0.9.9")}}
	}
	for _, tc := range []struct {
		name     string
		policy   *policyv1beta1.ClusterNetworkPolicy
		old, new *Pod
		want     bool
	}{
		{"a new pod in its subject's namespaces", cnp("c", admin, 1, l("team", "a")), nil, pod("x", nil), true},
		{"a new pod outside its subject and peers", cnp("c", admin, 1, l("team", "a"), cIn(deny, nil, cNS(l("team", "c")))), nil, pod("y", nil), false},
		{"a new pod in a namespaces peer", cnp("c", admin, 1, l("team", "a"), cIn(deny, nil, cNS(l("team", "b")))), nil, pod("y", nil), true},
		{"a relabel in a namespaces peer", cnp("c", admin, 1, l("team", "a"), cIn(deny, nil, cNS(l("team", "b")))), pod("y", l("v", "1")), pod("y", l("v", "2")), false},
		{"a relabel into a pods peer", cnp("c", admin, 1, l("team", "a"), cOut(deny, nil, cPods(l("app", "b"), l("team", "b")))), pod("y", l("app", "c")), pod("y", l("app", "b")), true},
		{"a relabel that keeps a pods peer match", cnp("c", admin, 1, l("team", "a"), cOut(deny, nil, cPods(l("app", "b"), l("team", "b")))), pod("y", l("app", "b", "v", "1")), pod("y", l("app", "b", "v", "2")), false},
		{"a relabel out of a pods subject", cnp("c", admin, 1, nil, subjectPodsOf(l("app", "a"), l("team", "a"))), pod("x", l("app", "a")), pod("x", l("app", "z")), true},
		{"a relabel within a namespaces subject", cnp("c", admin, 1, l("team", "a")), pod("x", l("app", "a")), pod("x", l("app", "z")), false},
		{"a deleted pod of a networks-only policy's other namespace", cnp("c", admin, 1, l("team", "a"), cOut(deny, nil, cNets("10.0.0.0/8"))), pod("y", nil), nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.new
			if p == nil {
				p = tc.old
			}
			if got := affectsCluster(tc.policy, tc.old, tc.new, ns[p.Namespace], metav1.LabelSelectorAsSelector); got != tc.want {
				t.Fatalf("affectsCluster = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestSelectorCacheParsesEachSelectorOnce: a selector is parsed on first use and its
// parse (or its error) is returned for the same address until reset.
func TestSelectorCacheParsesEachSelectorOnce(t *testing.T) {
	var c selectorCache
	good := &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}
	bad := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: "Near"}}}
	first, err := c.parse(good)
	if err != nil || !first.Matches(labels.Set{"tier": "web"}) || first.Matches(labels.Set{"tier": "db"}) {
		t.Fatalf("parse(%v) = %v, %v", good, first, err)
	}
	if again, _ := c.parse(good); len(c.parsed) != 1 || !again.Matches(labels.Set{"tier": "web"}) {
		t.Errorf("parsing the same selector again holds %d parses", len(c.parsed))
	}
	if _, err := c.parse(bad); err == nil {
		t.Error("a malformed selector parsed")
	}
	if _, err := c.parse(bad); err == nil {
		t.Error("a malformed selector's error was not remembered")
	}
	if len(c.parsed) != 2 {
		t.Errorf("two selectors hold %d parses", len(c.parsed))
	}
	c.reset()
	if len(c.parsed) != 0 {
		t.Error("reset kept the parses")
	}
}
