//go:build integration

package routing

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// A routing controller must own its network namespace for good (GoBGP dials and
// listens from goroutines on any thread), so each test node runs the controller in a
// child process started inside the node's namespace. The child reaches the API
// server, which listens on the host's loopback, through a Unix socket the test
// forwards: Unix socket paths are not confined to a network namespace.
const (
	childNodeEnv       = "KRT_ROUTING_CHILD_NODE"
	childConfigEnv     = "KRT_ROUTING_CHILD_CONFIG"
	childKubeconfigEnv = "KRT_ROUTING_CHILD_KUBECONFIG"
	childSocketEnv     = "KRT_ROUTING_CHILD_APISERVER_SOCKET"
	childMetricsEnv    = "KRT_ROUTING_CHILD_METRICS_SOCKET"
)

func TestMain(m *testing.M) {
	if os.Getenv(childNodeEnv) != "" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "routing child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	testenv.Main(m)
}

// runChild runs one node's routing controller until SIGTERM.
func runChild() error {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})))
	cfg, err := config.Load(os.Getenv(childConfigEnv))
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", os.Getenv(childKubeconfigEnv))
	if err != nil {
		return err
	}
	sock := os.Getenv(childSocketEnv)
	rc.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(cs, 0)
	reg := prometheus.NewRegistry()
	env := daemon.Env{Client: cs, Informers: factory, NodeName: os.Getenv(childNodeEnv), Registry: reg}
	c, err := New(env, cfg.Routing, KernelDataplane())
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The test scrapes the controller's registry over a Unix socket, which, unlike a
	// TCP port, it reaches from outside the node's network namespace.
	metricsListener, err := net.Listen("unix", os.Getenv(childMetricsEnv))
	if err != nil {
		return err
	}
	defer metricsListener.Close()
	go func() { _ = http.Serve(metricsListener, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})) }()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	return c.Run(ctx, daemon.NewHeartbeat("routing", nil))
}

// apiForwarder forwards a Unix socket to the API server and writes a kubeconfig for it.
type apiForwarder struct {
	socket, kubeconfig string
}

func forwardAPIServer(t *testing.T, rc *rest.Config) apiForwarder {
	t.Helper()
	dir, err := os.MkdirTemp("", "krt-api")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u, err := url.Parse(rc.Host)
	if err != nil {
		t.Fatal(err)
	}
	f := apiForwarder{socket: filepath.Join(dir, "api.sock"), kubeconfig: filepath.Join(dir, "kubeconfig")}
	l, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", u.Host)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthority: rc.CAFile, CertificateAuthorityData: rc.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{
		ClientCertificate: rc.CertFile, ClientCertificateData: rc.CertData,
		ClientKey: rc.KeyFile, ClientKeyData: rc.KeyData, Token: rc.BearerToken,
	}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, f.kubeconfig); err != nil {
		t.Fatal(err)
	}
	return f
}

// nodeProcess is one node's routing controller running in the node's namespace.
type nodeProcess struct {
	cmd     *exec.Cmd
	log     *syncBuffer
	metrics string // Unix socket of the controller's /metrics
}

// syncBuffer is a log buffer the child writes to while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// scrape returns the controller's metrics by "name{labels}", as the text format
// writes them.
func (p *nodeProcess) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	client := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.metrics)
		},
	}}
	resp, err := client.Get("http://controller/metrics")
	if err != nil {
		return nil // not listening yet
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading metrics: %v", err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func startController(t *testing.T, node *netns.Node, api apiForwarder, configTOML string) *nodeProcess {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfgPath, []byte(configTOML), 0o600); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to 108 bytes, too few for t.TempDir().
	dir, err := os.MkdirTemp("", "krt-metrics")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &nodeProcess{cmd: node.Command(context.Background(), self), log: &syncBuffer{}, metrics: filepath.Join(dir, "metrics.sock")}
	p.cmd.Env = append(os.Environ(),
		childNodeEnv+"="+node.Name, childConfigEnv+"="+cfgPath,
		childKubeconfigEnv+"="+api.kubeconfig, childSocketEnv+"="+api.socket, childMetricsEnv+"="+p.metrics)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting the routing controller of %s: %v", node.Name, err)
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("log of the routing controller of %s:\n%s", node.Name, p.log)
		}
	})
	return p
}

func (p *nodeProcess) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
}

// ourRoutes lists the routes of our protocol in a node's namespace, one per line.
func ourRoutes(t *testing.T, n *netns.Node) string {
	t.Helper()
	out, err := n.Command(context.Background(), "ip", "-4", "route", "show", "proto", "144").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route in %s: %v: %s", n.Name, err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		lines = append(lines, strings.TrimSpace(l))
	}
	return strings.Join(lines, "\n")
}

