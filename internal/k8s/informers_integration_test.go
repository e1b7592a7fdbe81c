//go:build integration

package k8s

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// requestLog records the method and URL of every request a client makes, and the
// content type of each answer.
type requestLog struct {
	mu           sync.Mutex
	urls         []string
	contentTypes map[string]int
}

func (l *requestLog) RoundTrip(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		l.mu.Lock()
		l.urls = append(l.urls, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
		l.mu.Unlock()
		resp, err := next.RoundTrip(r)
		if err == nil {
			l.mu.Lock()
			if l.contentTypes == nil {
				l.contentTypes = map[string]int{}
			}
			l.contentTypes[resp.Header.Get("Content-Type")]++
			l.mu.Unlock()
		}
		return resp, err
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestInformersStreamTheirListAndCacheCompactPods starts the daemon's Pod informer
// against the real API server: its initial list must come as a stream of watch
// events (no paged LIST request held in memory at once), every object received is
// counted, and the cache holds the compact form.
func TestInformersStreamTheirListAndCacheCompactPods(t *testing.T) {
	rc, cs := testenv.APIServer(t)
	ctx := context.Background()
	ns := testenv.UniqueName("stripped")
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	size := workload.Size{Nodes: 2, Pods: 3, Namespaces: 1, Services: 1}
	for i := range size.Pods {
		p := size.Pod(i)
		p.Namespace = ns
		created, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status = p.Status
		if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	var log requestLog
	logged := rest.CopyConfig(rc)
	logged.Wrap(log.RoundTrip)
	client, err := NewClient(logged)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics := NewAPIMetrics(reg)
	podClient, err := NewPodListClient(client, logged)
	if err != nil {
		t.Fatal(err)
	}
	factory := NewInformerFactory(client, podClient, 0, metrics)
	pods := factory.Core().V1().Pods()
	pods.Informer()
	stop := make(chan struct{})
	defer close(stop)
	factory.Start(stop)
	for typ, ok := range factory.WaitForCacheSync(stop) {
		if !ok {
			t.Fatalf("%v did not sync", typ)
		}
	}

	log.mu.Lock()
	var lists, streams []string
	for _, u := range log.urls {
		if !strings.HasPrefix(u, "GET /api/v1/pods?") {
			continue
		}
		switch {
		case strings.Contains(u, "sendInitialEvents=true") && strings.Contains(u, "watch=true"):
			streams = append(streams, u)
		case !strings.Contains(u, "watch=true"):
			lists = append(lists, u)
		}
	}
	// Protobuf, not JSON (client-go's typed clients ask for it): decoding is most of
	// the daemon's CPU at start-up, and JSON costs several times more.
	for ct := range log.contentTypes {
		if !strings.HasPrefix(ct, runtime.ContentTypeProtobuf) {
			t.Errorf("answers by content type %v, want protobuf only", log.contentTypes)
		}
	}
	log.mu.Unlock()
	if len(streams) == 0 || len(lists) != 0 {
		t.Errorf("want the initial list as a watch stream and no LIST; got streams %q, lists %q", streams, lists)
	}

	obj, exists, err := pods.Informer().GetIndexer().GetByKey(ns + "/" + workload.PodName(1))
	if err != nil || !exists {
		t.Fatalf("pod %s not cached: %v", workload.PodName(1), err)
	}
	got, ok := obj.(*Pod)
	if !ok {
		t.Fatalf("the cache holds a %T, want a compact *k8s.Pod", obj)
	}
	whole := size.Pod(1)
	whole.Namespace = ns
	want := CompactPod(whole)
	if len(want.IPs) != 1 || len(want.Ports()) != 2 || want.Labels["app"] != size.App(1) {
		t.Fatalf("the workload's pod compacts to %+v", want)
	}
	if !got.Equal(want) {
		t.Errorf("cached pod %+v, want %+v", got, want)
	}
	if n := counted(t, reg, "kube_routerd_api_objects_received_total", "v1.Pod"); n < float64(size.Pods) {
		t.Errorf("counted %v pods received, want at least %d", n, size.Pods)
	}
	// Requests are counted through client-go's process-wide hook, which the first
	// registration takes; in this test process envtest's controller-runtime took it.
	// The daemon registers first (BenchmarkNodeInTheEnvelope reports its requests).
}

// counted sums the samples of a counter that have a label of the given value.
func counted(t *testing.T, reg *prometheus.Registry, name, labelValue string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == labelValue {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}
