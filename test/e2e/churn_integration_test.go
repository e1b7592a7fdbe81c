//go:build integration

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// churnDuration is how long TestSustainedChurn changes objects; KUBEROUTERD_CHURN
// (a Go duration) overrides it for longer soak runs.
func churnDuration(t *testing.T) time.Duration {
	if s := os.Getenv("KUBEROUTERD_CHURN"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("KUBEROUTERD_CHURN=%q: %v", s, err)
		}
		return d
	}
	return 2 * time.Minute
}

// churner makes one kind of change at a fixed rate until its context ends, and
// counts what the API server accepted.
type churner struct {
	cs      kubernetes.Interface
	ns      string
	node    *netns.Node
	rng     *rand.Rand
	changes atomic.Int64
	errs    atomic.Int64
	lastErr atomic.Value
}

func (c *churner) count(err error) {
	if err != nil {
		c.errs.Add(1)
		c.lastErr.Store(err.Error())
		return
	}
	c.changes.Add(1)
}

// every calls step perSecond times a second until ctx ends. Each step gets its own
// deadline, so the end of the churn does not cut API calls short and count them as failed.
func every(ctx context.Context, wg *sync.WaitGroup, perSecond int, step func(ctx context.Context)) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(perSecond))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				stepCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				step(stepCtx)
				cancel()
			}
		}
	}()
}

// ring keeps at most size live object names, handing back the oldest to delete.
type ring struct {
	names []string
	size  int
}

func (r *ring) add(name string) (evicted string) {
	r.names = append(r.names, name)
	if len(r.names) > r.size {
		evicted, r.names = r.names[0], r.names[1:]
	}
	return evicted
}

func (r *ring) pick(rng *rand.Rand) (string, bool) {
	if len(r.names) == 0 {
		return "", false
	}
	return r.names[rng.IntN(len(r.names))], true
}

// pods creates Running API-only pods on the churner's node, deletes the oldest once
// 50 live, and relabels a live one every other step.
func (c *churner) pods() func(ctx context.Context) {
	live := &ring{size: 50}
	seq := 0
	base := c.node.PodCIDRv4.Addr().As4()
	return func(ctx context.Context) {
		seq++
		if seq%2 == 0 {
			if name, ok := live.pick(c.rng); ok {
				patch := fmt.Sprintf(`{"metadata":{"labels":{"app":"%d"}}}`, c.rng.IntN(10))
				_, err := c.cs.CoreV1().Pods(c.ns).Patch(ctx, name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{})
				c.count(err)
			}
			return
		}
		name := fmt.Sprintf("churn-%d", seq)
		ip := netip.AddrFrom4([4]byte{base[0], base[1], base[2], byte(100 + seq%150)})
		want := testenv.PodObject(testenv.PodSpec{
			Namespace: c.ns, Name: name, NodeName: c.node.Name, IPs: []string{ip.String()},
			HostIP: c.node.IPv4.String(), Labels: map[string]string{"app": strconv.Itoa(c.rng.IntN(10))},
			Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: int32(8000 + c.rng.IntN(4))}},
		})
		created, err := c.cs.CoreV1().Pods(c.ns).Create(ctx, want, metav1.CreateOptions{})
		if err == nil {
			created.Status = want.Status
			_, err = c.cs.CoreV1().Pods(c.ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		}
		c.count(err)
		if err != nil {
			return
		}
		if old := live.add(name); old != "" {
			c.count(testenv.DeletePod(ctx, c.cs, c.ns, old))
		}
	}
}

// policies creates ingress policies between the churned apps (a named port or a
// number), rewrites a live one's port every third step, and deletes the oldest once 40 live.
func (c *churner) policies() func(ctx context.Context) {
	live := &ring{size: 40}
	seq := 0
	api := c.cs.NetworkingV1().NetworkPolicies(c.ns)
	return func(ctx context.Context) {
		seq++
		if seq%3 == 0 {
			if name, ok := live.pick(c.rng); ok {
				patch := fmt.Sprintf(`{"spec":{"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"%d"}}}],"ports":[{"port":%d}]}]}}`, c.rng.IntN(10), 1000+c.rng.IntN(100))
				_, err := api.Patch(ctx, name, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{})
				c.count(err)
			}
			return
		}
		port := intstr.FromInt32(int32(1000 + c.rng.IntN(100)))
		if c.rng.IntN(2) == 0 {
			port = intstr.FromString("web")
		}
		name := fmt.Sprintf("churn-%d", seq)
		pol := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": strconv.Itoa(c.rng.IntN(10))}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": strconv.Itoa(c.rng.IntN(10))}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
				}},
			},
		}
		_, err := api.Create(ctx, pol, metav1.CreateOptions{})
		c.count(err)
		if err != nil {
			return
		}
		if old := live.add(name); old != "" {
			c.count(api.Delete(ctx, old, metav1.DeleteOptions{}))
		}
	}
}

