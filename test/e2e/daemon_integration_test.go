//go:build integration

// Package e2e runs the real kube-routerd binary, as systemd would, on test nodes made
// of network namespaces, against a real kube-apiserver.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) {
	testenv.Main(m, func() {
		if builtDir != "" {
			os.RemoveAll(builtDir)
		}
	})
}

// builtDir holds the binary buildDaemon built; TestMain removes it.
var builtDir string

// buildDaemon compiles cmd/kube-routerd once per test process, unless
// KUBEROUTERD_BIN names a binary to test instead (a packaged one, say).
var buildDaemon = sync.OnceValues(func() (string, error) {
	if bin := os.Getenv("KUBEROUTERD_BIN"); bin != "" {
		return bin, nil
	}
	dir, err := os.MkdirTemp("", "kube-routerd-e2e-bin-")
	if err != nil {
		return "", err
	}
	builtDir = dir
	bin := filepath.Join(dir, "kube-routerd")
	out, err := exec.Command("go", "build", "-o", bin, "../../cmd/kube-routerd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// readyTimeout bounds a daemon's first full sync.
const readyTimeout = 90 * time.Second

// daemon is kube-routerd on a namespaced node of this machine, as systemd runs it.
type daemon struct{ *netns.Daemon }

func setupDaemon(t testing.TB, node *netns.Node, rc *rest.Config, extraConfig string) *daemon {
	t.Helper()
	bin, err := buildDaemon()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kubeconfig := node.ForwardAPIServer(t, rc, dir)
	config := filepath.Join(dir, "config.toml")
	text := fmt.Sprintf(`[kubernetes]
kubeconfig = %q
node_name = %q

[service_proxy]
enabled = false   # IPVS is tested in the VM tier: this kernel has none

[routing]
router_id = %q
%s
[pod_network]
cni_config_file = %q   # not the host's /etc/cni/net.d

[logging]
level = "debug"
`, kubeconfig, node.Name, node.IPv4, extraConfig, filepath.Join(dir, "10-kube-routerd.conflist"))
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return &daemon{netns.NewDaemon(t, node, bin, config, 10*time.Second)}
}

// ourState is what kube-routerd programs in a node namespace, with packet counters
// removed so two snapshots compare equal when nothing changed.
func ourState(t testing.TB, n *netns.Node) string {
	t.Helper()
	var b strings.Builder
	counters := regexp.MustCompile(`\[\d+:\d+\]`)
	sc := bufio.NewScanner(strings.NewReader(n.Save(t, "iptables-save", "-t", "filter")))
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, "KUBE-ROUTER") {
			b.WriteString(counters.ReplaceAllString(l, "") + "\n")
		}
	}
	for _, l := range strings.Split(n.Run(t, "ipset", "list", "-n"), "\n") {
		if strings.HasPrefix(l, "KUBE-ROUTER") || strings.HasPrefix(l, "kube-router") {
			b.WriteString("set " + l + "\n")
		}
	}
	b.WriteString(ourRoutes(t, n))
	return b.String()
}

// ourRoutes lists the kernel routes kube-routerd installed (its protocol id).
func ourRoutes(t testing.TB, n *netns.Node) string {
	t.Helper()
	var b strings.Builder
	for _, l := range strings.Split(n.Run(t, "ip", "-4", "route", "show"), "\n") {
		if strings.Contains(l, "proto") && !strings.Contains(l, "proto kernel") && !strings.Contains(l, "proto static") && !strings.Contains(l, "proto boot") {
			b.WriteString("route " + strings.TrimSpace(l) + "\n")
		}
	}
	return b.String()
}

func createDenyPolicy(t *testing.T, cs kubernetes.Interface, ns string) {
	t.Helper()
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "default-deny", Namespace: ns},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(context.Background(), pol, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// createAdmitPolicy makes the pods labelled app=to admit only app=from, on one TCP port.
func createAdmitPolicy(t *testing.T, cs kubernetes.Interface, ns, name, to, from string, port int32) {
	t.Helper()
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(port)
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": to}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": from}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
			}},
		},
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(context.Background(), pol, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonRoutesPoliciesRestartsAndCleansUp runs two kube-routerd nodes: they peer
// over BGP and carry pod traffic, enforce a policy, survive a restart without
// changing the kernel, keep a pod that starts while the daemon is down isolated until
// it is back, and `cleanup` removes what they programmed.
func TestDaemonRoutesPoliciesRestartsAndCleansUp(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	link := netns.NewLink(t)
	nodeA := link.AddNode(t, netns.NodeOptions{Client: cs})
	nodeB := link.AddNode(t, netns.NodeOptions{Client: cs})
	podA := nodeA.AddPod(t, netns.PodOptions{Namespace: ns, Labels: map[string]string{"app": "a"}})
	podB := nodeB.AddPod(t, netns.PodOptions{Namespace: ns, Labels: map[string]string{"app": "b"}})
	podA.Serve(t, netns.TCP, 8080)

	daemonA := setupDaemon(t, nodeA, rc, "")
	daemonB := setupDaemon(t, nodeB, rc, "")
	daemonA.StartReady(readyTimeout)
	daemonB.StartReady(readyTimeout)
	// The soft memory limit follows the heap's goal once the informers have listed.
	if limit := metric(t, nodeA, "go_gc_gomemlimit_bytes"); limit >= math.MaxInt64 {
		t.Errorf("no memory limit at READY (go_gc_gomemlimit_bytes %v)", limit)
	}

	// BGP: each node learns the other's pod CIDR, and pods talk across nodes.
	target := netip.AddrPortFrom(podA.IPv4, 8080)
	testenv.Eventually(t, "pod routes from BGP on both nodes", 60*time.Second, func() bool {
		return strings.Contains(ourRoutes(t, nodeA), nodeB.PodCIDRv4.String()) &&
			strings.Contains(ourRoutes(t, nodeB), nodeA.PodCIDRv4.String())
	})
	podB.ExpectReply(t, netns.TCP, target, podA.Label)

	// kube-routerd status reads the running daemon.
	status := daemonA.Run("status")
	for _, want := range []string{"kube-routerd: ready", "netpol", "routing"} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q:\n%s", want, status)
		}
	}

	// Network policy: default deny for the namespace blocks the cross-node probe.
	createDenyPolicy(t, cs, ns)
	testenv.Eventually(t, "default deny to take effect", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := podB.Probe(ctx, netns.TCP, target)
		return err != nil
	})
	before := ourState(t, nodeA)
	if !strings.Contains(before, "KUBE-ROUTER") {
		t.Fatalf("no policy chains on node A:\n%s", before)
	}
	// The enforced ledger lists node A's pod, and keeps it across the restart.
	ledgerBefore := nodeA.Run(t, "ipset", "list", "KUBE-ROUTER-ENFORCED-4")
	if !strings.Contains(ledgerBefore, "\n"+podA.IPv4.String()+"\n") {
		t.Fatalf("pod %s not in node A's enforced ledger:\n%s", podA.IPv4, ledgerBefore)
	}

	// SIGTERM leaves the dataplane as it was: policy still enforced, routes kept.
	daemonA.Stop()
	if after := ourState(t, nodeA); after != before {
		t.Fatalf("stopping kube-routerd changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	podB.ExpectBlocked(t, netns.TCP, target)

	// A restart converges to the same kernel state without rewriting it.
	daemonA.StartReady(readyTimeout)
	if after := ourState(t, nodeA); after != before {
		t.Fatalf("restarting kube-routerd changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if after := nodeA.Run(t, "ipset", "list", "KUBE-ROUTER-ENFORCED-4"); after != ledgerBefore {
		t.Fatalf("restarting kube-routerd changed the enforced ledger:\nbefore:\n%s\nafter:\n%s", ledgerBefore, after)
	}
	daemonA.Stop()

	// Fail closed: a pod that starts while the daemon is down, in a namespace without
	// policies, stays isolated until the daemon is back and has put it in force.
	late := nodeA.AddPod(t, netns.PodOptions{Namespace: testenv.Namespace(t, cs)})
	late.Serve(t, netns.TCP, 8080)
	lateTarget := netip.AddrPortFrom(late.IPv4, 8080)
	podB.ExpectBlocked(t, netns.TCP, lateTarget)
	daemonA.StartReady(readyTimeout)
	testenv.Eventually(t, "the pod started while the daemon was down to be reachable", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := podB.Probe(ctx, netns.TCP, lateTarget)
		return err == nil
	})
	daemonA.Stop()

	// cleanup removes all of it, and nothing else (the node's own routes stay).
	ownRoutesBefore := nodeA.Run(t, "ip", "-4", "route", "show", "proto", "kernel")
	daemonA.Run("cleanup")
	if left := ourState(t, nodeA); left != "" {
		t.Fatalf("cleanup left:\n%s", left)
	}
	if got := nodeA.Run(t, "ip", "-4", "route", "show", "proto", "kernel"); got != ownRoutesBefore {
		t.Fatalf("cleanup touched the node's own routes:\nbefore:\n%s\nafter:\n%s", ownRoutesBefore, got)
	}
}
