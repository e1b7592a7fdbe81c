package netpol

import (
	"flag"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

const node = "n1"

// fixture is a small cluster: namespaces x (team=a), y (team=b), z; pods on this node
// unless noted.
func fixture() *index {
	idx := newIndex(node)
	for _, ns := range []*Namespace{
		{Name: "x", Labels: map[string]string{"ns": "x", "team": "a"}},
		{Name: "y", Labels: map[string]string{"ns": "y", "team": "b"}},
		{Name: "z", Labels: map[string]string{"ns": "z"}, BetaIngressIsolation: true},
	} {
		idx.Namespaces[ns.Name] = ns
	}
	pod := func(ns, name, ip, nodeName string, labels map[string]string, ports ...NamedPort) {
		idx.SetPod((&Pod{Namespace: ns, Name: name, Labels: labels, NodeName: nodeName,
			IPs: []netip.Addr{netip.MustParseAddr(ip)}}).WithPorts(ports))
	}
	pod("x", "a", "10.0.1.1", node, map[string]string{"app": "a"},
		NamedPort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}, NamedPort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53})
	pod("x", "b", "10.0.1.2", node, map[string]string{"app": "b", "tier": "web"}, NamedPort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080})
	pod("y", "a", "10.0.2.1", node, map[string]string{"app": "a"}, NamedPort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80})
	pod("y", "c", "10.0.2.3", "n2", map[string]string{"app": "c"})
	pod("z", "a", "10.0.3.1", node, map[string]string{"app": "a"})
	idx.SetPod(&Pod{Namespace: "x", Name: "host", Labels: map[string]string{"app": "a"}, NodeName: node,
		HostNetwork: true, IPs: []netip.Addr{netip.MustParseAddr("192.168.0.10")}})
	return idx
}

func opts() options {
	return options{NodeName: node, Family: 4, MarkBit: defaultMarkBit}
}

// --- policy builders ---

func policy(ns, name string, sel map[string]string, mutate ...func(*networkingv1.NetworkPolicySpec)) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}},
	}
	for _, m := range mutate {
		m(&p.Spec)
	}
	return p
}

func types(ts ...networkingv1.PolicyType) func(*networkingv1.NetworkPolicySpec) {
	return func(s *networkingv1.NetworkPolicySpec) { s.PolicyTypes = ts }
}

func ingress(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) func(*networkingv1.NetworkPolicySpec) {
	return func(s *networkingv1.NetworkPolicySpec) {
		s.Ingress = append(s.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
	}
}

func egress(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) func(*networkingv1.NetworkPolicySpec) {
	return func(s *networkingv1.NetworkPolicySpec) {
		s.Egress = append(s.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
	}
}

func pods(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: l}}
}

func nss(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: l}}
}

func both(podL, nsL map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: podL}, NamespaceSelector: &metav1.LabelSelector{MatchLabels: nsL}}
}

func expr(key string, op metav1.LabelSelectorOperator, values ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}}
}

