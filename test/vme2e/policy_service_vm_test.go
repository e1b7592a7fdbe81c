//go:build vm

package vme2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestPoliciesApplyThroughAServiceVIP: pods reach a Service whose backend runs on the
// same node. IPVS takes such a connection in INPUT (the VIP is the node's own) and
// sends it to the backend through OUTPUT, never FORWARD, so policy must look there
// too. With a default deny on the namespace and an allow from "good" to the backend,
// "good" is answered through the cluster IP and "bad" is not; a client whose egress is
// denied cannot reach the cluster IP while "good" still can; the node itself (kubelet
// probes, its own connections) still reaches the backend through the cluster IP. The
// same verdicts hold pod to pod without the Service (the FORWARD path).
func TestPoliciesApplyThroughAServiceVIP(t *testing.T) {
	testenv.RequireVM(t)
	bin := daemonBinary(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	node := netns.NewNode(t, netns.NodeOptions{Client: cs})
	backend := node.AddPod(t, netns.PodOptions{Name: "web", Namespace: ns, Labels: map[string]string{"app": "web"}})
	backend.Serve(t, netns.TCP, probeTargetPort)
	clients := []*netns.Pod{
		node.AddPod(t, netns.PodOptions{Name: "good", Namespace: ns, Labels: map[string]string{"role": "good"}}),
		node.AddPod(t, netns.PodOptions{Name: "bad", Namespace: ns, Labels: map[string]string{"role": "bad"}}),
		// Allowed in by the backend's policy, but its own egress is denied.
		node.AddPod(t, netns.PodOptions{Name: "no-egress", Namespace: ns, Labels: map[string]string{"role": "good", "egress": "deny"}}),
	}

	d := newDaemon(t, node, rc, bin, fmt.Sprintf(`
[service_proxy]
cluster_cidrs = [%q]

[routing]
router_id = %q
`, netip.PrefixFrom(node.PodCIDRv4.Addr(), 16).Masked(), node.IPv4))
	t.Logf("READY after %s", d.StartReady(readyTimeout).Round(time.Millisecond))

	vip := createService(t, cs, ns, "web", backend)
	viaVIP := netip.AddrPortFrom(vip, probePort)
	direct := netip.AddrPortFrom(backend.IPv4, probeTargetPort)
	waitIPVS(t, node, viaVIP, backend)

	type source struct {
		label string
		ns    *netns.NS
	}
	sources := []source{{"node " + node.Name, node.NS}}
	for _, c := range clients {
		sources = append(sources, source{c.Name, c.NS})
	}
	// table has a line for each source and target: every source probes the backend
	// through the cluster IP and pods also directly. The node connects with the source
	// address the kernel picks, which for a cluster IP is the cluster IP itself.
	table := func(verdict func(s source, target netip.AddrPort) string) string {
		var out []string
		for _, s := range sources {
			targets := []netip.AddrPort{viaVIP, direct}
			if s.ns == node.NS {
				targets = targets[:1]
			}
			for _, target := range targets {
				out = append(out, fmt.Sprintf("%s -> %s: %s", s.label, target, verdict(s, target)))
			}
		}
		return strings.Join(out, "\n")
	}
	// verdicts is the table as probed now.
	verdicts := func() string {
		return table(func(s source, target netip.AddrPort) string {
			if r, err := s.ns.Probe(context.Background(), netns.TCP, target); err == nil {
				return "answered by " + r.Server
			}
			return "blocked"
		})
	}
	// want is the table when the sources allowed says reach the backend.
	want := func(allowed func(from string) bool) string {
		return table(func(s source, _ netip.AddrPort) string {
			if allowed(s.label) {
				return "answered by " + backend.Name
			}
			return "blocked"
		})
	}
	waitFor := func(step, expected string) {
		t.Helper()
		var got string
		testenv.Eventually(t, step, 2*time.Minute, func() bool {
			got = verdicts()
			if got != expected {
				t.Logf("%s, not yet:\n%s", step, got)
			}
			return got == expected
		})
		t.Logf("%s:\n%s", step, got)
	}

	waitFor("no policy: every client reaches the backend", want(func(string) bool { return true }))

	ctx := context.Background()
	policies := []*networkingv1.NetworkPolicy{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "default-deny", Namespace: ns},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "web-from-good", Namespace: ns},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "good"}}}},
				}},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "deny-egress", Namespace: ns},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"egress": "deny"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			},
		},
	}
	for _, p := range policies {
		if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("policies: only good (and the node) reach the backend", want(func(from string) bool {
		return from == "good" || strings.HasPrefix(from, "node ")
	}))

	// One jump from OUTPUT and INPUT, as from FORWARD, however often the daemon synced.
	filter := node.Save(t, "iptables-save", "-t", "filter")
	for _, chain := range []string{"FORWARD", "OUTPUT", "INPUT"} {
		if n := strings.Count(filter, "-A "+chain+" -m comment --comment \"kube-routerd network policy"); n != 1 {
			t.Errorf("%d network policy jumps in %s, want 1:\n%s", n, chain, filter)
		}
	}

	// Without the policies, everyone is answered again.
	for _, p := range policies {
		if err := cs.NetworkingV1().NetworkPolicies(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("policies deleted: every client reaches the backend again", want(func(string) bool { return true }))
}
