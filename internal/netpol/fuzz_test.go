package netpol

import (
	"log/slog"
	"net/netip"
	"strconv"
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

// FuzzCompilePolicy compiles a policy with one fuzzed ingress rule (one peer, one port)
// and one well-formed rule, over pods with fuzzed labels and addresses, applies it to
// fake kernels and evaluates packets. It must not panic, every rule must be one
// iptables-restore line, the well-formed rule must keep working, and when the fuzzed
// rule cannot be compiled it must open nothing: its target accepts only what the
// well-formed rule allows.
func FuzzCompilePolicy(f *testing.F) {
	f.Add(uint8(0), "app", "In", "b", "", "", "TCP", "", uint16(80), uint16(0), "tier", "web", "10.0.2.1")
	f.Add(uint8(1), "ns", "NotIn", "x", "", "", "UDP", "dns", uint16(53), uint16(0), "", "", "10.0.2.1")
	f.Add(uint8(2), "", "", "", "10.0.0.0/8", "10.0.1.0/24", "SCTP", "", uint16(1000), uint16(2000), "k", "v", "fd00::1")
	f.Add(uint8(2), "", "", "", "10.0.0.0/33", "", "TCP", "", uint16(80), uint16(0), "", "", "10.0.2.1")
	f.Add(uint8(2), "", "", "", "0.0.0.0/0", "bogus", "TCP", "", uint16(80), uint16(0), "", "", "10.0.2.1")
	f.Add(uint8(2), "", "", "", "::/0", "10.0.0.0/8", "TCP", "", uint16(80), uint16(0), "", "", "10.0.2.1")
	f.Add(uint8(0), "bad key!", "In", "b", "", "", "ICMP", "", uint16(80), uint16(0), "", "", "not-an-ip")
	f.Add(uint8(0), "app", "Exists", "b", "", "", "TCP", "", uint16(443), uint16(80), "a\"b", "c d", "::ffff:10.0.2.9")
	f.Add(uint8(1), "ns", "Gt", "1", "", "", "tcp", "nope", uint16(0), uint16(0), "", "", "")
	f.Add(uint8(3), "", "", "", "", "", "", "http", uint16(0), uint16(0), "", "", "10.0.2.1")

	f.Fuzz(func(t *testing.T, peerKind uint8, selKey, selOp, selVal, cidr, except, proto, namedPort string,
		port, endPort uint16, podLabelKey, podLabelVal, remotePodIP string) {
		idx := newIndex("n1")
		idx.Namespaces["x"] = &Namespace{Name: "x", Labels: map[string]string{"ns": "x"}}
		idx.Namespaces["y"] = &Namespace{Name: "y", Labels: map[string]string{"ns": "y", podLabelKey: podLabelVal}}
		mk := func(ns, name, ip, nodeName string, labels map[string]string, ports ...NamedPort) {
			if p := policedPod(&corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
				Spec:       corev1.PodSpec{NodeName: nodeName},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
			}); p != nil {
				p.WithPorts(ports)
				idx.SetPod(p)
			}
		}
		mk("x", "a", "10.0.1.1", "n1", map[string]string{podLabelKey: podLabelVal, "app": "a"}, NamedPort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80})
		mk("x", "b", "10.0.1.2", "n1", map[string]string{"app": "b"}, NamedPort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080})
		mk("y", "c", remotePodIP, "n2", map[string]string{"app": "c", podLabelKey: podLabelVal}, NamedPort{Name: namedPort, Protocol: corev1.Protocol(proto), Port: int32(port)})

		var peer networkingv1.NetworkPolicyPeer
		sel := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: selKey, Operator: metav1.LabelSelectorOperator(selOp), Values: strings.Split(selVal, ",")},
		}}
		switch peerKind % 4 {
		case 0:
			peer.PodSelector = sel
		case 1:
			peer.NamespaceSelector = sel
		case 2:
			peer.IPBlock = &networkingv1.IPBlock{CIDR: cidr, Except: strings.Split(except, ",")}
		case 3:
			peer.PodSelector, peer.NamespaceSelector = sel, sel
		}
		// The API server only admits ports 1-65535 and an endPort with a numeric port.
		p := networkingv1.NetworkPolicyPort{Protocol: (*corev1.Protocol)(&proto)}
		if namedPort != "" {
			v := intstr.FromString(namedPort)
			p.Port = &v
		} else if port != 0 {
			v := intstr.FromInt32(int32(port))
			p.Port = &v
			if endPort != 0 {
				e := int32(endPort)
				p.EndPort = &e
			}
		}
		tcp := corev1.ProtocolTCP
		wellFormedPort := intstr.FromInt32(9999)
		pol := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "fuzz"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{peer}, Ports: []networkingv1.NetworkPolicyPort{p}},
					{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &wellFormedPort}}},
				},
			},
		}

		for _, family := range ipfamily.Both {
			o := options{NodeName: "n1", Family: family, MarkBit: defaultMarkBit}
			cp := compilePolicy(pol, idx, o)
			d := assemble([]*compiledPolicy{cp}, idx, o)
			for _, c := range d.Chains {
				for _, r := range c.Rules {
					if strings.ContainsAny(r, "\n\r\x00") || strings.Count(r, `"`)%2 != 0 {
						t.Fatalf("rule of %s would break iptables-restore: %q", c.Name, r)
					}
				}
			}
			ipt, sets := iptables.NewFake(family), ipset.NewFake()
			if _, err := newWriter(ipt, sets, slog.Default()).Apply(&d.Ruleset, true); err != nil {
				t.Fatalf("%s: applying the compiled policy: %v", family, err)
			}
			if family == ipfamily.IPv6 {
				continue // the pods are IPv4; compiling for IPv6 only has to hold up
			}
			k := readKernel(t, ipt, sets)
			a, b := netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("10.0.1.2")
			if !k.allowed(t, packet{src: b, dst: a, proto: "tcp", dport: 9999}) {
				t.Fatalf("the well-formed rule stopped working (problems: %q)", cp.Problems)
			}
			if len(cp.Problems) == 0 {
				continue
			}
			sources := []netip.Addr{b, netip.MustParseAddr("10.0.2.1"), netip.MustParseAddr("192.0.2.1")}
			if ip, err := netip.ParseAddr(remotePodIP); err == nil && ip.Unmap().Is4() {
				sources = append(sources, ip.Unmap())
			}
			if pfx, err := netip.ParsePrefix(cidr); err == nil && pfx.Addr().Is4() {
				sources = append(sources, pfx.Addr())
			}
			for _, src := range sources {
				for _, proto := range []string{"tcp", "udp", "sctp"} {
					for _, dport := range []int{80, 8080, 53, int(port), int(endPort)} {
						if src == b && proto == "tcp" && dport == 9999 {
							continue
						}
						if k.allowed(t, packet{src: src, dst: a, proto: proto, dport: dport}) {
							t.Fatalf("rule with problems %q opens %s -> %s %s/%s", cp.Problems, src, a, proto, strconv.Itoa(dport))
						}
					}
				}
			}
		}
	})
}
