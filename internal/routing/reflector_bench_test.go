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
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
)

// meshNodes is the node count of Kubernetes' scalability envelope.
const meshNodes = 5000

// reflectors are the route reflector nodes the node under test is a client of.
var reflectors = []netip.Addr{netip.MustParseAddr("127.2.0.1"), netip.MustParseAddr("127.2.0.2")}

// BenchmarkRoutesFrom5000NodesThroughReflectors runs the routing controller of a route
// reflector client (fake API with 5,003 Nodes, real GoBGP, real kernel routes in a
// private namespace) against two route reflectors, each a BIRD process that holds
// the pod CIDRs of 5,000 other nodes, next hop kept, as it would have them from its
// clients. Reported: from the controller's start to every route in the kernel; per
// iteration, both reflectors withdraw every route, then announce them again; the
// controller's memory; and the UPDATEs it received. BIRD runs in processes of its
// own, so the process's RSS is the controller's (and its fake API's).
func BenchmarkRoutesFrom5000NodesThroughReflectors(b *testing.B) {
	reflectorEnv.once.Do(func() { setUpReflectorBench(b) })
	env := &reflectorEnv
	if env.birds == nil {
		b.Fatal("setting up failed in an earlier run")
	}
	sentBefore := env.sentUpdates(b)
	b.ResetTimer()
	var withdraw, install time.Duration
	for range b.N {
		for _, bird := range env.birds {
			bird.ctl(b, "disable", "sims")
		}
		withdraw += waitRoutesFor(b, 0, 2*time.Minute)
		for _, bird := range env.birds {
			bird.ctl(b, "enable", "sims")
		}
		install += waitRoutesFor(b, meshNodes, 2*time.Minute)
	}
	b.StopTimer()
	// What the process keeps once the garbage of the syncs is returned, as the
	// daemon does at READY.
	debug.FreeOSMemory()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	b.ReportMetric(float64(env.firstInstall.Milliseconds()), "ms-start-to-5000-routes")
	b.ReportMetric(float64(install.Milliseconds())/float64(b.N), "ms-install-5000")
	b.ReportMetric(float64(withdraw.Milliseconds())/float64(b.N), "ms-withdraw-5000")
	b.ReportMetric(env.rssBefore, "MiB-rss-before-sessions")
	b.ReportMetric(env.rssInstalled, "MiB-rss-5000-routes")
	b.ReportMetric(rssMiB(b), "MiB-rss-5000-routes-after-gc")
	b.ReportMetric(float64(mem.HeapInuse)/(1<<20), "MiB-heap-inuse")
	b.ReportMetric(float64(env.sentAtStart), "updates-at-start")
	b.ReportMetric(float64(env.sentUpdates(b)-sentBefore)/float64(b.N), "updates-per-withdraw-and-announce")
}

// reflectorEnv is built once per process: go test calls a benchmark several times.
var reflectorEnv reflectorBench

type reflectorBench struct {
	once                    sync.Once
	birds                   []*reflectorBIRD
	firstInstall            time.Duration
	rssBefore, rssInstalled float64
	sentAtStart             int
}