func block(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func port(proto corev1.Protocol, p intstr.IntOrString, end ...int32) []networkingv1.NetworkPolicyPort {
	np := networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
	if len(end) > 0 {
		np.EndPort = &end[0]
	}
	return []networkingv1.NetworkPolicyPort{np}
}

var (
	tcp  = corev1.ProtocolTCP
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
	l    = func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
)

// apply compiles policies over idx and applies them to fresh fakes.
func apply(t *testing.T, idx *index, o options, policies ...*networkingv1.NetworkPolicy) (*kernel, *iptables.Fake, *ipset.Fake, []*compiledPolicy) {
	t.Helper()
	proto := ipfamily.IPv4
	if o.Family == ipfamily.IPv6 {
		proto = ipfamily.IPv6
	}
	ipt, sets := iptables.NewFake(proto), ipset.NewFake()
	var compiled []*compiledPolicy
	for _, p := range policies {
		compiled = append(compiled, compilePolicy(p, idx, o))
	}
	rec := newWriter(ipt, sets, slog.Default())
	if _, err := rec.Apply(&assemble(compiled, idx, o).Ruleset, true); err != nil {
		t.Fatal(err)
	}
	return readKernel(t, ipt, sets), ipt, sets, compiled
}

// probe is one packet of a reachability check, from and to pod keys or IPs.
type probe struct {
	from, to string
	proto    string
	port     int
	want     bool
}

func addrOf(t *testing.T, idx *index, who string) netip.Addr {
	if a, err := netip.ParseAddr(who); err == nil {
		return a
	}
	ns, name, _ := strings.Cut(who, "/")
	p := idx.Pod(ns, name)
	if p == nil {
		t.Fatalf("no pod %s", who)
	}
	return p.IPs[0]
}

func TestPolicySemantics(t *testing.T) {
	type tc struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		opts     func(*options)
		probes   []probe
		problems int
	}
	tests := []tc{
		{name: "without policies every pod is reachable", probes: []probe{
			{"y/a", "x/a", "tcp", 80, true}, {"x/a", "y/a", "udp", 53, true},
		}},
		{name: "empty podSelector with no rules denies all ingress to the namespace",
			policies: []*networkingv1.NetworkPolicy{policy("x", "deny", nil)},
			probes: []probe{
				{"y/a", "x/a", "tcp", 80, false}, {"x/b", "x/a", "tcp", 80, false},
				{"x/a", "y/a", "tcp", 80, true}, // egress is not isolated
				{"y/a", "z/a", "tcp", 80, true},
			}},
		{name: "podSelector peer allows only matching pods of the policy's namespace on the port",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", l("app", "a"), ingress(port(tcp, intstr.FromInt32(80)), pods(l("app", "b"))))},
			probes: []probe{
				{"x/b", "x/a", "tcp", 80, true}, {"x/b", "x/a", "tcp", 81, false}, {"x/b", "x/a", "udp", 80, false},
				{"y/a", "x/a", "tcp", 80, false}, {"x/a", "x/b", "tcp", 80, true},
			}},
		{name: "namespaceSelector peer allows every pod of matching namespaces, remote ones too",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", nil, ingress(nil, nss(l("team", "b"))))},
			probes: []probe{
				{"y/a", "x/a", "tcp", 80, true}, {"y/c", "x/b", "udp", 9, true}, {"x/b", "x/a", "tcp", 80, false}, {"z/a", "x/a", "tcp", 80, false},
			}},
		{name: "podSelector and namespaceSelector in one peer must both match",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", nil, ingress(nil, both(l("app", "c"), l("team", "b"))))},
			probes:   []probe{{"y/c", "x/a", "tcp", 80, true}, {"y/a", "x/a", "tcp", 80, false}}},
		{name: "ipBlock allows the CIDR but not its except ranges",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", l("app", "a"), ingress(nil, block("203.0.113.0/24", "203.0.113.0/29")))},
			probes:   []probe{{"203.0.113.9", "x/a", "tcp", 80, true}, {"203.0.113.5", "x/a", "tcp", 80, false}, {"198.51.100.1", "x/a", "tcp", 80, false}}},
		{name: "matchExpressions In NotIn Exists DoesNotExist",
			policies: []*networkingv1.NetworkPolicy{
				policy("x", "in", l("app", "a"), ingress(port(tcp, intstr.FromInt32(1)), expr("app", metav1.LabelSelectorOpIn, "b", "q"))),
				policy("x", "notin", l("app", "a"), ingress(port(tcp, intstr.FromInt32(2)), expr("app", metav1.LabelSelectorOpNotIn, "b"))),
				policy("x", "exists", l("app", "a"), ingress(port(tcp, intstr.FromInt32(3)), expr("tier", metav1.LabelSelectorOpExists))),
				policy("x", "dne", l("app", "a"), ingress(port(tcp, intstr.FromInt32(4)), expr("tier", metav1.LabelSelectorOpDoesNotExist))),
			},
			probes: []probe{
				{"x/b", "x/a", "tcp", 1, true}, {"x/b", "x/a", "tcp", 2, false},
				{"x/b", "x/a", "tcp", 3, true}, {"x/b", "x/a", "tcp", 4, false},
			}},
		{name: "named port resolves per target pod",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", nil, ingress(port(tcp, intstr.FromString("http"))))},
			probes: []probe{
				{"y/a", "x/a", "tcp", 80, true}, {"y/a", "x/a", "tcp", 8080, false},
				{"y/a", "x/b", "tcp", 8080, true}, {"y/a", "x/b", "tcp", 80, false},
			}},
		{name: "named port nobody exposes matches nothing and is reported",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", nil, ingress(port(tcp, intstr.FromString("nope"))))},
			probes:   []probe{{"y/a", "x/a", "tcp", 80, false}}, problems: 1},
		{name: "unsupported protocol never opens traffic",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", nil, ingress(port("ICMP", intstr.FromInt32(1))))},
			probes:   []probe{{"y/a", "x/a", "tcp", 1, false}}, problems: 1},
		{name: "endPort allows a range on its protocol",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", nil, ingress(port(tcp, intstr.FromInt32(1000), 2000)))},
			probes: []probe{
				{"y/a", "x/a", "tcp", 1000, true}, {"y/a", "x/a", "tcp", 2000, true},
				{"y/a", "x/a", "tcp", 2001, false}, {"y/a", "x/a", "udp", 1500, false},
			}},
		{name: "SCTP ports",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", nil, ingress(port(sctp, intstr.FromInt32(9))))},
			probes:   []probe{{"y/a", "x/a", "sctp", 9, true}, {"y/a", "x/a", "tcp", 9, false}}},
		{name: "replies and the node itself pass a default deny",
			policies: []*networkingv1.NetworkPolicy{policy("x", "deny", nil, types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))},
			probes:   nil},
		{name: "egress default deny isolates only egress",
			policies: []*networkingv1.NetworkPolicy{policy("x", "deny", nil, types(networkingv1.PolicyTypeEgress))},
			probes:   []probe{{"x/a", "y/a", "tcp", 80, false}, {"y/a", "x/a", "tcp", 80, true}, {"x/a", "203.0.113.1", "udp", 53, false}}},
		{name: "policyTypes omitted with egress rules isolates both directions",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", l("app", "a"), egress(port(udp, intstr.FromInt32(53)), nss(l("team", "b"))))},
			probes: []probe{
				{"x/a", "y/a", "udp", 53, true}, {"x/a", "y/a", "tcp", 53, false}, {"x/a", "x/b", "udp", 53, false},
				{"y/a", "x/a", "tcp", 80, false},
			}},
		{name: "egress named port resolves on the destination pods",
			policies: []*networkingv1.NetworkPolicy{policy("y", "p", l("app", "a"), types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromString("http")), nss(l("ns", "x"))))},
			probes:   []probe{{"y/a", "x/a", "tcp", 80, true}, {"y/a", "x/b", "tcp", 8080, true}, {"y/a", "x/b", "tcp", 80, false}}},
		{name: "egress named port to an ipBlock resolves on the pods inside it",
			policies: []*networkingv1.NetworkPolicy{policy("y", "p", l("app", "a"), types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromString("http")), block("10.0.0.0/16", "10.0.1.2/32")))},
			probes: []probe{
				{"y/a", "x/a", "tcp", 80, true}, {"y/a", "x/a", "tcp", 8080, false}, {"y/a", "x/a", "udp", 80, false},
				{"y/a", "x/b", "tcp", 8080, false}, // in the except
				{"y/a", "z/a", "tcp", 80, false},   // exposes no such port
				{"y/a", "10.0.9.9", "tcp", 80, false},
			}},
		{name: "egress named port to selector and ipBlock peers allows each peer's own ports",
			policies: []*networkingv1.NetworkPolicy{policy("y", "p", l("app", "a"), types(networkingv1.PolicyTypeEgress),
				egress(port(tcp, intstr.FromString("http")), both(l("app", "b"), l("ns", "x")), block("10.0.1.0/24", "10.0.1.2/32")))},
			probes: []probe{
				{"y/a", "x/b", "tcp", 8080, true}, // the selector's, though in the block's except
				{"y/a", "x/a", "tcp", 80, true},   // the block's
				{"y/a", "x/a", "tcp", 8080, false}, {"y/a", "x/b", "tcp", 80, false},
			}},
		{name: "egress ipBlock to anywhere but one range",
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", l("app", "a"), types(networkingv1.PolicyTypeEgress), egress(nil, block("0.0.0.0/0", "10.0.0.0/8")))},
			probes:   []probe{{"x/a", "203.0.113.1", "tcp", 443, true}, {"x/a", "y/a", "tcp", 80, false}}},
		{name: "policies are a union",
			policies: []*networkingv1.NetworkPolicy{
				policy("x", "from-b", l("app", "a"), ingress(nil, pods(l("app", "b")))),
				policy("x", "from-y", l("app", "a"), ingress(nil, nss(l("ns", "y")))),
			},
			probes: []probe{{"x/b", "x/a", "tcp", 80, true}, {"y/a", "x/a", "tcp", 80, true}, {"z/a", "x/a", "tcp", 80, false}}},
		{name: "allow-all rule overrides a default deny",
			policies: []*networkingv1.NetworkPolicy{policy("x", "deny", nil), policy("x", "all", nil, ingress(nil))},
			probes:   []probe{{"z/a", "x/a", "tcp", 80, true}, {"203.0.113.1", "x/b", "udp", 5, true}}},
		{name: "host-network pods are not policed",
			policies: []*networkingv1.NetworkPolicy{policy("x", "deny", nil)},
			probes:   []probe{{"y/a", "192.168.0.10", "tcp", 80, true}}},
		{name: "beta namespace annotation isolates ingress when enabled",
			opts:   func(o *options) { o.BetaNamespaceIsolation = true },
			probes: []probe{{"x/a", "z/a", "tcp", 80, false}, {"z/a", "x/a", "tcp", 80, true}}},
		{name: "beta namespace annotation is ignored when disabled",
			probes: []probe{{"x/a", "z/a", "tcp", 80, true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			idx := fixture()
			o := opts()
			if tc.opts != nil {
				tc.opts(&o)
			}
			k, _, _, compiled := apply(t, idx, o, tc.policies...)
			problems := 0
			for _, c := range compiled {
				problems += len(c.Problems)
			}
			if problems != tc.problems {
				t.Errorf("got %d problems, want %d", problems, tc.problems)
			}
			probes := tc.probes
			// Replies and the node's own traffic always pass.
			probes = append(probes,
				probe{"y/a", "x/a", "tcp", 80, true},
				probe{"x/a", "y/a", "tcp", 80, true},
			)
			for i, p := range probes {
				pk := packet{src: addrOf(t, idx, p.from), dst: addrOf(t, idx, p.to), proto: p.proto, dport: p.port}
				if i >= len(tc.probes) {
					pk.established = true
				}
				if got := k.allowed(t, pk); got != p.want {
					t.Errorf("%s -> %s %s/%d (established=%v): allowed=%v, want %v", p.from, p.to, p.proto, p.port, pk.established, got, p.want)
				}
				// The same connection made to a Service VIP: IPVS sends it to the
				// backend through OUTPUT, with the client's address as source.
				if got := k.allowedOut(t, pk); got != p.want {
					t.Errorf("%s -> %s %s/%d (established=%v) through a Service: allowed=%v, want %v", p.from, p.to, p.proto, p.port, pk.established, got, p.want)
				}
			}
			for _, to := range []string{"x/a", "x/b", "y/a", "z/a"} {
				pk := packet{src: netip.MustParseAddr("192.168.0.10"), dst: addrOf(t, idx, to), proto: "tcp", dport: 8080, srcLocal: true}
				if !k.allowed(t, pk) {
					t.Errorf("node -> %s was dropped", to)
				}
				if !k.allowedOut(t, pk) {
					t.Errorf("node -> %s was dropped in OUTPUT (directly or through a Service)", to)
				}
			}
		})
	}
}

