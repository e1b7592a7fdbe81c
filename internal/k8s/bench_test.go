//go:build bench

package k8s

import (
	"runtime"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

// BenchmarkCompactPodsHeld reports what the envelope's 150,000 pods hold in the heap
// as compact pods, with their share of the interned shapes: the pod's part of the
// daemon's memory at the top of the envelope, without the informer's map and keys.
func BenchmarkCompactPodsHeld(b *testing.B) {
	size := workload.Envelope
	for range b.N {
		before := liveHeap()
		held := make([]*Pod, size.Pods)
		for i := range held {
			held[i] = CompactPod(size.Pod(i))
		}
		after := liveHeap()
		b.ReportMetric(float64(after-before)/float64(size.Pods), "B/pod-held")
		runtime.KeepAlive(held)
	}
}
