//go:build integration

package lballoc

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/benchfig"
)

// assignedAt watches a namespace's Services and records when each first shows a
// load-balancer address.
type assignedAt struct {
	mu    sync.Mutex
	at    map[string]time.Time
	added chan struct{}
}

func watchAssignments(b *testing.B, cs kubernetes.Interface, ns string) *assignedAt {
	b.Helper()
	w, err := cs.CoreV1().Services(ns).Watch(context.Background(), metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)
	a := &assignedAt{at: map[string]time.Time{}, added: make(chan struct{}, 1)}
	go func() {
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*corev1.Service)
			if !ok || ev.Type == watch.Deleted || len(s.Status.LoadBalancer.Ingress) == 0 {
				continue
			}
			now := time.Now()
			a.mu.Lock()
			if _, seen := a.at[s.Name]; !seen {
				a.at[s.Name] = now
			}
			a.mu.Unlock()
			select {
			case a.added <- struct{}{}:
			default:
			}
		}
	}()
	return a
}

// wait returns when name was assigned, or fails after a minute.
func (a *assignedAt) wait(b *testing.B, name string) time.Time {
	deadline := time.After(time.Minute)
	for {
		a.mu.Lock()
		at, ok := a.at[name]
		a.mu.Unlock()
		if ok {
			return at
		}
		select {
		case <-a.added:
		case <-deadline:
			b.Fatalf("%s got no address within a minute", name)
		}
	}
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1))]
}

// BenchmarkAssignLatency is the time from a Service's creation (Create returned) to
// its status holding an address, as a client watching it sees: one at a time, then
// a burst created all at once (the allocator writes them one after another).
func BenchmarkAssignLatency(b *testing.B) {
	quietKlog(b)
	const single, burst = 50, 200
	rc, cs := testenv.APIServer(b)
	for range b.N {
		ns := testenv.Namespace(b, cs)
		cfg := benchConfig(ns)
		n := startNode(b, rc, testenv.UniqueName("node"), Options{Config: cfg, ReleaseOnStop: true})
		testenv.Eventually(b, "the node to lead", time.Minute, func() bool { return n.details().Leading })
		seen := watchAssignments(b, cs, ns)
		var lat []time.Duration
		for k := range single {
			name := fmt.Sprintf("one-%d", k)
			// Past the allocator's shortest gap between syncs (minSyncInterval),
			// which the sync after its previous write started: each Service alone.
			time.Sleep(2 * minSyncInterval)
			start := time.Now()
			createService(b, cs, ns, svcSpec{name: name, class: cfg.Class, policy: dual, families: v46})
			lat = append(lat, seen.wait(b, name).Sub(start))
		}
		start := time.Now()
		var wg sync.WaitGroup
		for k := range burst {
			wg.Go(func() {
				createService(b, cs, ns, svcSpec{name: fmt.Sprintf("burst-%d", k), class: cfg.Class, policy: one, families: v4})
			})
		}
		wg.Wait()
		var last time.Time
		for k := range burst {
			if at := seen.wait(b, fmt.Sprintf("burst-%d", k)); at.After(last) {
				last = at
			}
		}
		b.ReportMetric(benchfig.MS(percentile(lat, 0.5)), "median-ms")
		b.ReportMetric(benchfig.MS(percentile(lat, 0.9)), "p90-ms")
		b.ReportMetric(benchfig.MS(slices.Max(lat)), "max-ms")
		b.ReportMetric(benchfig.MS(last.Sub(start)), "burst-200-all-ms")
		b.ReportMetric(benchfig.LoadAverage1(), "load1")
		n.stop()
	}
}

// BenchmarkFailover is the time from the leader's end to the first address given by
// its successor, to a Service created at that moment: with client-go's default
// proportions of lease_duration (renew 2/3, retry 2/15), for a leader that dies (the
// Lease runs out) and one that stops (it releases the Lease).
func BenchmarkFailover(b *testing.B) {
	quietKlog(b)
	rc, cs := testenv.APIServer(b)
	for _, lease := range []time.Duration{15 * time.Second, 2 * time.Second} {
		for _, release := range []bool{false, true} {
			how := map[bool]string{false: "dies", true: "releases"}[release]
			b.Run(fmt.Sprintf("lease=%s/leader-%s", lease, how), func(b *testing.B) {
				var took []time.Duration
				for range b.N {
					ns := testenv.Namespace(b, cs)
					cfg := benchConfig(ns)
					cfg.LeaseDuration = config.Duration{Duration: lease}
					opts := Options{Config: cfg, ReleaseOnStop: release}
					a := startNode(b, rc, testenv.UniqueName("node-a"), opts)
					testenv.Eventually(b, "node a to lead", time.Minute, func() bool { return a.details().Leading })
					other := startNode(b, rc, testenv.UniqueName("node-b"), opts)
					testenv.Eventually(b, "node b to see a leading", time.Minute, func() bool { return other.details().Leader == a.name })
					seen := watchAssignments(b, cs, ns)
					start := time.Now()
					a.stop()
					createService(b, cs, ns, svcSpec{name: "new", class: cfg.Class, policy: one, families: v4})
					took = append(took, seen.wait(b, "new").Sub(start))
					other.stop()
				}
				b.ReportMetric(benchfig.MS(benchfig.Mean(took)), "failover-ms")
			})
		}
	}
}

// benchConfig answers a class of its own from pools large enough for every run.
func benchConfig(ns string) config.LoadBalancer {
	cfg := config.Default().LoadBalancer
	cfg.Enabled, cfg.DefaultClass = true, false
	cfg.Class = "bench.kube-routerd.io/" + testenv.UniqueName("lb")
	cfg.LeaseNamespace, cfg.LeaseName = ns, testenv.UniqueName("lballoc")
	cfg.IPv4Pools = []config.IPPool{config.PoolOf(netip.MustParsePrefix("10.200.0.0/16"))}
	cfg.IPv6Pools = []config.IPPool{config.PoolOf(netip.MustParsePrefix("fd00:200::/112"))}
	return cfg
}

// quietKlog drops client-go's leader election lines, which would break up the
// benchmark's result lines.
func quietKlog(b *testing.B) {
	klog.SetLogger(logr.Discard())
	b.Cleanup(klog.ClearLogger)
}
