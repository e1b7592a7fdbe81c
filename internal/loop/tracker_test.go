package loop

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

func configMap(name, value string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Data: map[string]string{"v": value}}
}

func nameOf(obj any) (string, bool) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return "", false
	}
	return cm.Name, true
}

// startTracker runs a tracker over a ConfigMap informer holding initial objects.
func startTracker(t *testing.T, initial ...runtime.Object) (*Tracker[string], *fake.Clientset, chan struct{}, cache.SharedIndexInformer) {
	t.Helper()
	client := fake.NewClientset(initial...)
	factory := informers.NewSharedInformerFactory(client, 0)
	inf := factory.Core().V1().ConfigMaps().Informer()
	requests := make(chan struct{}, 100)
	tr := NewTracker[string](func() { requests <- struct{}{} })
	if err := tr.Watch(inf, Both(nameOf)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); factory.Shutdown() })
	// Hold the tracker so the handlers cannot take in the initial adds yet.
	tr.mu.Lock()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	waited := make(chan bool)
	go func() { waited <- tr.WaitForInitialObjects(ctx) }()
	select {
	case <-waited:
		t.Fatal("WaitForInitialObjects returned while the initial adds were still being delivered")
	case <-time.After(100 * time.Millisecond):
	}
	tr.mu.Unlock()
	if !<-waited {
		t.Fatal("WaitForInitialObjects gave up")
	}
	return tr, client, requests, inf
}

func waitRequest(t *testing.T, requests chan struct{}) {
	t.Helper()
	select {
	case <-requests:
	case <-time.After(10 * time.Second):
		t.Fatal("no sync requested")
	}
}

func TestTrackerDropsInitialObjectsAndRecordsLaterChanges(t *testing.T) {
	tr, client, requests, _ := startTracker(t, configMap("a", "1"), configMap("b", "1"))
	if keys, all := tr.Take(); len(keys) != 0 || all {
		t.Fatalf("initial objects were recorded: %v all=%v (the first sync covers them)", keys, all)
	}
	if len(requests) != 0 {
		t.Errorf("initial objects asked for %d syncs", len(requests))
	}

	ctx := context.Background()
	if _, err := client.CoreV1().ConfigMaps("ns").Update(ctx, configMap("a", "2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRequest(t, requests)
	if err := client.CoreV1().ConfigMaps("ns").Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRequest(t, requests)
	keys, all := tr.Take()
	if got := slices.Sorted(maps.Keys(keys)); !slices.Equal(got, []string{"a", "b"}) || all {
		t.Errorf("took %v all=%v, want [a b] (an update and a delete)", got, all)
	}
	if keys, _ := tr.Take(); len(keys) != 0 {
		t.Errorf("a second Take returned %v", keys)
	}

	tr.Mark("c")
	if !tr.Marked("c") || tr.Marked("a") {
		t.Error("Marked does not reflect Mark")
	}
	tr.MarkAll()
	if keys, all := tr.Take(); !all || len(keys) != 1 {
		t.Errorf("after Mark and MarkAll: %v all=%v", keys, all)
	}
}

func TestWatchAllRecordsEverythingOnlyForEventsThatMatter(t *testing.T) {
	tr, client, requests, inf := startTracker(t, configMap("a", "1"))
	if err := tr.WatchAll(inf, func(ch Change) bool {
		cm, _ := ch.New.(*corev1.ConfigMap)
		return cm != nil && cm.Data["v"] == "everything"
	}); err != nil {
		t.Fatal(err)
	}
	tr.Take()
	ctx := context.Background()
	if _, err := client.CoreV1().ConfigMaps("ns").Update(ctx, configMap("a", "everything"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRequest(t, requests)
	testEventually(t, func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		_, marked := tr.keys["a"]
		return tr.all && marked
	})
	if keys, all := tr.Take(); !all || len(keys) != 1 {
		t.Errorf("took %v all=%v, want a's key and everything", keys, all)
	}
}

func testEventually(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 10s")
}
