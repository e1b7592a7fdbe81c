// Package daemon runs kube-routerd's controllers under one context and tells systemd,
// the health endpoints and Prometheus how they are doing.
package daemon

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Controller is one control loop of the daemon (service proxy, network policy, routing).
type Controller interface {
	// Name is a short stable identifier ("proxy", "netpol", "routing").
	Name() string
	// Run programs the dataplane until ctx ends, then returns without tearing the
	// dataplane down (traffic must keep flowing across a restart). It calls hb.Beat on
	// every turn of its loop and hb.SyncDone after each sync.
	Run(ctx context.Context, hb *Heartbeat) error
}

// Preparer is a Controller with work that needs no API objects (reading its kernel
// state back): Prepare runs while the informers list, beside
// Options.BeforeControllers, and Run starts only after both. An error is logged and
// Run goes on; its first sync then does the work itself.
type Preparer interface {
	Prepare(ctx context.Context) error
}

// Heartbeat is how a controller reports liveness and sync results. Safe for
// concurrent use.
type Heartbeat struct {
	name     string
	now      func() time.Time
	lastBeat atomic.Int64 // unix nanos

	mu        sync.Mutex
	synced    bool // a full sync has succeeded at least once
	lastSync  time.Time
	lastDur   time.Duration
	lastErr   error
	summary   string
	syncCount uint64
	errCount  uint64
	onFirst   func()
	observe   func(full bool, d time.Duration, err error)
}

// NewHeartbeat returns a heartbeat for the named controller. onFirstSync runs once,
// after the first successful full sync.
func NewHeartbeat(name string, onFirstSync func()) *Heartbeat {
	h := &Heartbeat{name: name, now: time.Now, onFirst: onFirstSync}
	h.Beat()
	return h
}

// Name is the controller's name.
func (h *Heartbeat) Name() string { return h.name }

// Beat records that the controller's loop is alive.
func (h *Heartbeat) Beat() { h.lastBeat.Store(h.now().UnixNano()) }

// SyncDone records the result of one sync. full says whether it was a full sync; the
// first successful full sync marks the controller ready. summary is a short human
// description of what is programmed ("42 services, 97 endpoints").
func (h *Heartbeat) SyncDone(full bool, d time.Duration, err error, summary string) {
	h.Beat()
	h.mu.Lock()
	h.syncCount++
	h.lastDur = d
	h.lastErr = err
	if err != nil {
		h.errCount++
	} else {
		h.lastSync = h.now()
		if summary != "" {
			h.summary = summary
		}
	}
	first := err == nil && full && !h.synced
	if first {
		h.synced = true
	}
	onFirst := h.onFirst
	h.mu.Unlock()
	if h.observe != nil {
		h.observe(full, d, err)
	}
	if first && onFirst != nil {
		onFirst()
	}
}

// Alive reports whether the loop beat within stall.
func (h *Heartbeat) Alive(stall time.Duration) bool {
	return h.now().Sub(time.Unix(0, h.lastBeat.Load())) <= stall
}

// ControllerStatus is a snapshot of one controller for /readyz and `kube-routerd status`.
type ControllerStatus struct {
	Name          string    `json:"name"`
	Ready         bool      `json:"ready"`
	Alive         bool      `json:"alive"`
	LastBeat      time.Time `json:"lastBeat"`
	LastSync      time.Time `json:"lastSync,omitzero"`
	LastSyncMilli float64   `json:"lastSyncMs"`
	LastError     string    `json:"lastError,omitempty"`
	Syncs         uint64    `json:"syncs"`
	Errors        uint64    `json:"errors"`
	Summary       string    `json:"summary,omitempty"`
}

// Status returns a snapshot; stall decides Alive.
func (h *Heartbeat) Status(stall time.Duration) ControllerStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := ControllerStatus{
		Name:          h.name,
		Ready:         h.synced,
		Alive:         h.Alive(stall),
		LastBeat:      time.Unix(0, h.lastBeat.Load()),
		LastSync:      h.lastSync,
		LastSyncMilli: float64(h.lastDur.Microseconds()) / 1000,
		Syncs:         h.syncCount,
		Errors:        h.errCount,
		Summary:       h.summary,
	}
	if h.lastErr != nil {
		s.LastError = h.lastErr.Error()
	}
	return s
}
