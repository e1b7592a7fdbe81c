package daemon

import (
	"context"
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestGCPercentCapsTheHeadroom(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		live, headroom uint64
		want           int
	}{
		{0, 64 * mib, 100},
		{20 * mib, 64 * mib, 100},  // a small node: Go's default
		{64 * mib, 64 * mib, 100},  // the cap starts here
		{128 * mib, 64 * mib, 50},  // 64 MiB is half the live heap
		{200 * mib, 64 * mib, 32},  // the envelope's caches
		{1024 * mib, 64 * mib, 20}, // never below the floor
	} {
		if got := gcPercentFor(c.live, c.headroom); got != c.want {
			t.Errorf("live %d MiB, headroom %d MiB: GOGC %d, want %d", c.live/mib, c.headroom/mib, got, c.want)
		}
	}
}

// TestCapGCHeadroomFollowsTheLiveHeap runs the cap on this process's own collector: a
// live heap eight times the headroom brings GOGC down to the floor (within the 5
// points the cap ignores), freeing it brings Go's default back, and so does the end
// of the context while the heap is still large.
func TestCapGCHeadroomFollowsTheLiveHeap(t *testing.T) {
	unsetGOGC(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !CapGCHeadroom(ctx, 8<<20, listed(), slog.New(slog.DiscardHandler)) {
		t.Fatal("the cap did not start")
	}
	capped := func(p int) bool { return p < minGCPercent+5 }
	held := hold(64)
	waitForGOGC(t, "capped", capped)
	runtime.KeepAlive(held)
	held = nil
	waitForGOGC(t, "100", func(p int) bool { return p == 100 })

	held = hold(64)
	waitForGOGC(t, "capped", capped)
	cancel()
	waitForGOGC(t, "100 once the context ended", func(p int) bool { return p == 100 })
	runtime.KeepAlive(held)
}

func TestMemoryLimitLeavesTheGoalItsRoom(t *testing.T) {
	const mib = 1 << 20
	goal, overhead := uint64(240*mib), uint64(12*mib)
	limit := memoryLimitFor(goal, overhead)
	// The runtime aims 3% below a limit, after the overhead: the goal must fit.
	if heapRoom := (limit - overhead) / 100 * 97; heapRoom < goal {
		t.Errorf("limit %d MiB leaves the heap %d MiB, below its goal %d MiB", limit/mib, heapRoom/mib, goal/mib)
	}
	// The scavenger keeps 95% of a limit: about the goal and the overhead, not the
	// 10% more Go keeps without one.
	if kept := limit / 100 * 95; kept > goal+goal/50+overhead {
		t.Errorf("limit %d MiB keeps %d MiB mapped, want about %d", limit/mib, kept/mib, (goal+overhead)/mib)
	}
}

// TestCapGCHeadroomSetsAMemoryLimitAboveTheGoal runs the cap on this process: after a
// collection the soft limit sits just above the heap's goal, and the end of the
// context takes it away.
func TestCapGCHeadroomSetsAMemoryLimitAboveTheGoal(t *testing.T) {
	unsetGOGC(t)
	t.Cleanup(func() { debug.SetMemoryLimit(math.MaxInt64) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !CapGCHeadroom(ctx, 8<<20, listed(), slog.New(slog.DiscardHandler)) {
		t.Fatal("the cap did not start")
	}
	held := hold(64)
	waitFor(t, "a memory limit", func() bool { return debug.SetMemoryLimit(-1) != math.MaxInt64 })
	s := []metrics.Sample{{Name: heapGoalMetric}}
	metrics.Read(s)
	if limit, goal := debug.SetMemoryLimit(-1), int64(s[0].Value.Uint64()); limit < goal || limit > 2*goal {
		t.Errorf("memory limit %d MiB, want just above the heap's goal %d MiB", limit>>20, goal>>20)
	}
	runtime.KeepAlive(held)
	cancel()
	waitFor(t, "no memory limit once the context ended", func() bool { return debug.SetMemoryLimit(-1) == math.MaxInt64 })
}

// TestCapGCHeadroomSetsNoMemoryLimitWhileListing: until the informers have listed,
// GOGC is capped but no memory limit is set.
func TestCapGCHeadroomSetsNoMemoryLimitWhileListing(t *testing.T) {
	unsetGOGC(t)
	t.Cleanup(func() { debug.SetMemoryLimit(math.MaxInt64) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listing := make(chan struct{})
	if !CapGCHeadroom(ctx, 8<<20, listing, slog.New(slog.DiscardHandler)) {
		t.Fatal("the cap did not start")
	}
	held := hold(64)
	waitForGOGC(t, "capped", func(p int) bool { return p < minGCPercent+5 })
	if limit := debug.SetMemoryLimit(-1); limit != math.MaxInt64 {
		t.Errorf("memory limit %d MiB set while the informers list", limit>>20)
	}
	close(listing)
	waitFor(t, "a memory limit once listed", func() bool { return debug.SetMemoryLimit(-1) != math.MaxInt64 })
	runtime.KeepAlive(held)
}

func TestCapGCHeadroomLeavesTheOperatorsMemoryLimit(t *testing.T) {
	unsetGOGC(t)
	t.Setenv("GOMEMLIMIT", "1GiB")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !CapGCHeadroom(ctx, 8<<20, listed(), slog.New(slog.DiscardHandler)) {
		t.Fatal("the cap did not start")
	}
	held := hold(64)
	waitForGOGC(t, "capped", func(p int) bool { return p < minGCPercent+5 })
	if limit := debug.SetMemoryLimit(-1); limit != math.MaxInt64 {
		t.Errorf("memory limit %d MiB set over the operator's GOMEMLIMIT", limit>>20)
	}
	runtime.KeepAlive(held)
}

func TestCapGCHeadroomLeavesTheOperatorsGOGC(t *testing.T) {
	t.Setenv("GOGC", "100")
	if CapGCHeadroom(context.Background(), 1, listed(), slog.New(slog.DiscardHandler)) {
		t.Error("the cap started with GOGC set in the environment")
	}
	unsetGOGC(t)
	if CapGCHeadroom(context.Background(), 0, listed(), slog.New(slog.DiscardHandler)) {
		t.Error("the cap started with no headroom configured")
	}
}

// listed returns a closed channel: the informers have listed.
func listed() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func unsetGOGC(t *testing.T) {
	if _, set := os.LookupEnv("GOGC"); set {
		t.Setenv("GOGC", "") // restores it after the test
		os.Unsetenv("GOGC")
	}
}

// hold allocates mib MiB that stay live while the result is.
func hold(mib int) [][]byte {
	held := make([][]byte, mib)
	for i := range held {
		held[i] = make([]byte, 1<<20)
	}
	return held
}

// waitForGOGC collects until the finalizer goroutine has set a GOGC that ok accepts.
func waitForGOGC(t *testing.T, want string, ok func(int) bool) {
	t.Helper()
	waitFor(t, "GOGC "+want, func() bool { return ok(gogc()) })
}

// waitFor collects until the finalizer goroutine has brought about what done checks.
func waitFor(t *testing.T, what string, done func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !done() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10 s", what)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}
