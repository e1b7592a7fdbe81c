//go:build integration

package demo

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// daemonBinary is $KUBEROUTERD_BIN (hack/demo.sh passes bin/kube-routerd), or a fresh
// build of cmd/kube-routerd.
func daemonBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("KUBEROUTERD_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "kube-routerd")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/kube-routerd").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// hostNetwork is the state of the host's own network namespace that the demo must
// leave as it found it.
func hostNetwork(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"ip", "-o", "link", "show"},
		{"ip", "-4", "route", "show", "table", "all"},
		{"ip", "-6", "route", "show", "table", "all"},
	} {
		out, err := exec.Command(args[0], args[1:]...).Output()
		if err != nil {
			t.Fatalf("%s: %v", strings.Join(args, " "), err)
		}
		b.Write(out)
	}
	// Rules and sets of ours only: other programs may change theirs meanwhile.
	for _, args := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"ipset", "list", "-n"}} {
		out, _ := exec.Command(args[0], args[1:]...).Output()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(strings.ToLower(l), "kube-router") {
				b.WriteString(l + "\n")
			}
		}
	}
	// Namespaces this process made.
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), fmt.Sprintf("krt-%d-", os.Getpid())) {
			b.WriteString("netns " + e.Name() + "\n")
		}
	}
	return b.String()
}

// ourRoutes are the routes kube-routerd installed in a node (its protocol, 144).
func ourRoutes(t *testing.T, n *netns.Node) string {
	t.Helper()
	return n.Run(t, "ip", "-4", "route", "show", "proto", "144")
}