// Neighbour discovery passes isolated pods as ARP does, but only on the link; router
// discovery and ICMPv6 errors about no allowed connection stay under policy.
func TestIPv6NeighbourDiscoveryPassesIsolation(t *testing.T) {
	idx := newIndex(node)
	for _, ns := range []string{"x", "y"} {
		idx.Namespaces[ns] = &Namespace{Name: ns}
	}
	a, b := mustAddr("fd00:10::a"), mustAddr("fd00:10::b")
	idx.SetPod(&Pod{Namespace: "x", Name: "a", NodeName: node, IPs: []netip.Addr{mustAddr("10.0.1.1"), a}})
	idx.SetPod(&Pod{Namespace: "y", Name: "b", NodeName: node, IPs: []netip.Addr{mustAddr("10.0.2.1"), b}})
	o := opts()
	o.Family = 6
	both := types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)
	k, _, _, _ := apply(t, idx, o, policy("x", "deny", nil, both), policy("y", "deny", nil, both))

	solicitedNode := mustAddr("ff02::1:ff00:b")
	icmp := func(typ int, src, dst netip.Addr, hopLimit int) packet {
		return packet{src: src, dst: dst, proto: "ipv6-icmp", icmpType: typ, hopLimit: hopLimit}
	}
	related := icmp(2, b, a, 64)
	related.established = true
	for _, tc := range []struct {
		name string
		p    packet
		want bool
	}{
		{"multicast neighbour solicitation", icmp(135, a, solicitedNode, 255), true},
		{"unicast neighbour solicitation (reachability probe)", icmp(135, a, b, 255), true},
		{"neighbour advertisement", icmp(136, b, a, 255), true},
		{"neighbour advertisement that was routed", icmp(136, b, a, 254), false},
		{"router solicitation", icmp(133, a, mustAddr("ff02::2"), 255), false},
		{"router advertisement from a pod", icmp(134, b, a, 255), false},
		{"packet too big about no allowed connection", icmp(2, b, a, 64), false},
		{"packet too big about an allowed connection", related, true},
		{"echo request", icmp(128, a, b, 64), false},
		{"TCP", packet{src: a, dst: b, proto: "tcp", dport: 80, hopLimit: 64}, false},
	} {
		if got := k.allowed(t, tc.p); got != tc.want {
			t.Errorf("%s: allowed=%v, want %v", tc.name, got, tc.want)
		}
		if got := k.allowedOut(t, tc.p); got != tc.want {
			t.Errorf("%s in OUTPUT (what IPVS forwards): allowed=%v, want %v", tc.name, got, tc.want)
		}
	}
}

