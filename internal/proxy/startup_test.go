package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
)

// syncRecord is what one sync of a running controller did.
type syncRecord struct {
	full       bool
	recomputed int
	err        error
}

// hookedServices calls before the first List of Services returns.
type hookedServices struct {
	corelisters.ServiceLister
	hook func()
}

func (l *hookedServices) List(sel labels.Selector) ([]*corev1.Service, error) {
	svcs, err := l.ServiceLister.List(sel)
	if l.hook != nil {
		l.hook()
		l.hook = nil
	}
	return svcs, err
}

// TestStartupAddsDoNotMakeTheFirstPartialSyncRecomputeEverything runs the controller
// the way the daemon does (informers started and synced, then Run) over a fake
// clientset holding n Services, with the handlers' initial adds held back as on a
// slow machine.
func TestStartupAddsDoNotMakeTheFirstPartialSyncRecomputeEverything(t *testing.T) {
	const n = 1000
	objs := []runtime.Object{&corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: thisNode},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "192.168.1.10"},
		}},
	}}
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		objs = append(objs, namedService(name, fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)),
			sliceFor(name, ep{ip: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)}))
	}
	client := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(client, 0)
	kernel := newFakeKernel()
	cfg := config.Default().ServiceProxy
	cfg.MinSyncInterval.Duration = 10 * time.Millisecond
	cfg.SyncPeriod.Duration = time.Hour
	c, err := New(daemon.Env{Client: client, Informers: factory, NodeName: thisNode}, cfg, kernel.dataplane())
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	records := make(chan syncRecord, 16)
	c.runner.Sync = func(ctx context.Context, full bool) (string, error) {
		summary, err := c.sync(ctx, full)
		select {
		case records <- syncRecord{full: full, recomputed: c.recomputed, err: err}:
		case <-ctx.Done():
		}
		return summary, err
	}
	// A change while the first full sync runs, after it has read the Services: only
	// the event can bring it in.
	duringStartup := sliceFor("svc-7", ep{ip: "10.1.0.8"}, ep{ip: "10.1.77.77"})
	c.services = &hookedServices{ServiceLister: c.services, hook: func() {
		if _, err := client.DiscoveryV1().EndpointSlices("ns").Update(ctx, duringStartup, metav1.UpdateOptions{}); err != nil {
			t.Errorf("updating slice: %v", err)
			return
		}
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if c.changes.Marked(types.NamespacedName{Namespace: "ns", Name: "svc-7"}) {
				return
			}
		}
		t.Error("the change made during the first full sync never reached the handler")
	}}

	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx, daemon.NewHeartbeat("proxy", nil))
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		factory.Shutdown()
	})

	next := func() syncRecord {
		t.Helper()
		select {
		case r := <-records:
			if r.err != nil {
				t.Fatalf("sync(full=%v): %v", r.full, r.err)
			}
			return r
		case <-time.After(30 * time.Second):
			t.Fatal("no sync within 30s")
		}
		return syncRecord{}
	}
	if r := next(); !r.full || r.recomputed != n {
		t.Fatalf("first sync: full=%v recomputed=%d, want a full sync of %d Services", r.full, r.recomputed, n)
	}
	if r := next(); r.full || r.recomputed != 1 {
		t.Fatalf("second sync: full=%v recomputed=%d, want a partial sync of the Service changed during the first", r.full, r.recomputed)
	}
	if dump := kernel.ipvs.Dump(); !strings.Contains(dump, "-> 10.1.77.77:8080") {
		t.Fatalf("the change made during the first full sync was lost; IPVS table:\n%s", dump)
	}

	kernel.ipvs.ResetWrites()
	changed := namedService("svc-300", "10.96.1.51", func(s *corev1.Service) { s.Annotations[annotationScheduler] = "lc" })
	if _, err := client.CoreV1().Services("ns").Update(ctx, changed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if r := next(); r.full || r.recomputed != 1 {
		t.Fatalf("sync after one change: full=%v recomputed=%d, want a partial sync of 1 Service", r.full, r.recomputed)
	}
	if got := kernel.ipvs.Writes(); strings.Join(got, "\n") != "update service 10.96.1.51:80/TCP lc" {
		t.Errorf("IPVS writes = %q, want only svc-300's scheduler change", got)
	}
	select {
	case r := <-records:
		t.Errorf("unexpected further sync: full=%v recomputed=%d", r.full, r.recomputed)
	case <-time.After(200 * time.Millisecond):
	}
}