// services creates ClusterIP Services with an EndpointSlice, moves a live slice's
// endpoints every other step, and deletes the oldest Service and slice once 30 live.
func (c *churner) services() func(ctx context.Context) {
	live := &ring{size: 30}
	seq := 0
	base := c.node.PodCIDRv4.Addr().As4()
	slice := func(name string) *discoveryv1.EndpointSlice {
		port, proto := int32(80), corev1.ProtocolTCP
		s := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: c.ns, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Port: &port, Protocol: &proto}},
		}
		for range 1 + c.rng.IntN(5) {
			ip := netip.AddrFrom4([4]byte{base[0], base[1], base[2], byte(100 + c.rng.IntN(150))})
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip.String()}, NodeName: &c.node.Name})
		}
		return s
	}
	return func(ctx context.Context) {
		seq++
		slices := c.cs.DiscoveryV1().EndpointSlices(c.ns)
		services := c.cs.CoreV1().Services(c.ns)
		if seq%2 == 0 {
			if name, ok := live.pick(c.rng); ok {
				_, err := slices.Update(ctx, slice(name), metav1.UpdateOptions{})
				c.count(err)
			}
			return
		}
		name := fmt.Sprintf("churn-%d", seq)
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
		}
		_, err := services.Create(ctx, svc, metav1.CreateOptions{})
		if err == nil {
			_, err = slices.Create(ctx, slice(name), metav1.CreateOptions{})
		}
		c.count(err)
		if err != nil {
			return
		}
		if old := live.add(name); old != "" {
			err := services.Delete(ctx, old, metav1.DeleteOptions{})
			if err == nil {
				err = slices.Delete(ctx, old, metav1.DeleteOptions{})
			}
			c.count(err)
		}
	}
}

// watchdogWatch records the gaps between the daemon's WATCHDOG=1 pings until stopped.
// It owns d.Notify meanwhile; stop it before stop() or waitNotify.
type watchdogWatch struct {
	done    chan struct{}
	result  chan [2]time.Duration // {longest gap, pings}
	stopped bool
}

func watchWatchdog(d *daemon) *watchdogWatch {
	w := &watchdogWatch{done: make(chan struct{}), result: make(chan [2]time.Duration, 1)}
	go func() {
		last, longest, pings := time.Now(), time.Duration(0), 0
		for {
			select {
			case m, ok := <-d.Notify:
				if !ok {
					w.result <- [2]time.Duration{time.Hour, time.Duration(pings)}
					return
				}
				if strings.HasPrefix(m, "WATCHDOG=1") {
					longest = max(longest, time.Since(last))
					last = time.Now()
					pings++
				}
			case <-w.done:
				w.result <- [2]time.Duration{max(longest, time.Since(last)), time.Duration(pings)}
				return
			}
		}
	}()
	return w
}

func (w *watchdogWatch) stop() (longestGap time.Duration, pings int) {
	if !w.stopped {
		close(w.done)
		w.stopped = true
	}
	r := <-w.result
	return r[0], int(r[1])
}

// settledState waits until the node's kernel state (as state reads it) stops
// changing over three samples a second apart and returns it.
func settledState(t testing.TB, n *netns.Node, timeout time.Duration, state func(testing.TB, *netns.Node) string) string {
	t.Helper()
	var last string
	stable := 0
	testenv.Eventually(t, "the kernel state to stop changing", timeout, func() bool {
		s := state(t, n)
		if s == last {
			stable++
		} else {
			stable, last = 0, s
		}
		return stable >= 3
	})
	return last
}

// daemonMemory reads the daemon's resident set and Go heap in use, in MiB, and its
// goroutines.
func daemonMemory(t *testing.T, n *netns.Node) (rssMiB, heapMiB float64, goroutines int) {
	t.Helper()
	const mib = 1 << 20
	return metric(t, n, "process_resident_memory_bytes") / mib,
		metric(t, n, "go_memstats_heap_inuse_bytes") / mib,
		int(metric(t, n, "go_goroutines"))
}

