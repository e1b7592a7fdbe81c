package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeController syncs once, then beats until told to hang, and reports whether its
// loop is currently wedged.
type fakeController struct {
	name   string
	hang   atomic.Bool
	synced chan struct{}
}

func newFake(name string) *fakeController {
	return &fakeController{name: name, synced: make(chan struct{})}
}

func (f *fakeController) Name() string { return f.name }

func (f *fakeController) Run(ctx context.Context, hb *Heartbeat) error {
	close(f.synced)
	hb.SyncDone(true, time.Millisecond, nil, "3 things")
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if !f.hang.Load() {
				hb.Beat()
			}
		}
	}
}

func (f *fakeController) Details() any { return map[string]int{"things": 3} }

// explainingFake is a fakeController that serves an endpoint of its own.
type explainingFake struct{ *fakeController }

// Handlers serves an endpoint of the controller's own on the health listener.
func (f explainingFake) Handlers() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{"GET /explain": func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s explains %s", f.name, r.URL.Query().Get("src"))
	}}
}

// notifySocket is a real unixgram NOTIFY_SOCKET, as systemd provides it.
type notifySocket struct {
	conn *net.UnixConn
	msgs chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	s := &notifySocket{conn: conn, msgs: make(chan string, 1000)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(s.msgs)
				return
			}
			s.msgs <- string(buf[:n])
		}
	}()
	return s
}

// next returns the next message, failing after a generous timeout.
func (s *notifySocket) next(t *testing.T) string {
	t.Helper()
	select {
	case m := <-s.msgs:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no sd_notify message arrived")
		return ""
	}
}

// waitFor reads messages until one starts with prefix and returns what came before.
func (s *notifySocket) waitFor(t *testing.T, prefix string) []string {
	t.Helper()
	var before []string
	for {
		m := s.next(t)
		if strings.HasPrefix(m, prefix) {
			return before
		}
		before = append(before, m)
	}
}

func TestSystemdNotifyOrderAndWatchdog(t *testing.T) {
	sock := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "100000") // ping every 50ms
	t.Setenv("WATCHDOG_PID", "")

	proxy, netpol := newFake("proxy"), newFake("netpol")
	d := New(Options{
		HealthListen:   "127.0.0.1:0",
		StallTimeout:   300 * time.Millisecond,
		StatusInterval: time.Hour,
		Notifier:       SystemdNotifier{},
	}, proxy, netpol)
	stop := runDaemon(t, d)

	// READY=1 comes only after both controllers' first full sync, and nothing but
	// STATUS comes before it.
	before := sock.waitFor(t, "READY=1")
	for _, m := range before {
		if !strings.HasPrefix(m, "STATUS=") {
			t.Fatalf("%q sent before READY=1", m)
		}
	}
	select {
	case <-proxy.synced:
	default:
		t.Fatal("READY=1 before proxy synced")
	}
	select {
	case <-netpol.synced:
	default:
		t.Fatal("READY=1 before netpol synced")
	}
	if st := sock.next(t); st != "STATUS=netpol ok (3 things); proxy ok (3 things)" && st != "STATUS=proxy ok (3 things); netpol ok (3 things)" {
		t.Fatalf("status after ready = %q", st)
	}
	sock.waitFor(t, "WATCHDOG=1")

	// A hung loop stops the pings once the stall timeout passes.
	netpol.hang.Store(true)
	time.Sleep(600 * time.Millisecond)
	drain(sock)
	select {
	case m := <-sock.msgs:
		t.Fatalf("got %q while netpol's loop was hung", m)
	case <-time.After(500 * time.Millisecond):
	}
	resp := get(t, "http://"+d.HealthAddr()+"/healthz")
	if !strings.Contains(resp, "stuck: netpol") {
		t.Errorf("/healthz while hung = %q", resp)
	}

	// It resumes when the loop comes back.
	netpol.hang.Store(false)
	sock.waitFor(t, "WATCHDOG=1")

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	sock.waitFor(t, "STOPPING=1")
}

// runDaemon runs d until the returned stop is called or the test ends.
func runDaemon(t *testing.T, d *Daemon) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func drain(s *notifySocket) {
	for {
		select {
		case <-s.msgs:
		default:
			return
		}
	}
}

