// Package loop is the kit every controller is built from: a Tracker collects what
// changed from informer events, and a Runner coalesces sync requests into a
// bounded-frequency loop. Event handlers mark keys and call Request (cheap, never
// blocks, never touches the kernel); the loop runs the sync at most once per
// MinInterval and at least once per FullInterval, retrying failures with backoff.
package loop

import (
	"context"
	"log/slog"
	"time"
)

// SyncFunc does one sync. full is true for the first sync, the periodic resync and
// retries after an error: it must then compare the whole desired state with the
// kernel, not just what changed since the last sync.
type SyncFunc func(ctx context.Context, full bool) (summary string, err error)

// Heartbeat is where a loop reports liveness and sync results (the daemon's
// supervisor implements it).
type Heartbeat interface {
	Beat()
	SyncDone(full bool, d time.Duration, err error, summary string)
}

// Runner is one controller's sync loop.
type Runner struct {
	Name         string
	Sync         SyncFunc
	MinInterval  time.Duration // shortest gap between two syncs
	FullInterval time.Duration // periodic full resync
	// MaxBackoff caps the retry delay after failed syncs (default 30s).
	MaxBackoff time.Duration
	// BeatInterval is how often the idle loop reports liveness (default 1s).
	BeatInterval time.Duration

	requests chan struct{}
	fullReq  chan struct{}
}

// NewRunner returns a runner; call Request from event handlers and Run from the controller.
func NewRunner(name string, sync SyncFunc, minInterval, fullInterval time.Duration) *Runner {
	return &Runner{
		Name:         name,
		Sync:         sync,
		MinInterval:  minInterval,
		FullInterval: fullInterval,
		requests:     make(chan struct{}, 1),
		fullReq:      make(chan struct{}, 1),
	}
}

// Request asks for an incremental sync soon. It never blocks.
func (r *Runner) Request() {
	select {
	case r.requests <- struct{}{}:
	default:
	}
}

// RequestFull asks for a full sync soon. It never blocks.
func (r *Runner) RequestFull() {
	select {
	case r.fullReq <- struct{}{}:
	default:
	}
}

// Run loops until ctx is done. The first sync is full and runs at once.
func (r *Runner) Run(ctx context.Context, hb Heartbeat) {
	beatEvery := r.BeatInterval
	if beatEvery <= 0 {
		beatEvery = time.Second
	}
	maxBackoff := r.MaxBackoff
	if maxBackoff <= 0 {
		maxBackoff = 30 * time.Second
	}
	beat := time.NewTicker(beatEvery)
	defer beat.Stop()
	fullTimer := time.NewTimer(0) // first sync is full and immediate
	defer fullTimer.Stop()

	var (
		last        time.Time
		backoff     time.Duration
		retryTimer  <-chan time.Time
		pendingFull = false
	)
	for {
		full := false
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			hb.Beat()
			continue
		case <-r.requests:
		case <-r.fullReq:
			full = true
		case <-fullTimer.C:
			full = true
		case <-retryTimer:
			retryTimer = nil
			full = true
		}
		full = full || pendingFull
		// Respect the minimum interval, gathering more requests meanwhile.
		if wait := r.MinInterval - time.Since(last); wait > 0 && !last.IsZero() {
			t := time.NewTimer(wait)
		waitLoop:
			for {
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-beat.C:
					hb.Beat()
				case <-r.requests:
				case <-r.fullReq:
					full = true
				case <-t.C:
					break waitLoop
				}
			}
		}
		// Drain a request that raced with the decision to sync: this sync covers it.
		select {
		case <-r.requests:
		default:
		}
		hb.Beat()
		start := time.Now()
		summary, err := r.Sync(ctx, full)
		d := time.Since(start)
		last = time.Now()
		if ctx.Err() != nil {
			return
		}
		hb.SyncDone(full, d, err, summary)
		if err != nil {
			backoff = min(max(2*backoff, r.MinInterval, 500*time.Millisecond), maxBackoff)
			slog.Error("sync failed, will retry", "controller", r.Name, "full", full, "retryIn", backoff, "err", err)
			retryTimer = time.After(backoff)
			pendingFull = true
			continue
		}
		backoff = 0
		pendingFull = false
		retryTimer = nil
		if full {
			fullTimer.Reset(r.FullInterval)
		}
	}
}