func setUpReflectorBench(b *testing.B) {
	if _, err := exec.LookPath("bird"); err != nil {
		b.Fatalf("bird not installed (bird2): %v", err)
	}
	setUpBenchNetns(b)
	ctx := context.Background() // the controller and BIRD live as long as the process
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	slog.SetDefault(quiet)

	cfg := config.Default().Routing
	cfg.Overlay = "never"
	cfg.HoldTime = config.Duration{Duration: 30 * time.Second}
	const cluster = "1"
	self := benchNode("self", "127.0.0.1", "10.98.0.0/24")
	self.Annotations = map[string]string{annotationRRClient: cluster}
	nodes := []k8sruntime.Object{self}
	for i, rr := range reflectors {
		n := benchNode(fmt.Sprintf("rr-%d", i), rr.String(), fmt.Sprintf("10.97.%d.0/24", i))
		n.Annotations = map[string]string{annotationRRServer: cluster}
		nodes = append(nodes, n)
	}
	var static strings.Builder
	for i := range meshNodes {
		nextHop := netip.AddrFrom4([4]byte{10, 99, byte(i / 250), byte(i%250 + 1)})
		podCIDR := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24)
		n := benchNode(fmt.Sprintf("node-%d", i), nextHop.String(), podCIDR.String())
		n.Annotations = map[string]string{annotationRRClient: cluster}
		nodes = append(nodes, n)
		fmt.Fprintf(&static, "  route %s via %s;\n", podCIDR, nextHop)
	}
	cs := fake.NewClientset(nodes...)
	factory := informers.NewSharedInformerFactory(cs, 0)
	c, err := New(daemon.Env{Client: cs, Informers: factory, NodeName: "self", Registry: prometheus.NewRegistry()}, cfg, KernelDataplane())
	if err != nil {
		b.Fatal(err)
	}
	c.listenAddress = []string{"127.0.0.1"}
	birds := make([]*reflectorBIRD, len(reflectors))
	for i, rr := range reflectors {
		birds[i] = startReflectorBIRD(b, rr, cfg.ASN, cluster, static.String())
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	runtime.GC()
	env := &reflectorEnv
	env.rssBefore = rssMiB(b)
	start := time.Now()
	go c.Run(ctx, daemon.NewHeartbeat("routing", nil))
	waitRoutesFor(b, meshNodes, 5*time.Minute)
	env.firstInstall = time.Since(start)
	env.rssInstalled = rssMiB(b)
	env.birds = birds
	env.sentAtStart = env.sentUpdates(b)
}

// waitRoutesFor waits until the kernel holds want routes and returns how long it took.
func waitRoutesFor(b *testing.B, want int, limit time.Duration) time.Duration {
	start := time.Now()
	for kernelRouteCount(b) != want {
		if time.Since(start) > limit {
			b.Fatalf("timed out waiting for %d routes (have %d)", want, kernelRouteCount(b))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// sentUpdates sums the route updates and withdrawals the reflectors sent the node
// under test, as BIRD counts them.
func (e *reflectorBench) sentUpdates(b *testing.B) int {
	n := 0
	for _, bird := range e.birds {
		for _, line := range strings.Split(bird.ctlOutput("show", "protocols", "all", "rrclient"), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == "Export" && (f[1] == "updates:" || f[1] == "withdraws:") {
				v, err := strconv.Atoi(f[2])
				if err != nil {
					b.Fatalf("BIRD's export counts: %q", line)
				}
				n += v
			}
		}
	}
	return n
}

// reflectorBIRD is a route reflector node played by BIRD.
type reflectorBIRD struct{ sock string }

// startReflectorBIRD runs BIRD on addr as a route reflector of cluster whose client
// is the node under test, holding the static routes given.
func startReflectorBIRD(b *testing.B, addr netip.Addr, asn int64, cluster, routes string) *reflectorBIRD {
	dir, err := os.MkdirTemp("", "krt-reflector")
	if err != nil {
		b.Fatal(err)
	}
	conf := fmt.Sprintf(`router id %[1]s;
log "%[2]s" all;
protocol device {}
protocol static sims {
  ipv4;
%[3]s}
protocol bgp rrclient {
  local %[1]s as %[4]d;
  neighbor 127.0.0.1 as %[4]d;
  strict bind on;
  rr client;
  rr cluster id %[5]s;
  hold time 30;
  ipv4 { import none; export all; next hop keep; };
}
`, addr, filepath.Join(dir, "bird.log"), routes, asn, cluster)
	path := filepath.Join(dir, "bird.conf")
	if err = os.WriteFile(path, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	r := &reflectorBIRD{sock: filepath.Join(dir, "bird.ctl")}
	cmd := exec.Command("bird", "-c", path, "-s", r.sock, "-f")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	atExit = append(atExit, func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(r.ctlOutput("show", "status"), "Daemon is up and running") {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "bird.log"))
			b.Fatalf("BIRD on %s did not start:\n%s\n%s", addr, &stderr, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

func (r *reflectorBIRD) ctlOutput(args ...string) string {
	out, _ := exec.Command("birdcl", append([]string{"-s", r.sock}, args...)...).CombinedOutput()
	return string(out)
}

// ctl runs a birdcl command that must succeed.
func (r *reflectorBIRD) ctl(b *testing.B, args ...string) {
	out, err := exec.Command("birdcl", append([]string{"-s", r.sock}, args...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "sims:") {
		b.Fatalf("birdcl %v: %v\n%s", args, err, out)
	}
}
