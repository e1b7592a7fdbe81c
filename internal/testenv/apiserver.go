package testenv

import (
	"errors"
	"flag"
	"fmt"
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

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// KubeconfigEnv names the environment variable that points tests at an external
// control plane (for example one the VM runner started on the host) instead of
// starting their own.
const KubeconfigEnv = "KUBEROUTERD_TEST_KUBECONFIG"

// The control plane is shared by every test of one test process.
var controlPlane struct {
	mu       sync.Mutex
	mainRan  bool
	started  bool
	cfg      *rest.Config
	err      error
	env      *envtest.Environment
	watchdog *exec.Cmd
	// watchdogPipe is held open for the life of the process: the watchdog acts when it
	// closes. Keeping it referenced here also keeps its finalizer from closing it.
	watchdogPipe *os.File
	startTook    time.Duration
}

// Main runs the tests of a package that uses APIServer and stops the control plane
// afterwards, also on SIGINT/SIGTERM and shortly before `go test -timeout` would kill
// the process. Call it from TestMain: `func TestMain(m *testing.M) { testenv.Main(m) }`.
// afterAll run once the tests are done or interrupted: to remove what the package's
// tests share, such as a binary built once.
func Main(m *testing.M, afterAll ...func()) {
	flag.Parse()
	controlPlane.mu.Lock()
	controlPlane.mainRan = true
	controlPlane.mu.Unlock()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		stopControlPlane()
		for _, f := range afterAll {
			f()
		}
		fmt.Fprintf(os.Stderr, "testenv: stopped the control plane on %v\n", sig)
		os.Exit(128 + int(sig.(syscall.Signal)))
	}()
	// go test's -timeout panics the process without running deferred calls, so stop the
	// control plane just before that; the watchdog covers harder kills.
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, ok := f.Value.(flag.Getter).Get().(time.Duration); ok && d > 20*time.Second {
			time.AfterFunc(d-10*time.Second, stopControlPlane)
		}
	}

	code := m.Run()
	stopControlPlane()
	for _, f := range afterAll {
		f()
	}
	os.Exit(code)
}

// APIServer returns a config and client for the test process's real control plane,
// starting it on first use (about 3 s). Tests share it, so they isolate themselves with
// Namespace and unique names. With KUBEROUTERD_TEST_KUBECONFIG set it uses that
// cluster instead. Without KUBEBUILDER_ASSETS (see hack/kube-bin.sh) the test is
// Unavailable.
func APIServer(t testing.TB) (*rest.Config, kubernetes.Interface) {
	t.Helper()
	cfg := sharedConfig(t)
	cfg = rest.CopyConfig(cfg)
	// Tests create objects in bursts; client-go's default 5 QPS would make them slow.
	cfg.QPS, cfg.Burst = 200, 400
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client for the test control plane: %v", err)
	}
	return cfg, cs
}

// APIServerStartDuration is how long starting the shared control plane took (zero when
// it was not started by this process).
func APIServerStartDuration() time.Duration {
	controlPlane.mu.Lock()
	defer controlPlane.mu.Unlock()
	return controlPlane.startTook
}

func sharedConfig(t testing.TB) *rest.Config {
	t.Helper()
	controlPlane.mu.Lock()
	defer controlPlane.mu.Unlock()
	if path := os.Getenv(KubeconfigEnv); path != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			t.Fatalf("load %s=%s: %v", KubeconfigEnv, path, err)
		}
		return cfg
	}
	if !controlPlane.mainRan {
		t.Fatalf("testenv.APIServer needs `func TestMain(m *testing.M) { testenv.Main(m) }` in this package, " +
			"otherwise etcd and kube-apiserver outlive the test process")
	}
	if !controlPlane.started {
		controlPlane.started = true
		controlPlane.cfg, controlPlane.err = startControlPlane()
	}
	if controlPlane.err != nil {
		if errors.Is(controlPlane.err, errNoAssets) {
			Unavailable(t, "%v", controlPlane.err)
		}
		t.Fatalf("start the test control plane: %v", controlPlane.err)
	}
	return controlPlane.cfg
}

var errNoAssets = errors.New("no kube-apiserver/etcd: set KUBEBUILDER_ASSETS=$(hack/kube-bin.sh)")

