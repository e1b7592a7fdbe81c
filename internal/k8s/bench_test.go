//go:build bench

package k8s

import (
	"runtime"

	corev1 "k8s.io/api/core/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
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

// BenchmarkDecodePod decodes one of the envelope's realistic pods from protobuf as
// the API server sends it, whole (as client-go does) and trimmed (as the pod informer
// does), and compacts it as the cache holds it: per pod of a start-up's list.
func BenchmarkDecodePod(b *testing.B) {
	data := encodeProtobuf(b, workload.Envelope.Pod(1))
	for name, decoder := range map[string]k8sruntime.Decoder{
		"whole":   protobufSerializer(b),
		"trimmed": podTrimmingDecoder{protobufSerializer(b)},
	} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				obj, _, err := decoder.Decode(data, nil, &corev1.Pod{})
				if err != nil {
					b.Fatal(err)
				}
				CompactPod(obj.(*corev1.Pod))
			}
		})
	}
}