// TestSustainedChurn changes pods, labels, policies, Services and EndpointSlices at
// about 20 changes a second for minutes while two daemons run. Throughout, the loops
// stay healthy, the systemd watchdog is fed, and a policy that isolates a real pod
// keeps admitting its allowed peer and refusing another. Afterwards the churned
// daemon's kernel state must equal what a clean start computes from the final
// objects (every change applied, nothing left over), and its memory and goroutines
// must be back near where they started.
func TestSustainedChurn(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	nodeA, nodeB, daemonA, daemonB, podA, podB := twoNodes(t, cs, rc, ns, "")
	podC := nodeB.AddPod(t, netns.PodOptions{Namespace: ns, Labels: map[string]string{"app": "c"}})
	daemonA.StartReady(readyTimeout)
	daemonB.StartReady(readyTimeout)
	waitRoutes(t, nodeA, nodeB)

	// The sentinel: pod a admits only app=b on 8080.
	createAdmitPolicy(t, cs, ns, "sentinel", "a", "b", 8080)
	target := netip.AddrPortFrom(podA.IPv4, 8080)
	testenv.Eventually(t, "the sentinel policy to isolate pod a", 30*time.Second, func() bool { return !probeOK(podC, target) })
	podB.ExpectReply(t, netns.TCP, target, podA.Label)
	rssBefore, heapBefore, goroutinesBefore := daemonMemory(t, nodeA)

	duration := churnDuration(t)
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	// One goroutine per kind, each with its own generator: churner.rng is not shared.
	podChurn := &churner{cs: cs, ns: ns, node: nodeA, rng: rand.New(rand.NewPCG(1, 1))}
	polChurn := &churner{cs: cs, ns: ns, node: nodeA, rng: rand.New(rand.NewPCG(2, 2))}
	svcChurn := &churner{cs: cs, ns: ns, node: nodeA, rng: rand.New(rand.NewPCG(3, 3))}
	every(ctx, &wg, 10, podChurn.pods())
	every(ctx, &wg, 6, polChurn.policies())
	every(ctx, &wg, 4, svcChurn.services())
	watchA, watchB := watchWatchdog(daemonA), watchWatchdog(daemonB)
	start := time.Now()
	samples := 0
	for ctx.Err() == nil {
		daemonA.expectHealthy(t)
		daemonB.expectHealthy(t)
		if !probeOK(podB, target) {
			t.Fatalf("after %s of churn, the allowed peer b no longer reaches pod a", time.Since(start).Round(time.Second))
		}
		if probeOK(podC, target) {
			t.Fatalf("after %s of churn, isolated pod a admits pod c", time.Since(start).Round(time.Second))
		}
		samples++
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	changes := podChurn.changes.Load() + polChurn.changes.Load() + svcChurn.changes.Load()
	for kind, ch := range map[string]*churner{"pods": podChurn, "policies": polChurn, "services": svcChurn} {
		if n := ch.errs.Load(); n > 0 {
			t.Logf("churn of %s: %d API calls failed, last: %v", kind, n, ch.lastErr.Load())
		}
	}
	if changes < int64(duration.Seconds())*10 {
		t.Fatalf("only %d changes reached the API server in %s", changes, elapsed)
	}

	churnEnd := time.Now()
	churned := settledState(t, nodeA, 3*time.Minute, fullState)
	settled := time.Since(churnEnd)
	for name, w := range map[string]*watchdogWatch{"A": watchA, "B": watchB} {
		gap, pings := w.stop()
		t.Logf("node %s: %d watchdog pings during churn, longest gap %s", name, pings, gap.Round(100*time.Millisecond))
		// The daemons run with WATCHDOG_USEC=10s: a longer silence is a systemd restart.
		if gap >= 10*time.Second {
			t.Errorf("node %s: no WATCHDOG=1 for %s during churn; systemd would have killed it", name, gap.Round(100*time.Millisecond))
		}
	}
	for _, d := range []*daemon{daemonA, daemonB} {
		if strings.Contains(d.LogText(), "controller loop stuck") {
			t.Errorf("kube-routerd on %s reported a stuck loop during churn", d.Node.Name)
		}
	}
	rssAfter, heapAfter, goroutinesAfter := daemonMemory(t, nodeA)
	t.Logf("churn: %d changes in %s (%.1f/s) with %d health and reachability checks; node A's kernel settled %s after the churn stopped",
		changes, elapsed.Round(time.Second), float64(changes)/elapsed.Seconds(), samples, settled.Round(100*time.Millisecond))
	t.Logf("memory of node A's daemon: RSS %.0f -> %.0f MiB, heap in use %.0f -> %.0f MiB, goroutines %d -> %d",
		rssBefore, rssAfter, heapBefore, heapAfter, goroutinesBefore, goroutinesAfter)
	// The live object counts are bounded, so what the daemon holds must be too.
	if heapAfter > 2*heapBefore+64 {
		t.Errorf("heap in use grew from %.0f to %.0f MiB over the churn", heapBefore, heapAfter)
	}
	if goroutinesAfter > goroutinesBefore+20 {
		t.Errorf("goroutines grew from %d to %d over the churn", goroutinesBefore, goroutinesAfter)
	}

	// Every change applied: a clean start from the final objects computes the same state.
	daemonA.Stop()
	daemonA.Run("cleanup")
	daemonA.StartReady(readyTimeout)
	waitRoutes(t, nodeA, nodeB)
	clean := settledState(t, nodeA, 3*time.Minute, fullState)
	if churned != clean {
		t.Fatalf("after churn the kernel differs from a clean start:\n%s", lineDiff(churned, clean))
	}
	podB.ExpectReply(t, netns.TCP, target, podA.Label)
	podC.ExpectBlocked(t, netns.TCP, target)
}

// lineDiff lists the lines only a has ("- ") and only b has ("+ ").
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out strings.Builder
	for l, n := range count {
		for ; n > 0; n-- {
			out.WriteString("- " + l + "\n")
		}
		for ; n < 0; n++ {
			out.WriteString("+ " + l + "\n")
		}
	}
	return out.String()
}