// startControlPlane runs with controlPlane.mu held.
func startControlPlane() (*rest.Config, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if assets == "" {
			return nil, errNoAssets
		}
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			return nil, fmt.Errorf("%w (%v)", errNoAssets, err)
		}
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	// Loopback only: without these the apiserver advertises the host's default-route IP
	// and fails to start where there is none (for example inside a network namespace).
	env.ControlPlane.GetAPIServer().Configure().
		Set("advertise-address", "127.0.0.1").
		Set("endpoint-reconciler-type", "none").
		// Room for the benchmarks' 10,000 Services (envtest's default is a /24), and
		// dual-stack Services; single-stack ones stay IPv4 as before.
		Set("service-cluster-ip-range", "10.96.0.0/16,fd00:10:96::/108")
	// A test cluster need not survive a power cut: without fsync etcd takes the
	// benchmarks' hundreds of thousands of writes several times faster.
	env.ControlPlane.Etcd = &envtest.Etcd{}
	env.ControlPlane.Etcd.Configure().Set("unsafe-no-fsync", "true").
		// The whole envelope's 150,000 pods, written twice each, outgrow the default
		// 2 GiB before the API server's compaction frees the old revisions.
		Set("quota-backend-bytes", strconv.Itoa(8<<30))
	start := time.Now()
	cfg, err := env.Start()
	if err != nil {
		_ = env.Stop()
		return nil, fmt.Errorf("envtest start with KUBEBUILDER_ASSETS=%s: %w", assets, err)
	}
	controlPlane.startTook = time.Since(start)
	controlPlane.env = env
	controlPlane.watchdog, controlPlane.watchdogPipe = startWatchdog(childPIDs("etcd", "kube-apiserver"))
	return cfg, nil
}

func stopControlPlane() {
	controlPlane.mu.Lock()
	defer controlPlane.mu.Unlock()
	if controlPlane.watchdog != nil {
		_ = controlPlane.watchdog.Process.Kill()
		_ = controlPlane.watchdog.Wait()
		controlPlane.watchdogPipe.Close()
		controlPlane.watchdog, controlPlane.watchdogPipe = nil, nil
	}
	if controlPlane.env != nil {
		if err := controlPlane.env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stop control plane: %v\n", err)
		}
		controlPlane.env = nil
	}
	controlPlane.cfg = nil
	controlPlane.err = errors.New("the test control plane was stopped")
}

// startWatchdog starts a shell that waits for this process to die (its stdin pipe
// closes, however the process ends) and then kills the given control-plane processes,
// which envtest starts in their own process groups.
func startWatchdog(pids []int) (*exec.Cmd, *os.File) {
	if len(pids) == 0 {
		return nil, nil
	}
	list := make([]string, len(pids))
	for i, p := range pids {
		list[i] = strconv.Itoa(p)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, nil
	}
	pidList := strings.Join(list, " ")
	cmd := exec.Command("/bin/sh", "-c",
		"read -r _; kill -TERM "+pidList+" 2>/dev/null; sleep 5; kill -KILL "+pidList+" 2>/dev/null")
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, nil
	}
	r.Close()
	return cmd, w
}

// ControlPlanePIDs returns the process IDs of the test control plane's etcd and
// kube-apiserver (none before APIServer started them): benchmarks read the CPU they
// spend beside the daemon's.
func ControlPlanePIDs() []int { return childPIDs("etcd", "kube-apiserver") }

// childPIDs returns the PIDs of this process's children whose command name is one of names.
func childPIDs(names ...string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		comm, ppid, ok := parseStat(string(stat))
		if !ok || ppid != self {
			continue
		}
		for _, n := range names {
			if comm == n {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// parseStat extracts the command name and parent PID from a /proc/PID/stat line.
func parseStat(stat string) (comm string, ppid int, ok bool) {
	open, end := strings.IndexByte(stat, '('), strings.LastIndexByte(stat, ')')
	if open < 0 || end < open {
		return "", 0, false
	}
	fields := strings.Fields(stat[end+1:])
	if len(fields) < 2 {
		return "", 0, false
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return "", 0, false
	}
	return stat[open+1 : end], ppid, true
}
