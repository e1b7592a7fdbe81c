package daemon

import (
	"context"
	"log/slog"
	"math"
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
//
// Between collections, Go also keeps freed pages mapped up to 10% beyond the heap's
// goal, and returns the rest only at a background pace: through churn at the
// envelope RSS crept 90 MiB above READY's. A soft memory limit just above the goal
// and the runtime's own memory makes the scavenger return them at once. Not while
// the informers list, though: the heap only grows then, every page returned is asked
// for again, and at the envelope returning them took 8% of the start's CPU and
// brought the collector's assists (18%) into the decoding.

// minGCPercent bounds how often the collector runs however large the live heap
// grows: far below 20% the collector would run nearly without pause.
const minGCPercent = 20

// gcPercentFor returns the GOGC that lets a heap of live bytes grow by at most
// headroom bytes before the next collection, between minGCPercent and Go's 100.
func gcPercentFor(live, headroom uint64) int {
	if live == 0 || headroom >= live {
		return 100
	}
	return max(minGCPercent, int(headroom*100/live))
}

// memoryLimitFor returns the soft memory limit that lets the heap reach its goal,
// with the 3% the runtime keeps below a limit and a little more, besides overhead,
// the memory the runtime holds outside heap objects (stacks, metadata, unused parts
// of spans): the limit does not bring collections before the goal does, it makes the
// scavenger give back the free pages above the goal.
func memoryLimitFor(goal, overhead uint64) uint64 {
	return goal + goal/16 + overhead
}

// The runtime metrics the cap reads after every collection.
const (
	liveHeapMetric    = "/gc/heap/live:bytes"
	heapGoalMetric    = "/gc/heap/goal:bytes"
	mappedMetric      = "/memory/classes/total:bytes"
	releasedMetric    = "/memory/classes/heap/released:bytes"
	freeMetric        = "/memory/classes/heap/free:bytes"
	heapObjectsMetric = "/memory/classes/heap/objects:bytes"
)

// CapGCHeadroom sets GOGC after every collection so that the heap grows at most
// headroom bytes beyond what the last collection found live, and, once listed is
// closed, a soft memory limit just above that goal (memoryLimitFor), until ctx ends;
// then it puts Go's defaults back. It does nothing, and says false, when headroom is
// 0 or the operator set GOGC in the environment; a GOMEMLIMIT there leaves the limit
// to the operator.
func CapGCHeadroom(ctx context.Context, headroom uint64, listed <-chan struct{}, log *slog.Logger) bool {
	if headroom == 0 {
		return false
	}
	if v, set := os.LookupEnv("GOGC"); set {
		log.Info("GOGC is set in the environment: the collector's headroom is not capped", "GOGC", v)
		return false
	}
	_, operatorLimit := os.LookupEnv("GOMEMLIMIT")
	live := []metrics.Sample{{Name: liveHeapMetric}}
	// Read after GOGC is set: the goal is the one it gives.
	memory := []metrics.Sample{{Name: heapGoalMetric}, {Name: mappedMetric}, {Name: releasedMetric},
		{Name: freeMetric}, {Name: heapObjectsMetric}}
	current, limited := 100, false
	afterEveryGC(ctx, func() {
		metrics.Read(live)
		if live[0].Value.Kind() != metrics.KindUint64 {
			return
		}
		// SetGCPercent stops the world briefly: only a real change is worth it.
		want := gcPercentFor(live[0].Value.Uint64(), headroom)
		if want-current >= 5 || current-want >= 5 || want == 100 && current != 100 {
			debug.SetGCPercent(want)
			current = want
		}
		if operatorLimit {
			return
		}
		select {
		case <-listed:
		default:
			return
		}
		metrics.Read(memory)
		var v [5]uint64
		for i, s := range memory {
			if s.Value.Kind() != metrics.KindUint64 {
				return
			}
			v[i] = s.Value.Uint64()
		}
		goal, mapped, heap := v[0], v[1], v[2]+v[3]+v[4]
		if goal == 0 || heap > mapped {
			return
		}
		debug.SetMemoryLimit(int64(memoryLimitFor(goal, mapped-heap)))
		limited = true
	}, func() {
		if current != 100 {
			debug.SetGCPercent(100)
		}
		if limited {
			debug.SetMemoryLimit(math.MaxInt64)
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
