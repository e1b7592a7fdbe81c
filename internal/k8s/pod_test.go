package k8s

import (
	"maps"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

func TestCompactPodKeepsWhatPolicyReads(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName: "node-a",
			InitContainers: []corev1.Container{
				{Name: "migrate", Ports: []corev1.ContainerPort{{Name: "ignored", ContainerPort: 1}}},
				{Name: "proxy", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "mesh", ContainerPort: 15001}}},
			},
			Containers: []corev1.Container{{Name: "server", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080}, {ContainerPort: 9000}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
			}}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.9",
			PodIPs: []corev1.PodIP{{IP: "::ffff:10.0.0.9"}, {IP: "fd00::9"}, {IP: "garbage"}}},
	}
	got := CompactPod(pod)
	want := (&Pod{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}, NodeName: "node-a",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("fd00::9")}}).
		WithPorts([]NamedPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}, {Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
			{Name: "mesh", Protocol: corev1.ProtocolTCP, Port: 15001}})
	if !got.Equal(want) {
		t.Errorf("compact pod\n%+v, want\n%+v", got, want)
	}
	for i, ip := range got.IPs {
		if got.IPText(i) != ip.String() {
			t.Errorf("IPText(%d) = %q, want %q", i, got.IPText(i), ip)
		}
	}
	if key, err := cache.MetaNamespaceKeyFunc(got); err != nil || key != "shop/web-1" || got.Key() != key {
		t.Errorf("cache key %q (%v), Key() %q", key, err, got.Key())
	}

	pod.Status.PodIPs = nil
	if ips := CompactPod(pod).IPs; !reflect.DeepEqual(ips, []netip.Addr{netip.MustParseAddr("10.0.0.9")}) {
		t.Errorf("without podIPs the IPs are %v, want podIP's", ips)
	}
	pod.Status.Phase = corev1.PodSucceeded
	if !CompactPod(pod).Finished {
		t.Error("a Succeeded pod is not finished")
	}
	// A status-only update by kubelet makes an equal compact pod.
	before := CompactPod(pod)
	pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue})
	if !CompactPod(pod).Equal(before) {
		t.Error("a condition changed the compact pod")
	}
	pod.Labels = map[string]string{"app": "web", "v": "2"}
	if CompactPod(pod).Equal(before) {
		t.Error("a new label left the compact pod equal")
	}
}

// TestPodsShareLabelsWhileHeld checks the interning of pod shapes: replicas share one
// label map and one port list, and the table forgets a shape once no pod holds it.
func TestPodsShareLabelsWhileHeld(t *testing.T) {
	size := workload.Size{Nodes: 1, Pods: 100, Namespaces: 1, Services: 1}
	labels := func(p *Pod) uintptr { return reflect.ValueOf(p.Labels).Pointer() }
	first := CompactPod(size.Pod(0))
	second := CompactPod(size.Pod(21)) // same app and tier: same labels
	if labels(first) != labels(second) {
		t.Fatal("two pods with equal labels hold two maps")
	}
	if len(first.Ports()) == 0 || &first.Ports()[0] != &second.Ports()[0] {
		t.Fatal("two replicas hold two port lists")
	}
	other := CompactPod(size.Pod(7)) // another tier
	if labels(first) == labels(other) || other.Labels["tier"] == first.Labels["tier"] {
		t.Fatal("pods with different labels share a map")
	}
	key := shapeHash(first.Namespace, first.Labels, first.Ports())
	runtime.KeepAlive(second)
	first, second = nil, nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		if !podShapes.holds(key) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the shape is still in the table after its pods went")
		}
		time.Sleep(10 * time.Millisecond)
	}
	runtime.KeepAlive(other)
}

// TestPodShapeCollisionStaysCorrect checks the table's answer to two shapes under one
// hash: the second pod gets its own labels, unshared, and the first keeps the entry.
func TestPodShapeCollisionStaysCorrect(t *testing.T) {
	var table internTable[uint64, podShape]
	web := &podShape{namespace: "a", labels: map[string]string{"app": "web"}}
	db := &podShape{namespace: "a", labels: map[string]string{"app": "db"}}
	fits := func(want *podShape) func(*podShape) bool {
		return func(s *podShape) bool { return maps.Equal(s.labels, want.labels) }
	}
	if got := table.get(1, fits(web), func() *podShape { return web }); got != web {
		t.Fatal("the first shape is not the one made")
	}
	if got := table.get(1, fits(db), func() *podShape { return db }); got != db {
		t.Fatalf("a colliding shape got %v, want its own labels", got.labels)
	}
	if got := table.get(1, fits(web), func() *podShape { t.Fatal("the first shape was made again"); return nil }); got != web {
		t.Fatal("the collision replaced the shared shape")
	}
	runtime.KeepAlive(web)
}

// holds reports whether key has an entry.
func (t *internTable[K, T]) holds(key K) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.entries[key]
	return ok
}

// TestPodCacheHasNoNamespaceIndex checks that the factory's pod informer, the one
// every controller gets, keeps no index: nothing asks for pods by namespace.
func TestPodCacheHasNoNamespaceIndex(t *testing.T) {
	factory := NewInformerFactory(fake.NewClientset(), nil, 0, nil)
	if idx := factory.Core().V1().Pods().Informer().GetIndexer().GetIndexers(); len(idx) != 0 {
		t.Fatalf("the pod cache keeps indexes %v", slices.Collect(maps.Keys(idx)))
	}
	if idx := factory.Core().V1().Services().Informer().GetIndexer().GetIndexers(); len(idx) == 0 {
		t.Fatal("the other informers lost their namespace index too")
	}
}

// TestCachedPodStaysSmall guards the size of the cache's pod: at 150,000 pods each
// size class above 128 bytes (144, 160) costs 2.4 MiB more, before the collector's
// headroom.
func TestCachedPodStaysSmall(t *testing.T) {
	if size := unsafe.Sizeof(Pod{}); size > 128 {
		t.Errorf("a cached pod takes %d bytes, want at most 128", size)
	}
}
