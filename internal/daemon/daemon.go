package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Notifier sends sd_notify(3) messages. The real one is SystemdNotifier; tests use a
// real NOTIFY_SOCKET listener through the same code.
type Notifier interface {
	// Notify sends state ("READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1").
	Notify(state string) error
	// WatchdogInterval returns how often systemd expects WATCHDOG=1, or 0 if the
	// watchdog is off.
	WatchdogInterval() time.Duration
}

// Options configure a Daemon.
type Options struct {
	// HealthListen and MetricsListen are host:port; empty disables the listener.
	HealthListen  string
	MetricsListen string
	// PprofListen is host:port for Go's runtime profiles (/debug/pprof/) on a
	// listener of their own; empty, the default, serves none.
	PprofListen string
	// StallTimeout is how long a controller loop may go without beating before it
	// counts as stuck.
	StallTimeout time.Duration
	// StopTimeout bounds how long Run waits for controllers to return after ctx ends.
	StopTimeout time.Duration
	// StatusInterval is how often STATUS= is refreshed (default 10s).
	StatusInterval time.Duration
	Notifier       Notifier
	// BeforeControllers, if set, runs after the health and metrics listeners are up
	// and before any controller starts (the daemon starts and syncs informers here).
	BeforeControllers func(ctx context.Context) error
	// Registry receives the daemon's own metrics and is served on /metrics.
	Registry *prometheus.Registry
}

// Daemon supervises the controllers: it runs them under one context, reports to
// systemd, and serves health, status and metrics.
type Daemon struct {
	opts        Options
	controllers []Controller
	beats       []*Heartbeat
	metrics     *daemonMetrics

	readyOnce sync.Once
	readyCh   chan struct{}

	// Bound listener addresses, set once the servers listen (tests use port 0).
	mu          sync.Mutex
	healthAddr  string
	metricsAddr string
	pprofAddr   string
}

// New returns a daemon for the given controllers.
func New(opts Options, controllers ...Controller) *Daemon {
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 10 * time.Second
	}
	if opts.StatusInterval == 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.StallTimeout == 0 {
		opts.StallTimeout = 2 * time.Minute
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	d := &Daemon{opts: opts, controllers: controllers, readyCh: make(chan struct{})}
	d.metrics = newDaemonMetrics(opts.Registry)
	for _, c := range controllers {
		name := c.Name()
		hb := NewHeartbeat(name, d.checkReady)
		hb.observe = d.metrics.observer(name)
		d.beats = append(d.beats, hb)
	}
	return d
}

// NewRegistry returns a registry with the Go runtime and process collectors, the one
// the daemon serves on /metrics. Beside the usual Go metrics it has the live heap at
// the last GC (go_gc_heap_live_bytes): what the caches really hold, which RSS shows
// only with the collector's headroom and the pages not yet returned; the heap's goal
// (go_gc_heap_goal_bytes); and the GOGC and soft memory limit in force
// (go_gc_gogc_percent, go_gc_gomemlimit_bytes), which CapGCHeadroom sets.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/(heap/live:bytes|heap/goal:bytes|gogc:percent|gomemlimit:bytes)$`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Ready is closed when every controller finished its first full sync.
func (d *Daemon) Ready() <-chan struct{} { return d.readyCh }

// HealthAddr is the bound health listener address ("" until it listens).
func (d *Daemon) HealthAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.healthAddr
}

// MetricsAddr is the bound metrics listener address ("" until it listens).
func (d *Daemon) MetricsAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.metricsAddr
}

// PprofAddr is the bound pprof listener address ("" until it listens, or when off).
func (d *Daemon) PprofAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pprofAddr
}

func (d *Daemon) checkReady() {
	for _, hb := range d.beats {
		if !hb.Status(d.opts.StallTimeout).Ready {
			return
		}
	}
	d.readyOnce.Do(func() {
		slog.Info("all controllers synced; ready")
		d.notify("READY=1")
		d.notify("STATUS=" + d.statusLine())
		close(d.readyCh)
		// The initial lists and first syncs leave garbage several times the live
		// heap, and ran code the changes after them do not: hand those pages back
		// now rather than keep them for minutes.
		go func() {
			debug.FreeOSMemory()
			ReleaseCodePages("first sync")
		}()
	})
}

// Run runs every controller until ctx ends or one of them fails. It never tears the
// dataplane down: on return the kernel keeps what was programmed.
func (d *Daemon) Run(ctx context.Context) error {
	servers, err := d.startServers()
	if err != nil {
		return err
	}
	defer func() {
		for _, s := range servers {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = s.Shutdown(sctx)
			cancel()
		}
	}()

	prepared := d.prepare(ctx)
	if d.opts.BeforeControllers != nil {
		d.notify("STATUS=waiting for the API server")
		if err := d.opts.BeforeControllers(ctx); err != nil {
			prepared()
			return err
		}
	}
	prepared()
	d.notify("STATUS=starting controllers")
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	failed := make(chan error, len(d.controllers))
	var wg sync.WaitGroup
	for i, c := range d.controllers {
		wg.Add(1)
		go func(c Controller, hb *Heartbeat) {
			defer wg.Done()
			err := c.Run(runCtx, hb)
			if err != nil && runCtx.Err() == nil {
				failed <- fmt.Errorf("controller %s: %w", c.Name(), err)
			}
		}(c, d.beats[i])
	}
	if len(d.controllers) == 0 {
		d.checkReady()
	}

	var runErr error
	d.supervise(runCtx, failed, &runErr)

	d.notify("STOPPING=1")
	cancel()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d.opts.StopTimeout):
		slog.Warn("controllers did not stop in time", "timeout", d.opts.StopTimeout)
	}
	return runErr
}

