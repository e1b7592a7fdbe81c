package loop

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type call struct{ full bool }

type nopHeartbeat struct{}

func (nopHeartbeat) Beat()                                       {}
func (nopHeartbeat) SyncDone(bool, time.Duration, error, string) {}

// recorder is a SyncFunc that records calls and can be made to fail.
type recorder struct {
	mu    sync.Mutex
	calls []call
	fail  int // fail this many more calls
	got   chan call
}

func (r *recorder) sync(_ context.Context, full bool) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{full})
	r.got <- call{full}
	if r.fail > 0 {
		r.fail--
		return "", errors.New("boom")
	}
	return "fine", nil
}

func start(t *testing.T, rec *recorder, min, full time.Duration) *Runner {
	r := NewRunner("test", rec.sync, min, full)
	r.MaxBackoff = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, nopHeartbeat{}); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func next(t *testing.T, rec *recorder) call {
	t.Helper()
	select {
	case c := <-rec.got:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no sync happened")
		return call{}
	}
}

func TestFirstSyncIsFullAndRequestsAreIncremental(t *testing.T) {
	rec := &recorder{got: make(chan call, 100)}
	r := start(t, rec, time.Millisecond, time.Hour)
	if c := next(t, rec); !c.full {
		t.Fatal("first sync was not full")
	}
	r.Request()
	if c := next(t, rec); c.full {
		t.Fatal("a request caused a full sync")
	}
	r.RequestFull()
	if c := next(t, rec); !c.full {
		t.Fatal("RequestFull caused a partial sync")
	}
}

func TestRequestsDuringMinIntervalCoalesce(t *testing.T) {
	rec := &recorder{got: make(chan call, 100)}
	r := start(t, rec, 300*time.Millisecond, time.Hour)
	next(t, rec)
	for i := 0; i < 50; i++ {
		r.Request()
	}
	next(t, rec)
	select {
	case c := <-rec.got:
		t.Fatalf("50 requests within the min interval caused a second sync %+v", c)
	case <-time.After(700 * time.Millisecond):
	}
}

func TestFailedSyncIsRetriedAsFull(t *testing.T) {
	rec := &recorder{got: make(chan call, 100), fail: 1}
	r := start(t, rec, time.Millisecond, time.Hour)
	next(t, rec) // fails
	if c := next(t, rec); !c.full {
		t.Fatal("retry after failure was not full")
	}
	r.Request()
	if c := next(t, rec); c.full {
		t.Fatal("after a successful retry, requests should be incremental again")
	}
}

func TestPeriodicFullResync(t *testing.T) {
	rec := &recorder{got: make(chan call, 100)}
	start(t, rec, time.Millisecond, 20*time.Millisecond)
	for i := 0; i < 3; i++ {
		if c := next(t, rec); !c.full {
			t.Fatal("periodic sync was not full")
		}
	}
}
