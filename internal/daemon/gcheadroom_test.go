package daemon

import (
	"context"
	"log/slog"
	"os"
	"runtime"
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
		{1024 * mib, 64 * mib, 25}, // never below the floor
	} {
		if got := gcPercentFor(c.live, c.headroom); got != c.want {
			t.Errorf("live %d MiB, headroom %d MiB: GOGC %d, want %d", c.live/mib, c.headroom/mib, got, c.want)
		}
	}
}

// TestCapGCHeadroomFollowsTheLiveHeap runs the cap on this process's own collector: a
// live heap four times the headroom brings GOGC down to the floor (within the 5
// points the cap ignores), freeing it brings Go's default back, and so does the end
// of the context while the heap is still large.
func TestCapGCHeadroomFollowsTheLiveHeap(t *testing.T) {
	unsetGOGC(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !CapGCHeadroom(ctx, 16<<20, slog.New(slog.DiscardHandler)) {
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

func TestCapGCHeadroomLeavesTheOperatorsGOGC(t *testing.T) {
	t.Setenv("GOGC", "100")
	if CapGCHeadroom(context.Background(), 1, slog.New(slog.DiscardHandler)) {
		t.Error("the cap started with GOGC set in the environment")
	}
	unsetGOGC(t)
	if CapGCHeadroom(context.Background(), 0, slog.New(slog.DiscardHandler)) {
		t.Error("the cap started with no headroom configured")
	}
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
	deadline := time.Now().Add(10 * time.Second)
	for !ok(gogc()) {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC is %d, want %s", gogc(), want)
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