func routeLine(dst netip.Prefix, via netip.Addr) string {
	return fmt.Sprintf("%s via %s dev eth0", dst, via)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func annotateNode(t *testing.T, cs kubernetes.Interface, name string, ann map[string]string) {
	t.Helper()
	var b strings.Builder
	b.WriteString(`{"metadata":{"annotations":{`)
	first := true
	for k, v := range ann {
		if !first {
			b.WriteString(",")
		}
		first = false
		fmt.Fprintf(&b, "%q:%q", k, v)
	}
	b.WriteString(`}}}`)
	if _, err := cs.CoreV1().Nodes().Patch(context.Background(), name, types.MergePatchType, []byte(b.String()), metav1.PatchOptions{}); err != nil {
		t.Fatalf("annotating node %s: %v", name, err)
	}
}

const meshConfig = `
[routing]
hold_time = "9s"
min_sync_interval = "50ms"
`

func TestFullMeshInstallsPodRoutesAndCarriesPodTraffic(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	api := forwardAPIServer(t, rc)
	link := netns.NewLink(t)
	var nodes []*netns.Node
	var pods []*netns.Pod
	for range 3 {
		n := link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("route"), Client: cs})
		nodes = append(nodes, n)
		pods = append(pods, n.AddPod(t, netns.PodOptions{}))
	}
	var procs []*nodeProcess
	for _, n := range nodes {
		procs = append(procs, startController(t, n, api, meshConfig))
	}

	expected := func(self int, others ...int) string {
		var lines []string
		for _, o := range others {
			lines = append(lines, routeLine(nodes[o].PodCIDRv4, nodes[o].IPv4))
		}
		return strings.Join(lines, "\n")
	}
	waitFor(t, "every node to install the other nodes' pod CIDRs", func() bool {
		return ourRoutes(t, nodes[0]) == expected(0, 1, 2) &&
			ourRoutes(t, nodes[1]) == expected(1, 0, 2) &&
			ourRoutes(t, nodes[2]) == expected(2, 0, 1)
	})

	// Pod to pod across nodes, both directions, through the learned routes.
	for _, pair := range [][2]int{{0, 2}, {2, 1}} {
		from, to := pods[pair[0]], pods[pair[1]]
		srv := to.Serve(t, netns.TCP, 0)
		r := from.ExpectReply(t, netns.TCP, netip.AddrPortFrom(to.IPv4, uint16(srv.Port)), to.Label)
		if r.Client.Addr() != from.IPv4 {
			t.Errorf("%s saw the connection from %s, want the pod address %s", to.Label, r.Client.Addr(), from.IPv4)
		}
	}

	t.Run("an invalid peer annotation is logged with the node name and the mesh keeps working", func(t *testing.T) {
		annotateNode(t, cs, nodes[0].Name, map[string]string{annotationPeerIPs: "192.0.2.1,not-an-ip", annotationPeerASNs: "65000"})
		waitFor(t, "the warning", func() bool {
			return strings.Contains(procs[0].log.String(), "ignoring invalid peer annotations") &&
				strings.Contains(procs[0].log.String(), "node="+nodes[0].Name)
		})
		if got := ourRoutes(t, nodes[0]); got != expected(0, 1, 2) {
			t.Errorf("routes of %s changed after a bad annotation:\n%s", nodes[0].Name, got)
		}
	})

	t.Run("a node that goes away is removed from the mesh and its route withdrawn", func(t *testing.T) {
		procs[2].stop()
		if err := cs.CoreV1().Nodes().Delete(context.Background(), nodes[2].Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the route to the deleted node's pods to go", func() bool {
			return ourRoutes(t, nodes[0]) == expected(0, 1) && ourRoutes(t, nodes[1]) == expected(1, 0)
		})
	})

	t.Run("a restarting node keeps its peers' routes (graceful restart)", func(t *testing.T) {
		procs[1].stop()
		// The session dropped without a NOTIFICATION; node 0 keeps node 1's route as stale.
		waitFor(t, "node 0 to see the session down", func() bool {
			out, _ := nodes[0].Command(context.Background(), "ss", "-tn", "state", "established", "( sport = :179 or dport = :179 )").Output()
			return !strings.Contains(string(out), nodes[1].IPv4.String())
		})
		if got := ourRoutes(t, nodes[0]); got != expected(0, 1) {
			t.Errorf("node 0 dropped routes while node 1 restarts:\n%s", got)
		}
		procs[1] = startController(t, nodes[1], api, meshConfig)
		waitFor(t, "node 1 to be back with both routes", func() bool {
			return ourRoutes(t, nodes[0]) == expected(0, 1) && ourRoutes(t, nodes[1]) == expected(1, 0)
		})
		srv := pods[0].Serve(t, netns.TCP, 0)
		pods[1].ExpectReply(t, netns.TCP, netip.AddrPortFrom(pods[0].IPv4, uint16(srv.Port)), pods[0].Label)
	})
}