// TestDemoPolicyRoutingAndBIRD is scenes 1-5 of `make demo`: a control plane, two
// nodes and an outside BIRD router in network namespaces on the host; BGP between the
// nodes; a default-deny and an allow policy; BIRD learning pod CIDRs and a cluster
// IP and reaching a pod; and the teardown.
func TestDemoPolicyRoutingAndBIRD(t *testing.T) {
	testenv.RequireRoot(t)
	requireBinary(t, "bird", "apt-get install -y bird2")
	n := newNarrator(t, os.Getenv(DemoEnv) == "1")
	hostBefore := hostNetwork(t)
	// Registered first, so it runs last: after every namespace is gone.
	t.Cleanup(func() {
		if after := hostNetwork(t); after != hostBefore {
			t.Errorf("the demo changed the host's network:\nbefore:\n%s\nafter:\n%s", hostBefore, after)
			return
		}
		n.say("The host's own links, routes, kube-router rules and sets are as before the demo, and\nevery network namespace the demo made is gone.")
	})
	bin := daemonBinary(t)
	dir := demoDir(t)
	ctx := context.Background()

	n.scene("1. A real control plane and a small cluster in network namespaces")
	start := time.Now()
	rc, cs := testenv.APIServer(t)
	n.say("kube-apiserver and etcd run on this host's loopback (%s), ready in %s.", rc.Host, time.Since(start).Round(100*time.Millisecond))
	ns := testenv.Namespace(t, cs)
	link := netns.NewLink(t)
	node1 := link.AddNode(t, netns.NodeOptions{Name: "node-1", Client: cs})
	node2 := link.AddNode(t, netns.NodeOptions{Name: "node-2", Client: cs})
	router := link.AddNode(t, netns.NodeOptions{Name: "router"}) // outside the cluster: no Node object
	web := node1.AddPod(t, netns.PodOptions{Name: "web", Namespace: ns, Labels: map[string]string{"app": "web"}})
	frontend := node2.AddPod(t, netns.PodOptions{Name: "frontend", Namespace: ns, Labels: map[string]string{"app": "frontend"}})
	stranger := node2.AddPod(t, netns.PodOptions{Name: "stranger", Namespace: ns, Labels: map[string]string{"app": "stranger"}})
	web.Serve(t, netns.TCP, 8080)
	n.say("Each node is a network namespace whose eth0 sits on one shared L2 segment (%s); each pod is\na namespace on its node's %s bridge. The API server holds the Node and Pod objects a kubelet\nwould have registered:", link.V4, node1.Bridge)
	n.show("api", "kubectl get nodes,pods -o wide", clusterTable(t, cs, ns))

	bird := startBIRD(t, n, router, dir, node1, node2)

	n.say("Every node runs kube-routerd from a config file like this one (node-2's differs only in its name).\nThe service proxy is off here: this host's kernel has no IPVS, so that scene runs in a VM.")
	var daemons []*demoDaemon
	for _, node := range []*netns.Node{node1, node2} {
		cfg := writeDaemonConfig(t, node, rc, filepath.Join(dir, node.Name), fmt.Sprintf(`
[service_proxy]
enabled = false

[routing]
# Announce Service cluster IPs, not just the pod CIDR, to the outside router.
advertise_cluster_ips = true

[[routing.peers]]
address = "%s"   # the BIRD router
asn = 65000
`, router.IPv4))
		if node == node1 {
			n.show(node.Name, "cat "+cfg, readFile(t, cfg))
		}
		daemons = append(daemons, startDaemon(t, node, bin, cfg))
	}
	n.show("node-1", "kube-routerd run --config "+filepath.Join(dir, "node-1", "config.toml")+" &", "")
	n.show("node-2", "kube-routerd run --config "+filepath.Join(dir, "node-2", "config.toml")+" &", "")
	for _, d := range daemons {
		d.ready(90 * time.Second)
	}
	n.say("Both daemons report ready: every controller finished its first full sync.")

	n.scene("2. Routing: the nodes peer over BGP and learn each other's pod CIDR")
	testenv.Eventually(t, "pod routes from BGP on both nodes", 60*time.Second, func() bool {
		return strings.Contains(ourRoutes(t, node1), node2.PodCIDRv4.String()) &&
			strings.Contains(ourRoutes(t, node2), node1.PodCIDRv4.String())
	})
	n.run(node1.NS, bin, "status", "--config", daemons[0].config)
	n.say("The route to node-2's pods, installed by kube-routerd (protocol 144 marks its routes):")
	n.run(node1.NS, "ip", "route", "show", "proto", "144")
	n.say("So a pod on node-2 reaches a pod on node-1 directly, no overlay (both nodes share a subnet):")
	target := netip.AddrPortFrom(web.IPv4, 8080)
	if _, err := n.probe(frontend.NS, netns.TCP, target); err != nil {
		t.Fatalf("frontend cannot reach web across nodes: %v", err)
	}

	n.scene("3. Network policy: default deny, then allow one client")
	n.say("Without a policy every pod reaches web:")
	for _, p := range []*netns.Pod{frontend, stranger} {
		if _, err := n.probe(p.NS, netns.TCP, target); err != nil {
			t.Fatalf("%s cannot reach web before any policy: %v", p.Name, err)
		}
	}
	deny := &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: "default-deny", Namespace: ns},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
	port := intstr.FromInt32(8080)
	allow := &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: "web-from-frontend", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
			}},
		},
	}
	for _, p := range []*networkingv1.NetworkPolicy{deny, allow} {
		n.apply("NetworkPolicy "+p.Name, p)
		if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, "the policies to take effect on node-1", 30*time.Second, func() bool {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := stranger.Probe(c, netns.TCP, target)
		return err != nil
	})
	n.say("node-1 compiled them into iptables chains and ipsets of its own:")
	n.show("node-1", "ipset list -n", node1.Run(t, "ipset", "list", "-n"))
	n.say("frontend is let in, stranger is not:")
	if _, err := n.probe(frontend.NS, netns.TCP, target); err != nil {
		t.Fatalf("the allow policy does not let frontend in: %v", err)
	}
	if r, err := n.probe(stranger.NS, netns.TCP, target); err == nil {
		t.Fatalf("stranger reached web through the default deny (answered by %s)", r.Server)
	}
	n.say("Deleting both policies opens web again:")
	for _, p := range []*networkingv1.NetworkPolicy{deny, allow} {
		n.show("api", "kubectl delete networkpolicy "+p.Name, "")
		if err := cs.NetworkingV1().NetworkPolicies(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, "the policies to be removed on node-1", 30*time.Second, func() bool {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := stranger.Probe(c, netns.TCP, target)
		return err == nil
	})
	if _, err := n.probe(stranger.NS, netns.TCP, target); err != nil {
		t.Fatalf("stranger still blocked after the policies were deleted: %v", err)
	}

	n.scene("4. An outside BGP router (BIRD) learns the pod CIDRs and a cluster IP")
	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	n.apply("Service web", svc)
	created, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := created.Spec.ClusterIP
	n.say("The API server gave it the cluster IP %s.", vip)
	testenv.Eventually(t, "BIRD to learn both pod CIDRs and the cluster IP", 90*time.Second, func() bool {
		out := bird.birdc("show", "route")
		return strings.Contains(out, node1.PodCIDRv4.String()) && strings.Contains(out, node2.PodCIDRv4.String()) &&
			strings.Contains(out, vip+"/32")
	})
	n.show("router", "birdc show protocols", bird.birdc("show", "protocols"))
	n.show("router", "birdc show route", bird.birdc("show", "route"))
	n.say("BIRD put them into the router's kernel table:")
	n.run(router.NS, "ip", "route", "show", "proto", "bird")
	n.say("So the router reaches web directly at its pod address, and web sees the router's own address:")
	r, err := n.probe(router.NS, netns.TCP, target)
	if err != nil {
		t.Fatalf("the router cannot reach web: %v", err)
	}
	if r.Client.Addr() != router.IPv4 {
		t.Errorf("web saw the router as %s, want %s", r.Client.Addr(), router.IPv4)
	}
	n.say("(Packets to the cluster IP %s now reach a node; serving them is the service proxy's job,\nshown with IPVS in the VM scene.)", vip)
	n.say("Each node's view, from kube-routerd status on node-2:")
	n.run(node2.NS, bin, "status", "--config", daemons[1].config)

	n.scene("5. Teardown")
	n.say("Stopping kube-routerd (SIGTERM, as `systemctl stop` sends) leaves the dataplane as it is, so a\nrestart does not interrupt traffic. `kube-routerd cleanup` removes what it programmed, and only that:")
	for i, node := range []*netns.Node{node1, node2} {
		daemons[i].stop()
		n.show(node.Name, "systemctl stop kube-routerd   # here: SIGTERM", "")
		n.run(node.NS, bin, "cleanup", "--config", daemons[i].config)
		left := ourRoutes(t, node)
		for _, l := range strings.Split(node.Save(t, "iptables-save")+node.Run(t, "ipset", "list", "-n"), "\n") {
			if strings.Contains(strings.ToLower(l), "kube-router") {
				left += l + "\n"
			}
		}
		shownLeft := left
		if left == "" {
			shownLeft = "(nothing)"
		}
		n.show(node.Name, "ip route show proto 144; iptables-save | grep KUBE-ROUTER; ipset list -n", shownLeft)
		if left != "" {
			t.Errorf("cleanup on %s left:\n%s", node.Name, left)
		}
	}
	bird.stop()
	n.say("Now the namespaces, the API objects and the control plane go away.")
}