// prepare starts the Prepare of every Preparer and returns a function that waits
// for them all.
func (d *Daemon) prepare(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	for _, c := range d.controllers {
		p, ok := c.(Preparer)
		if !ok {
			continue
		}
		wg.Go(func() {
			start := time.Now()
			if err := p.Prepare(ctx); err != nil {
				slog.Warn("preparing before the informers synced failed; the first sync does it", "controller", c.Name(), "err", err)
				return
			}
			slog.Debug("prepared", "controller", c.Name(), "took", time.Since(start).Round(time.Millisecond))
		})
	}
	return wg.Wait
}

// supervise pings the watchdog while every loop is alive, refreshes STATUS, and
// returns when ctx ends or a controller fails.
func (d *Daemon) supervise(ctx context.Context, failed <-chan error, runErr *error) {
	var watchdog <-chan time.Time
	if iv := d.watchdogInterval(); iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		watchdog = t.C
	}
	status := time.NewTicker(d.opts.StatusInterval)
	defer status.Stop()
	stuckBefore := ""
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-failed:
			slog.Error("controller failed; stopping", "err", err)
			*runErr = err
			return
		case <-status.C:
			d.notify("STATUS=" + d.statusLine())
			d.metrics.update(d.beats, d.opts.StallTimeout)
		case <-watchdog:
			stuck := d.stuckControllers()
			if len(stuck) == 0 {
				d.notify("WATCHDOG=1")
			} else if s := strings.Join(stuck, ","); s != stuckBefore {
				slog.Error("controller loop stuck; withholding systemd watchdog ping", "controllers", s, "stallTimeout", d.opts.StallTimeout)
			}
			stuckBefore = strings.Join(stuck, ",")
		}
	}
}

func (d *Daemon) stuckControllers() []string {
	var stuck []string
	for _, hb := range d.beats {
		if !hb.Alive(d.opts.StallTimeout) {
			stuck = append(stuck, hb.Name())
		}
	}
	return stuck
}

// statusLine is the short human summary systemd shows in `systemctl status`.
func (d *Daemon) statusLine() string {
	if len(d.beats) == 0 {
		return "running with no controllers enabled"
	}
	parts := make([]string, 0, len(d.beats))
	for _, hb := range d.beats {
		s := hb.Status(d.opts.StallTimeout)
		state := "syncing"
		switch {
		case !s.Alive:
			state = "STUCK"
		case s.LastError != "":
			state = "error"
		case s.Ready:
			state = "ok"
		}
		p := s.Name + " " + state
		if s.Summary != "" {
			p += " (" + s.Summary + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, "; ")
}

// Statuses returns a snapshot of every controller, sorted by name.
func (d *Daemon) Statuses() []ControllerStatus {
	out := make([]ControllerStatus, 0, len(d.beats))
	for _, hb := range d.beats {
		out = append(out, hb.Status(d.opts.StallTimeout))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (d *Daemon) notify(state string) {
	if d.opts.Notifier == nil {
		return
	}
	if err := d.opts.Notifier.Notify(state); err != nil {
		slog.Warn("sd_notify failed", "state", strings.SplitN(state, "=", 2)[0], "err", err)
	}
}

func (d *Daemon) watchdogInterval() time.Duration {
	if d.opts.Notifier == nil {
		return 0
	}
	return d.opts.Notifier.WatchdogInterval()
}

func (d *Daemon) startServers() ([]*http.Server, error) {
	var servers []*http.Server
	listen := func(addr string, h http.Handler, set *string, what string) error {
		if addr == "" {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s listener on %s: %w", what, addr, err)
		}
		d.mu.Lock()
		*set = ln.Addr().String()
		d.mu.Unlock()
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, srv)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				slog.Error("http server failed", "listener", what, "err", err)
			}
		}()
		slog.Info("listening", "endpoint", what, "addr", ln.Addr().String())
		return nil
	}
	for _, l := range []struct {
		addr    string
		handler http.Handler
		set     *string
		what    string
	}{
		{d.opts.HealthListen, d.healthHandler(), &d.healthAddr, "health"},
		{d.opts.MetricsListen, d.metricsHandler(), &d.metricsAddr, "metrics"},
		{d.opts.PprofListen, pprofHandler(), &d.pprofAddr, "pprof"},
	} {
		if err := listen(l.addr, l.handler, l.set, l.what); err != nil {
			for _, s := range servers {
				_ = s.Close()
			}
			return nil, err
		}
	}
	return servers, nil
}