func TestBIRDPeerLearnsPodCIDRsAndServiceIPsAndCannotInjectIntoThePodRange(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	api := forwardAPIServer(t, rc)
	ns := testenv.Namespace(t, cs)
	link := netns.NewLink(t)
	n1 := link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("bgp"), Client: cs})
	n2 := link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("bgp"), Client: cs})
	router := link.AddNode(t, netns.NodeOptions{Name: "router"}) // not registered: an outside router
	pod := n1.AddPod(t, netns.PodOptions{Namespace: ns})

	svc, err := cs.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.PrefixFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 32)

	// Inside the first node's pod CIDR: the node must refuse it.
	injected := netip.PrefixFrom(n1.PodCIDRv4.Addr(), 25).Masked()
	outside := netip.MustParsePrefix("172.20.0.0/16")
	bird := netns.StartBIRD(t, router.NS, fmt.Sprintf(`
router id %[1]s;
log stderr all;
protocol device {}
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }
protocol static injected { ipv4; route %[2]s blackhole; route %[3]s blackhole; }
template bgp nodes { local as 65000; hold time 9; ipv4 { import all; export where source = RTS_STATIC; }; }
protocol bgp node1 from nodes { neighbor %[4]s as 64512; }
protocol bgp node2 from nodes { neighbor %[5]s as 64512; }
protocol bgp node1v6 { local as 65000; hold time 9; neighbor %[6]s as 64512; ipv6 { import all; export none; }; }
`, router.IPv4, injected, outside, n1.IPv4, n2.IPv4, n1.IPv6))

	// One node gets its peer from the config, the other from its annotations.
	cfgWithPeer := fmt.Sprintf(`
[routing]
hold_time = "9s"
min_sync_interval = "50ms"
advertise_cluster_ips = true
communities = ["64512:100"]
[[routing.peers]]
address = "%s"
asn = 65000
[[routing.peers]]
address = "%s"
asn = 65000
`, router.IPv4, router.IPv6)
	annotateNode(t, cs, n2.Name, map[string]string{annotationPeerIPs: router.IPv4.String(), annotationPeerASNs: "65000"})
	startController(t, n1, api, cfgWithPeer)
	startController(t, n2, api, meshConfig+"advertise_cluster_ips = true\n")

	waitFor(t, "BIRD to learn both pod CIDRs and the cluster IP", func() bool {
		out := bird.Ctl("show", "route", "protocol", "node1") + bird.Ctl("show", "route", "protocol", "node2")
		return strings.Contains(out, n1.PodCIDRv4.String()) && strings.Contains(out, n2.PodCIDRv4.String()) && strings.Contains(out, vip.String())
	})
	waitFor(t, "BIRD to learn the IPv6 pod CIDR over the IPv6 session, via the node's IPv6 address", func() bool {
		out := bird.Ctl("show", "route", "protocol", "node1v6")
		return strings.Contains(out, n1.PodCIDRv6.String()) && strings.Contains(out, "via "+n1.IPv6.String())
	})
	if out := bird.Ctl("show", "route", "all", n1.PodCIDRv4.String()); !strings.Contains(out, "(64512,100)") {
		t.Errorf("the community is missing on %s at BIRD:\n%s", n1.PodCIDRv4, out)
	}
	waitFor(t, "the nodes to install the router's outside route", func() bool {
		return strings.Contains(ourRoutes(t, n1), routeLine(outside, router.IPv4)) &&
			strings.Contains(ourRoutes(t, n2), routeLine(outside, router.IPv4))
	})
	for _, n := range []*netns.Node{n1, n2} {
		if got := ourRoutes(t, n); strings.Contains(got, injected.String()) {
			t.Errorf("%s accepted %s from the router, inside a pod CIDR:\n%s", n.Name, injected, got)
		}
	}
	// The node's routes are intact: only kube-routerd's own routes carry proto 144 and
	// the pod CIDR is still reached through the bridge.
	inPodRange := injected.Addr().As4()
	inPodRange[3] = 100
	target := netip.AddrFrom4(inPodRange)
	if out := n1.Run(t, "ip", "-4", "route", "get", target.String()); !strings.Contains(out, "dev "+n1.Bridge) {
		t.Errorf("route to %s on %s does not go to the pod bridge: %s", target, n1.Name, out)
	}

	// Traffic from the router's namespace reaches a pod through the BGP-learned route.
	srv := pod.Serve(t, netns.TCP, 0)
	r := router.ExpectReply(t, netns.TCP, netip.AddrPortFrom(pod.IPv4, uint16(srv.Port)), pod.Label)
	if r.Client.Addr() != router.IPv4 {
		t.Errorf("pod saw the router as %s, want %s", r.Client.Addr(), router.IPv4)
	}
	if out := router.Run(t, "ip", "-4", "route", "show", vip.String()); !strings.Contains(out, "via") {
		t.Errorf("router has no route to the cluster IP %s: %q", vip, out)
	}
}
