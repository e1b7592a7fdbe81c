//go:build bench

package routing

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"google.golang.org/protobuf/types/known/anypb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

// The benchmark needs a network namespace of its own for the whole process (GoBGP
// dials and listens from any thread), so it re-runs itself under `unshare --net`.
const benchNetnsEnv = "KRT_BENCH_IN_NETNS"

func TestMain(m *testing.M) {
	if os.Getenv(benchNetnsEnv) == "" {
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		cmd := exec.Command("unshare", append([]string{"--net", "--", self}, os.Args[1:]...)...)
		cmd.Env = append(os.Environ(), benchNetnsEnv+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				os.Exit(ee.ExitCode())
			}
			fmt.Fprintln(os.Stderr, "the benchmark needs root and unshare:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	for _, f := range atExit {
		f()
	}
	os.Exit(code)
}

// atExit are run when the benchmarks end: what lives as long as the process, not as
// one call of a benchmark function.
var atExit []func()

const simNodes = 500

// simNode is a simulated node: a GoBGP speaker that peers with the node under test from
// its own loopback address and announces its pod CIDR with a next hop on "sim0".
type simNode struct {
	srv     *server.BgpServer
	addr    netip.Addr // session address, 127.1.x.y
	nextHop netip.Addr // 10.99.x.y, on the link
	podCIDR netip.Prefix
}

func (s *simNode) path() *api.Path {
	nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: s.podCIDR.Addr().String(), PrefixLen: uint32(s.podCIDR.Bits())})
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0})
	nh, _ := anypb.New(&api.NextHopAttribute{NextHop: s.nextHop.String()})
	return &api.Path{Family: familyIPv4, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}
}

// setUpBenchNetns brings up lo and the link of the simulated next hops, once per
// process.
func setUpBenchNetns(b *testing.B) {
	benchNetnsOnce.Do(func() { setUpBenchLinks(b) })
}

var benchNetnsOnce sync.Once

func setUpBenchLinks(b *testing.B) {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		b.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sim0"}, PeerName: "sim1"}
	if err := netlink.LinkAdd(veth); err != nil {
		b.Fatal(err)
	}
	for _, name := range []string{"sim0", "sim1"} {
		l, _ := netlink.LinkByName(name)
		if err := netlink.LinkSetUp(l); err != nil {
			b.Fatal(err)
		}
	}
	addr, _ := netlink.ParseAddr("10.99.255.1/16")
	l, _ := netlink.LinkByName("sim0")
	if err := netlink.AddrAdd(l, addr); err != nil {
		b.Fatal(err)
	}
}

func kernelRouteCount(b *testing.B) int {
	rs, err := route.Netlink{}.Routes()
	if err != nil {
		b.Fatal(err)
	}
	return len(rs)
}

func waitRoutes(b *testing.B, want int) time.Duration {
	start := time.Now()
	deadline := start.Add(2 * time.Minute)
	for kernelRouteCount(b) != want {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %d routes (have %d)", want, kernelRouteCount(b))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func rssMiB(b *testing.B) float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// BenchmarkRoutesFrom500Nodes runs the routing controller (fake API with 501 Nodes,
// real GoBGP, real kernel routes in a private namespace) against 500 simulated nodes.
// Per iteration: every simulated node withdraws its pod CIDR, then announces it again;
// reported are the times until the kernel reflects each.
func setUpBench(b *testing.B) {
	setUpBenchNetns(b)
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	slog.SetDefault(quiet)

	sims := make([]*simNode, simNodes)
	nodes := []k8sruntime.Object{benchNode("self", "127.0.0.1", "10.98.0.0/24")}
	for i := range sims {
		s := &simNode{
			addr:    netip.AddrFrom4([4]byte{127, 1, byte(i / 250), byte(i%250 + 1)}),
			nextHop: netip.AddrFrom4([4]byte{10, 99, byte(i / 250), byte(i%250 + 1)}),
			podCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24),
		}
		sims[i] = s
		nodes = append(nodes, benchNode(fmt.Sprintf("sim-%d", i), s.addr.String(), s.podCIDR.String()))
	}
	cs := fake.NewClientset(nodes...)
	factory := informers.NewSharedInformerFactory(cs, 0)
	cfg := config.Default().Routing
	cfg.Overlay = "never"
	cfg.HoldTime = config.Duration{Duration: 30 * time.Second}
	c, err := New(daemon.Env{Client: cs, Informers: factory, NodeName: "self", Registry: prometheus.NewRegistry()}, cfg, KernelDataplane())
	if err != nil {
		b.Fatal(err)
	}
	// Listen on 127.0.0.1 only: the simulated nodes dial in; our dials to them fail fast.
	c.listenAddress = []string{"127.0.0.1"}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	go c.Run(ctx, daemon.NewHeartbeat("routing", nil))
	for c.Details().(Details).Node == "" {
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	benchEnv.rssBefore = rssMiB(b)

	for _, s := range sims {
		s.srv = server.NewBgpServer(server.LoggerOption(&gobgpLogger{log: quiet}))
		go s.srv.Serve()
		if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: uint32(cfg.ASN), RouterId: s.nextHop.String(), ListenPort: -1}}); err != nil {
			b.Fatal(err)
		}
		if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{Path: s.path()}); err != nil {
			b.Fatal(err)
		}
		err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
			Conf:      &api.PeerConf{NeighborAddress: "127.0.0.1", PeerAsn: uint32(cfg.ASN)},
			Transport: &api.Transport{LocalAddress: s.addr.String(), RemotePort: uint32(cfg.ListenPort)},
			Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: 30, KeepaliveInterval: 10, ConnectRetry: 1}},
		}})
		if err != nil {
			b.Fatal(err)
		}
	}
	benchEnv.firstInstall = waitRoutes(b, simNodes)
	benchEnv.sims = sims
}

// benchEnv is built once per process: go test calls a benchmark several times.
var benchEnv struct {
	once         sync.Once
	sims         []*simNode
	firstInstall time.Duration
	rssBefore    float64
}

func BenchmarkRoutesFrom500Nodes(b *testing.B) {
	benchEnv.once.Do(func() { setUpBench(b) })
	ctx := context.Background()
	sims := benchEnv.sims
	b.ResetTimer()
	var withdraw, install time.Duration
	for range b.N {
		for _, s := range sims {
			if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{Family: familyIPv4, Path: s.path()}); err != nil {
				b.Fatal(err)
			}
		}
		withdraw += waitRoutes(b, 0)
		for _, s := range sims {
			if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{Path: s.path()}); err != nil {
				b.Fatal(err)
			}
		}
		install += waitRoutes(b, simNodes)
	}
	b.StopTimer()
	b.ReportMetric(float64(benchEnv.firstInstall.Milliseconds()), "ms-sessions-start-to-500-routes")
	b.ReportMetric(float64(install.Milliseconds())/float64(b.N), "ms-install-500")
	b.ReportMetric(float64(withdraw.Milliseconds())/float64(b.N), "ms-withdraw-500")
	b.ReportMetric(benchEnv.rssBefore, "MiB-rss-controller")
	b.ReportMetric(rssMiB(b), "MiB-rss-with-500-sim-speakers")
}

func benchNode(name, ip, podCIDR string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{PodCIDRs: []string{podCIDR}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}},
	}
}