func TestHealthReadyAndStatusEndpoints(t *testing.T) {
	c := newFake("proxy")
	d := New(Options{HealthListen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0", StallTimeout: time.Minute}, explainingFake{c})
	runDaemon(t, d)
	select {
	case <-d.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("never ready")
	}
	base := "http://" + d.HealthAddr()
	if got := get(t, base+"/healthz"); got != "ok\n" {
		t.Errorf("/healthz = %q", got)
	}
	if got := get(t, base+"/readyz"); got != "[proxy] ok\n" {
		t.Errorf("/readyz = %q", got)
	}
	if got := get(t, base+"/readyz/proxy"); got != "[proxy] ok\n" {
		t.Errorf("/readyz/proxy = %q", got)
	}
	if got := get(t, base+"/explain?src=a/b"); got != "proxy explains a/b" {
		t.Errorf("/explain = %q", got)
	}
	var rep StatusReport
	if err := json.Unmarshal([]byte(get(t, base+"/status")), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Ready || len(rep.Controllers) != 1 || rep.Controllers[0].Summary != "3 things" || rep.Details["proxy"] == nil {
		t.Errorf("status = %+v", rep)
	}
	metrics := get(t, "http://"+d.MetricsAddr()+"/metrics")
	for _, want := range []string{
		`kube_routerd_controller_ready{controller="proxy"} 1`,
		`kube_routerd_sync_duration_seconds_count{controller="proxy",kind="full"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestPprofIsServedOnlyOnItsOwnListenerWhenSet(t *testing.T) {
	off := New(Options{HealthListen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0", StallTimeout: time.Minute}, newFake("proxy"))
	runDaemon(t, off)
	waitReady(t, off)
	if addr := off.PprofAddr(); addr != "" {
		t.Errorf("pprof listens on %s without being asked", addr)
	}
	for _, base := range []string{off.HealthAddr(), off.MetricsAddr()} {
		if code, _ := getStatus(t, "http://"+base+"/debug/pprof/"); code != http.StatusNotFound {
			t.Errorf("%s/debug/pprof/ = %d, want 404", base, code)
		}
	}

	on := New(Options{PprofListen: "127.0.0.1:0", StallTimeout: time.Minute}, newFake("proxy"))
	runDaemon(t, on)
	waitReady(t, on)
	base := "http://" + on.PprofAddr() + "/debug/pprof/"
	if code, body := getStatus(t, base); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ = %d %q, want the index of profiles", code, body)
	}
	if code, body := getStatus(t, base+"goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
		t.Errorf("/debug/pprof/goroutine = %d %q", code, body)
	}
	if code, _ := getStatus(t, base+"profile?seconds=1"); code != http.StatusOK {
		t.Errorf("/debug/pprof/profile = %d, want a CPU profile", code)
	}
}

// waitReady waits until d is ready, which it is only once every listener is up.
func waitReady(t *testing.T, d *Daemon) {
	t.Helper()
	select {
	case <-d.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("never ready")
	}
}

func getStatus(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestNotReadyUntilFirstFullSync(t *testing.T) {
	d := New(Options{StallTimeout: time.Minute}, newFake("a"), newFake("b"))
	d.beats[0].SyncDone(false, 0, nil, "")
	d.beats[1].SyncDone(true, 0, nil, "")
	select {
	case <-d.Ready():
		t.Fatal("ready after only a partial sync of a")
	default:
	}
	d.beats[0].SyncDone(true, 0, context.DeadlineExceeded, "")
	select {
	case <-d.Ready():
		t.Fatal("ready after a failed full sync of a")
	default:
	}
	d.beats[0].SyncDone(true, 0, nil, "")
	select {
	case <-d.Ready():
	default:
		t.Fatal("not ready after both synced")
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestRegistryHasTheLiveHeap: the daemon's registry exports the live heap, which
// the envelope bench and operators read to tell what the caches hold from the
// collector's headroom, and the GOGC the headroom cap sets.
func TestRegistryHasTheLiveHeap(t *testing.T) {
	families, err := NewRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	missing := map[string]bool{"go_gc_heap_live_bytes": true, "go_gc_gogc_percent": true}
	for _, f := range families {
		delete(missing, f.GetName())
	}
	if len(missing) > 0 {
		t.Errorf("the registry lacks %v", missing)
	}
}

// preparingFake is a fakeController that prepares: it records that Prepare began and
// holds it until released.
type preparingFake struct {
	*fakeController
	began, release chan struct{}
}

func (f preparingFake) Prepare(context.Context) error {
	close(f.began)
	<-f.release
	return nil
}

// TestPrepareRunsWhileTheInformersListAndBeforeRun: a Preparer's Prepare runs beside
// BeforeControllers (here it cannot return until Prepare began) and its Run waits
// for Prepare to end.
func TestPrepareRunsWhileTheInformersListAndBeforeRun(t *testing.T) {
	c := preparingFake{fakeController: newFake("netpol"), began: make(chan struct{}), release: make(chan struct{})}
	d := New(Options{HealthListen: "127.0.0.1:0", MetricsListen: "127.0.0.1:0", StallTimeout: time.Minute,
		BeforeControllers: func(ctx context.Context) error {
			select {
			case <-c.began:
				return nil
			case <-time.After(10 * time.Second):
				return errors.New("Prepare did not run beside BeforeControllers")
			}
		}}, c)
	stop := runDaemon(t, d)
	select {
	case <-c.synced:
		t.Fatal("Run started before Prepare ended")
	case <-time.After(100 * time.Millisecond):
	}
	close(c.release)
	select {
	case <-c.synced:
	case <-time.After(10 * time.Second):
		t.Fatalf("Run did not start after Prepare ended (daemon: %v)", stop())
	}
}