// A named port that matches nothing is reported where that is true: ingress names on
// this node's targets, egress names on the rule's destinations.
func TestNamedPortProblems(t *testing.T) {
	httpFrom := func(ns string, sel map[string]string, name string) *networkingv1.NetworkPolicy {
		return policy(ns, "p", sel, ingress(port(tcp, intstr.FromString(name))))
	}
	httpTo := func(name string, peers ...networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
		return policy("y", "p", l("app", "a"), types(networkingv1.PolicyTypeEgress), egress(port(tcp, intstr.FromString(name)), peers...))
	}
	for _, tc := range []struct {
		name   string
		node   string
		policy *networkingv1.NetworkPolicy
		want   string
	}{
		{"ingress name a local target exposes", node, httpFrom("x", l("app", "a"), "http"), ""},
		{"ingress name on a node without targets", "n2", httpFrom("x", l("app", "a"), "http"), ""},
		{"ingress name no local target exposes", node, httpFrom("x", l("app", "a"), "nope"),
			"ingress rule 0 port 0: no target on this node exposes named port TCP/nope (matches nothing yet)"},
		{"ingress name the node's only target lacks", "n2", httpFrom("y", l("app", "c"), "http"),
			"ingress rule 0 port 0: no target on this node exposes named port TCP/http (matches nothing yet)"},
		{"egress name pods inside the ipBlock expose", node, httpTo("http", block("10.0.1.0/24")), ""},
		{"egress name no pod inside the ipBlock exposes", node, httpTo("http", block("10.0.3.0/24")),
			"egress rule 0 port 0: no peer pod exposes named port TCP/http (matches nothing yet)"},
		{"egress name no pod exposes", node, httpTo("nope"),
			"egress rule 0 port 0: no pod exposes named port TCP/nope (matches nothing yet)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := opts()
			o.NodeName = tc.node
			got := strings.Join(compilePolicy(tc.policy, fixture(), o).Problems, "\n")
			if got != tc.want {
				t.Errorf("problems:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

func TestGolden(t *testing.T) {
	idx := fixture()
	o := opts()
	o.LogDrops, o.NFLOGGroup, o.LogRatePerMinute = true, 100, 10
	o.BetaNamespaceIsolation = true
	_, ipt, sets, _ := apply(t, idx, o,
		policy("x", "web", l("app", "a"),
			ingress(port(tcp, intstr.FromString("http")), pods(l("app", "b")), nss(l("team", "b"))),
			ingress(port(udp, intstr.FromInt32(5000), 5100), block("203.0.113.0/24", "203.0.113.0/29"))),
		policy("y", "egress", nil, types(networkingv1.PolicyTypeEgress),
			egress(port(sctp, intstr.FromInt32(9)), both(l("app", "a"), l("ns", "x")))),
	)
	got := ipt.Dump() + "\n" + sets.Dump()
	path := filepath.Join("testdata", "golden.txt")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("dump differs from %s (run with -update to accept):\n%s", path, got)
	}
}

// Policies that admit the same peers share one set; a different peer gets its own.
func TestPoliciesWithTheSamePeersShareASet(t *testing.T) {
	idx, o := fixture(), opts()
	d := compileAll(idx, o, []*networkingv1.NetworkPolicy{
		policy("x", "one", l("app", "a"), ingress(nil, pods(l("app", "b")))),
		policy("x", "two", l("app", "a"), ingress(port(tcp, intstr.FromInt32(80)), pods(l("app", "b")))),
		policy("y", "three", nil, ingress(nil, pods(l("app", "b")))), // another namespace: other pods
	})
	var peerSets []string
	for _, s := range d.Sets {
		if strings.HasPrefix(s.Name, chainPrefix+peerSetKind+"-") {
			peerSets = append(peerSets, s.Name)
		}
	}
	if len(peerSets) != 2 {
		t.Fatalf("peer sets %v; want one shared by x/one and x/two, one for y/three", peerSets)
	}
	users := 0
	for _, c := range d.Chains {
		for _, r := range c.Rules {
			if strings.Contains(r, "--match-set "+peerSets[0]+" ") || strings.Contains(r, "--match-set "+peerSets[1]+" ") {
				users++
			}
		}
	}
	if users != 3 {
		t.Errorf("%d rules match a peer set; want 3", users)
	}
}

func TestSaveOrder(t *testing.T) {
	for in, want := range map[string]string{
		`-m comment --comment "x/a ingress/0" -s 10.0.0.0/8 -m set ! --match-set S src -p udp -m udp --dport 53 -j MARK --set-xmark 0x1/0x1`: `-s 10.0.0.0/8 -p udp -m comment --comment "x/a ingress/0" -m set ! --match-set S src -m udp --dport 53 -j MARK --set-xmark 0x1/0x1`,
		`-m comment --comment "a b" -d 10.0.0.1/32 -j X`: `-d 10.0.0.1/32 -m comment --comment "a b" -j X`,
		`-m comment --comment "-p not an option" -j X`:   `-m comment --comment "-p not an option" -j X`,
		`-j X`: `-j X`,
	} {
		if got := saveOrder(in); got != want {
			t.Errorf("saveOrder(%s)\n = %s\nwant %s", in, got, want)
		}
	}
}

// TestPodTrafficToTheNode: what a local pod sends to the node's own addresses goes
// through INPUT, where its egress policies apply; replies to the node's connections
// and what IPVS serves (left to IPVS, policed on OUTPUT) pass.
func TestPodTrafficToTheNode(t *testing.T) {
	nodeAddr := mustAddr("192.168.0.10")
	noEgress := policy("x", "b-no-egress", l("app", "b"), types(networkingv1.PolicyTypeEgress))
	toNodeSSH := policy("x", "b-to-node-ssh", l("app", "b"), types(networkingv1.PolicyTypeEgress),
		egress(port(tcp, intstr.FromInt32(22)), block("192.168.0.10/32")))
	for _, tc := range []struct {
		name     string
		ledger   bool
		policies []*networkingv1.NetworkPolicy
		p        packet
		want     bool
	}{
		{"not isolated", false, p(noEgress), packet{src: mustAddr("10.0.1.1"), dst: nodeAddr, proto: "tcp", dport: 22}, true},
		{"egress isolated", false, p(noEgress), packet{src: mustAddr("10.0.1.2"), dst: nodeAddr, proto: "tcp", dport: 22}, false},
		{"reply to the node's connection", false, p(noEgress), packet{src: mustAddr("10.0.1.2"), dst: nodeAddr, proto: "tcp", dport: 40000, established: true}, true},
		{"ipBlock allows the node's address", false, p(toNodeSSH), packet{src: mustAddr("10.0.1.2"), dst: nodeAddr, proto: "tcp", dport: 22}, true},
		{"but not another port", false, p(toNodeSSH), packet{src: mustAddr("10.0.1.2"), dst: nodeAddr, proto: "tcp", dport: 23}, false},
		{"a NodePort IPVS serves is left to IPVS", true, p(noEgress), packet{src: mustAddr("10.0.1.2"), dst: nodeAddr, proto: "tcp", dport: 30080, served: true}, true},
		{"without the proxy the same port is policed", false, p(noEgress), packet{src: mustAddr("10.0.1.2"), dst: nodeAddr, proto: "tcp", dport: 30080, served: true}, false},
		{"with the proxy, what it does not serve is policed", true, p(noEgress), packet{src: mustAddr("10.0.1.2"), dst: nodeAddr, proto: "tcp", dport: 22}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := opts()
			o.ServiceLedger = tc.ledger
			k, _, _, _ := apply(t, fixture(), o, tc.policies...)
			if got := k.allowedIn(t, tc.p); got != tc.want {
				t.Errorf("allowed %v, want %v", got, tc.want)
			}
		})
	}
}
