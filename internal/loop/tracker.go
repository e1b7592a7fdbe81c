package loop

import (
	"context"
	"sync"

	"k8s.io/client-go/tools/cache"
)

// Change is one informer event. Old is nil for an add, New is nil for a delete; a
// deleted object whose final state the informer missed is unwrapped from its tombstone.
type Change struct{ Old, New any }

// Tracker collects what changed between two syncs: the keys of changed objects, or
// "everything" when a change affects every key (kube-proxy's change trackers play
// this part). Events before the first Take are dropped: the first sync is full and
// covers them. Safe for concurrent use.
type Tracker[K comparable] struct {
	request func()

	mu      sync.Mutex
	keys    map[K]struct{}
	all     bool
	started bool
	regs    []cache.ResourceEventHandlerRegistration
}

// NewTracker returns a tracker that calls request (a Runner's Request) after each
// change it records.
func NewTracker[K comparable](request func()) *Tracker[K] {
	return &Tracker[K]{request: request, keys: map[K]struct{}{}}
}

// Watch records, for every event of inf, the keys keysOf returns (none: the event
// does not matter).
func (t *Tracker[K]) Watch(inf cache.SharedIndexInformer, keysOf func(Change) []K) error {
	return t.watch(inf, func(ch Change) bool {
		keys := keysOf(ch)
		for _, k := range keys {
			t.keys[k] = struct{}{}
		}
		return len(keys) > 0
	})
}

// WatchAll records "everything changed" for every event of inf that affects reports.
func (t *Tracker[K]) WatchAll(inf cache.SharedIndexInformer, affects func(Change) bool) error {
	return t.watch(inf, func(ch Change) bool {
		if affects(ch) {
			t.all = true
			return true
		}
		return false
	})
}

// watch registers the handlers; record runs under t.mu and reports whether it marked
// anything.
func (t *Tracker[K]) watch(inf cache.SharedIndexInformer, record func(Change) bool) error {
	on := func(ch Change) {
		t.mu.Lock()
		marked := t.started && record(ch)
		t.mu.Unlock()
		if marked {
			t.request()
		}
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { on(Change{New: obj}) },
		UpdateFunc: func(old, obj any) { on(Change{Old: old, New: obj}) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			on(Change{Old: obj})
		},
	})
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.regs = append(t.regs, reg)
	t.mu.Unlock()
	return nil
}

// Mark records keys as changed, as an event would.
func (t *Tracker[K]) Mark(keys ...K) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.started {
		return
	}
	for _, k := range keys {
		t.keys[k] = struct{}{}
	}
}

// Marked reports whether k is recorded for the next sync.
func (t *Tracker[K]) Marked(k K) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.keys[k]
	return ok
}

// MarkAll records that everything must be recomputed (after a failed sync, say).
func (t *Tracker[K]) MarkAll() {
	t.mu.Lock()
	t.all = true
	t.mu.Unlock()
}

// WaitForInitialObjects blocks until every watched informer has handed its initial
// objects to the handlers, or ctx ends (false). Synced caches do not mean delivered
// events: waiting lets the initial adds be dropped (the first sync covers them)
// instead of marking every object for the sync after it.
func (t *Tracker[K]) WaitForInitialObjects(ctx context.Context) bool {
	t.mu.Lock()
	checks := make([]cache.DoneChecker, len(t.regs))
	for i, r := range t.regs {
		checks[i] = r.HasSyncedChecker()
	}
	t.mu.Unlock()
	return cache.WaitFor(ctx, "", checks...)
}

// Take returns the keys recorded since the last Take and whether everything changed,
// and starts recording. Taking before reading any lister loses nothing: a later event
// marks its key again for the next sync, and an earlier one is in the listers already
// (informers update their store before they notify).
func (t *Tracker[K]) Take() (keys map[K]struct{}, all bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys, all = t.keys, t.all
	t.keys, t.all, t.started = map[K]struct{}{}, false, true
	return keys, all
}

// Both maps the old and the new object of a change through keyOf: for controllers
// whose key does not depend on what changed.
func Both[K comparable](keyOf func(obj any) (K, bool)) func(Change) []K {
	return func(ch Change) []K {
		var out []K
		for _, obj := range []any{ch.Old, ch.New} {
			if obj == nil {
				continue
			}
			if k, ok := keyOf(obj); ok {
				out = append(out, k)
			}
		}
		return out
	}
}

// Run is a controller's loop: it waits until the tracker's handlers have had the
// initial objects, then runs the runner until ctx ends.
func Run[K comparable](ctx context.Context, t *Tracker[K], r *Runner, hb Heartbeat) {
	if t.WaitForInitialObjects(ctx) {
		r.Run(ctx, hb)
	}
}