// birdRouter is BIRD running in the router namespace.
type birdRouter struct {
	router *netns.Node
	sock   string
	// stop ends BIRD; later calls do nothing.
	stop func()
}

func startBIRD(t *testing.T, n *narrator, router *netns.Node, dir string, nodes ...*netns.Node) *birdRouter {
	t.Helper()
	conf := filepath.Join(dir, "bird.conf")
	sock := filepath.Join(dir, "bird.ctl")
	var neighbors strings.Builder
	for _, node := range nodes {
		fmt.Fprintf(&neighbors, "protocol bgp %s from k8s_node { neighbor %s as 64512; }\n", strings.ReplaceAll(node.Name, "-", "_"), node.IPv4)
	}
	text := fmt.Sprintf(`router id %s;
protocol device {}
# Put what BGP learned into the kernel.
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }
template bgp k8s_node { local as 65000; ipv4 { import all; export none; }; }
%s`, router.IPv4, neighbors.String())
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	n.say("An outside router, BIRD 2 in its own namespace on the same segment (%s), peers with each node:", router.IPv4)
	n.show("router", "cat "+conf, text)
	cmd := router.Command(context.Background(), "bird", "-c", conf, "-s", sock, "-f")
	logFile, err := os.Create(filepath.Join(dir, "bird.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.show("router", fmt.Sprintf("bird -c %s -s %s &", conf, sock), "")
	b := &birdRouter{router: router, sock: sock, stop: sync.OnceFunc(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logFile.Close()
	})}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bird log:\n%s", testenv.LastLines(readFile(t, logFile.Name()), 30))
		}
		b.stop()
	})
	return b
}

func (b *birdRouter) birdc(args ...string) string {
	out, _ := b.router.Command(context.Background(), "birdc", append([]string{"-s", b.sock}, args...)...).CombinedOutput()
	return string(out)
}

// clusterTable lists Nodes and the namespace's Pods like `kubectl get -o wide`.
func clusterTable(t *testing.T, cs kubernetes.Interface, ns string) string {
	t.Helper()
	ctx := context.Background()
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	lines = append(lines, fmt.Sprintf("%-10s %-16s %s", "NODE", "INTERNAL-IP", "POD-CIDR"))
	for _, node := range nodes.Items {
		ip := ""
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && ip == "" {
				ip = a.Address
			}
		}
		lines = append(lines, fmt.Sprintf("%-10s %-16s %s", node.Name, ip, node.Spec.PodCIDR))
	}
	lines = append(lines, "", fmt.Sprintf("%-10s %-10s %-16s %s", "POD", "NODE", "IP", "LABELS"))
	sort.Slice(pods.Items, func(i, j int) bool { return pods.Items[i].Name < pods.Items[j].Name })
	for _, p := range pods.Items {
		lines = append(lines, fmt.Sprintf("%-10s %-10s %-16s app=%s", p.Name, p.Spec.NodeName, p.Status.PodIP, p.Labels["app"]))
	}
	return strings.Join(lines, "\n")
}

// requireBinary ends the test through testenv.Unavailable when a program is missing.
func requireBinary(t testing.TB, name, hint string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		testenv.Unavailable(t, "%s not found (%s)", name, hint)
	}
}
