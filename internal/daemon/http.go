package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// StatusReport is what GET /status returns and `kube-routerd status` prints.
type StatusReport struct {
	Ready       bool               `json:"ready"`
	Time        time.Time          `json:"time"`
	Controllers []ControllerStatus `json:"controllers"`
	// Details holds each controller's own view (services, policies, peers), by name.
	Details map[string]any `json:"details,omitempty"`
}

// Report builds the status report, including controller details.
func (d *Daemon) Report() StatusReport {
	r := StatusReport{Time: time.Now(), Controllers: d.Statuses(), Details: map[string]any{}}
	r.Ready = isClosed(d.readyCh)
	for _, c := range d.controllers {
		if sr, ok := c.(StatusReporter); ok {
			r.Details[c.Name()] = sr.Details()
		}
	}
	return r
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// healthHandler serves /healthz (every loop alive), /readyz (every controller synced
// and alive; /readyz/<name> for one), /status (JSON report) and the controllers' own
// endpoints (HandlerProvider).
func (d *Daemon) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if stuck := d.stuckControllers(); len(stuck) > 0 {
			http.Error(w, "stuck: "+strings.Join(stuck, ","), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		d.writeReadiness(w, d.Statuses())
	})
	mux.HandleFunc("GET /readyz/{controller}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("controller")
		for _, s := range d.Statuses() {
			if s.Name == name {
				d.writeReadiness(w, []ControllerStatus{s})
				return
			}
		}
		http.Error(w, "no controller "+name, http.StatusNotFound)
	})
	for _, c := range d.controllers {
		if hp, ok := c.(HandlerProvider); ok {
			for pattern, h := range hp.Handlers() {
				mux.HandleFunc(pattern, h)
			}
		}
	}
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d.Report())
	})
	return mux
}

func (d *Daemon) writeReadiness(w http.ResponseWriter, statuses []ControllerStatus) {
	var b strings.Builder
	ok := true
	for _, s := range statuses {
		state := "ok"
		switch {
		case !s.Alive:
			state, ok = "stuck", false
		case !s.Ready:
			state, ok = "not synced yet", false
		}
		fmt.Fprintf(&b, "[%s] %s\n", s.Name, state)
	}
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprint(w, b.String())
}

func (d *Daemon) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.opts.Registry, promhttp.HandlerOpts{Registry: d.opts.Registry}))
	return mux
}

// pprofHandler serves Go's runtime profiles (net/http/pprof) under /debug/pprof/. It
// runs on a listener of its own that exists only when debug.pprof_listen is set, so
// no other endpoint ever serves them.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
