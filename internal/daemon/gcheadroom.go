package daemon

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
)

// Go's collector lets the heap grow by GOGC percent of the live heap (100% by
// default) before it collects. On a small cluster that headroom is a few MiB; at
// 150,000 pods the caches hold about 200 MiB and the heap would double to 400 MiB,
// the largest part of the daemon's RSS. Capping the headroom at a fixed size instead
// costs more collections only where the heap is large, and leaves small nodes as Go
// runs them.

// minGCPercent bounds how often the collector runs however large the live heap
// grows: below about 25% the collector would run nearly without pause.
const minGCPercent = 25

// gcPercentFor returns the GOGC that lets a heap of live bytes grow by at most
// headroom bytes before the next collection, between minGCPercent and Go's 100.
func gcPercentFor(live, headroom uint64) int {
	if live == 0 || headroom >= live {
		return 100
	}
	return max(minGCPercent, int(headroom*100/live))
}

// CapGCHeadroom sets GOGC after every collection so that the heap grows at most
// headroom bytes beyond what the last collection found live, until ctx ends, and
// then puts Go's default back. It does nothing, and says false, when headroom is 0 or
// the operator set GOGC in the environment.
func CapGCHeadroom(ctx context.Context, headroom uint64, log *slog.Logger) bool {
	if headroom == 0 {
		return false
	}
	if v, set := os.LookupEnv("GOGC"); set {
		log.Info("GOGC is set in the environment: the collector's headroom is not capped", "GOGC", v)
		return false
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	current := 100
	afterEveryGC(ctx, func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		// SetGCPercent stops the world briefly: only a real change is worth it.
		want := gcPercentFor(sample[0].Value.Uint64(), headroom)
		if want-current >= 5 || current-want >= 5 || want == 100 && current != 100 {
			debug.SetGCPercent(want)
			current = want
		}
	}, func() {
		if current != 100 {
			debug.SetGCPercent(100)
		}
	})
	return true
}

// gcSentinel is an object nothing references: each collection finds it unreachable
// and runs its finalizer. It holds a pointer so that it is never a tiny allocation,
// which may share its memory (and its finalizer's timing) with other objects.
type gcSentinel struct{ _ *int }

// afterEveryGC runs f on the finalizer goroutine after each garbage collection until
// ctx ends, then stop once. f must be quick: the finalizers of the whole process wait
// for it.
func afterEveryGC(ctx context.Context, f, stop func()) {
	var rearm func(*gcSentinel)
	rearm = func(s *gcSentinel) {
		if ctx.Err() != nil {
			stop()
			return
		}
		f()
		runtime.SetFinalizer(s, rearm)
	}
	runtime.SetFinalizer(&gcSentinel{}, rearm)
}
