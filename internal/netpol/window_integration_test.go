//go:build integration

package netpol

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestNewPodsPassNoDeniedPacket creates pods the hard way, over and over: the pod's
// addresses exist (as the CNI plugin leaves them) and probes in a tight loop try the
// connections its policies deny, in both directions, before the API server knows its
// IPs; then the Pod's status gets them, as kubelet writes it. Not one denied
// connection may open, before, during or after the controller's sync; the allowed one
// must open. It logs the time from the IPs in the API to the IPs in the enforced
// ledger and to the first allowed connection (KUBEROUTERD_NEW_POD_REPS pods, default 30).
func TestNewPodsPassNoDeniedPacket(t *testing.T) {
	reps := 30
	if s := os.Getenv("KUBEROUTERD_NEW_POD_REPS"); s != "" {
		var err error
		if reps, err = strconv.Atoi(s); err != nil || reps < 1 {
			t.Fatalf("KUBEROUTERD_NEW_POD_REPS=%q: want a positive number", s)
		}
	}
	w := startWindow(t, true)
	var enforced4, enforced6, allowed []time.Duration
	probes := 0
	for i := range reps {
		r := w.newPod(t, i)
		if len(r.leaks) > 0 {
			t.Fatalf("pod %d: of %d denied connections tried, some opened (a client saw it open, or the pod accepted it):\n%s", i, r.probes, countEach(r.leaks))
		}
		enforced4, enforced6 = append(enforced4, r.enforced[0]), append(enforced6, r.enforced[1])
		allowed, probes = append(allowed, r.allowed), probes+r.probes
	}
	t.Logf("%d new pods, %d denied connections tried from the moment each pod had its addresses, none opened", reps, probes)
	t.Logf("pod IP in the API -> enforced (IPv4 in the ledger): %s", spread(enforced4))
	t.Logf("pod IP in the API -> enforced (IPv6, applied after IPv4): %s", spread(enforced6))
	t.Logf("pod IP in the API -> first allowed IPv4 connection: %s", spread(allowed))
}

// TestNewPodsLeakWithoutIsolation proves that the test above would see the window:
// with isolate_pods_until_enforced off, a pod the controller has not seen yet is
// policed by nothing, and the probes get through.
func TestNewPodsLeakWithoutIsolation(t *testing.T) {
	w := startWindow(t, false)
	for i := range 3 {
		if r := w.newPod(t, i); len(r.leaks) == 0 {
			t.Fatalf("pod %d: no denied connection opened in %d tries; the probes do not see the window", i, r.probes)
		}
	}
}

// window is a cluster where namespace A denies ingress, and its pods labelled
// app=new accept TCP 80 from app=b and may only connect within A.
type window struct {
	*cluster
	ledger ipset.Interface
}

func startWindow(t *testing.T, isolate bool) *window {
	c := startClusterWith(t, func(cfg *config.NetworkPolicy) { cfg.IsolatePodsUntilEnforced = isolate })
	c.setPolicies(t,
		policy(c.nsA, "deny", nil),
		policy(c.nsA, "new-from-b", map[string]string{"app": "new"}, ingress(port(tcp, intstr.FromInt32(80)), pods(map[string]string{"app": "b"}))),
		policy(c.nsA, "new-within-a", map[string]string{"app": "new"}, types(networkingv1.PolicyTypeEgress), egress(nil, pods(nil))),
	)
	testenv.Eventually(t, "default deny ingress in A in force", 30*time.Second, func() bool {
		return !dials(c.pods["B/c"].NS, netip.AddrPortFrom(c.pods["A/a"].IPv4, 80), 200*time.Millisecond)
	})
	sets, err := ipset.NewAt(c.node.Handle)
	if err != nil {
		t.Fatal(err)
	}
	return &window{cluster: c, ledger: sets}
}

// newPodRun is what one new pod saw.
type newPodRun struct {
	probes   int              // denied connections tried
	leaks    []string         // denied connections that opened
	enforced [2]time.Duration // IPv4 and IPv6 addresses in their ledger
	allowed  time.Duration
}

// denyProbers is how many probers try each denied connection at once: with
// deniedTimeout, a new attempt starts about every 15 ms per connection.
const (
	denyProbers   = 3
	deniedTimeout = 50 * time.Millisecond
)

func (w *window) newPod(t *testing.T, i int) newPodRun {
	t.Helper()
	name := fmt.Sprintf("new%d", i)
	labels := map[string]string{"app": "new"}
	// The Pod exists before its sandbox does; its IPs come later.
	testenv.CreatePod(t, w.cs, testenv.PodSpec{Namespace: w.nsA, Name: name, NodeName: w.node.Name, HostIP: w.node.IPv4.String(), Labels: labels})
	p := w.node.AddPod(t, tnetns.PodOptions{Namespace: w.nsA, Name: name, Labels: labels, Unregistered: true})
	var (
		mu  sync.Mutex
		run newPodRun
	)
	leak := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		run.leaks = append(run.leaks, fmt.Sprintf(format, args...))
	}
	c := w.pods["B/c"]
	acceptFrom(t, p.NS, 80, func(from netip.Addr) {
		if from == c.IPv4 || from == c.IPv6 {
			leak("%s accepted a connection from %s", name, from)
		}
	})
	// The node reaches the pod (its own connections are never isolated) once the
	// bridge forwards on the pod's port, which it starts doing when the kernel gets
	// round to the veth's carrier (up to a second): from then on, a probe that fails
	// was blocked by a rule.
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		testenv.Eventually(t, "the node reaches "+name+" at "+a.String(), 30*time.Second, func() bool {
			return dials(w.node.NS, netip.AddrPortFrom(a, 80), 200*time.Millisecond)
		})
	}

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var tried atomic.Int64
	denied := []struct {
		from *tnetns.NS
		to   netip.AddrPort
	}{
		{c.NS, netip.AddrPortFrom(p.IPv4, 80)}, // ingress: B/c is not app=b
		{c.NS, netip.AddrPortFrom(p.IPv6, 80)},
		{p.NS, netip.AddrPortFrom(c.IPv4, 80)}, // egress: B/c is not in A
		{p.NS, netip.AddrPortFrom(c.IPv6, 80)},
	}
	for _, d := range denied {
		for range denyProbers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					if dials(d.from, d.to, deniedTimeout) {
						leak("%s -> %s opened", d.from.Label, d.to)
					}
					tried.Add(1)
				}
			}()
		}
	}
	// Every denied connection is tried a few times before the API knows the pod.
	testenv.Eventually(t, "denied connections tried before the pod's IPs are in the API", 30*time.Second, func() bool {
		return tried.Load() >= int64(3*len(denied)*denyProbers)
	})

	start := time.Now()
	obj, err := w.cs.CoreV1().Pods(w.nsA).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obj.Status.PodIP = p.IPv4.String()
	obj.Status.PodIPs = []corev1.PodIP{{IP: p.IPv4.String()}, {IP: p.IPv6.String()}}
	if _, err := w.cs.CoreV1().Pods(w.nsA).UpdateStatus(context.Background(), obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	allowedAt := make(chan time.Duration, 1)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if dials(w.pods["A/b"].NS, netip.AddrPortFrom(p.IPv4, 80), 20*time.Millisecond) {
					select {
					case allowedAt <- time.Since(start):
					default:
					}
					return
				}
			}
		}()
	}
	if w.isolating() {
		// IPv4 is applied first, then IPv6: each family's ledger gets the pod in turn.
		for i, family := range []struct {
			addr netip.Addr
			tag  string
		}{{p.IPv4, "4"}, {p.IPv6, "6"}} {
			for !w.inLedger(t, family.addr, family.tag) {
				if time.Since(start) > 30*time.Second {
					t.Fatalf("%s: %s never entered the enforced ledger", name, family.addr)
				}
				time.Sleep(time.Millisecond)
			}
			run.enforced[i] = time.Since(start)
		}
	}
	select {
	case run.allowed = <-allowedAt:
	case <-time.After(30 * time.Second):
		stop()
		wg.Wait()
		t.Fatalf("%s: app=b never connected to it, which its policy allows", name)
	}
	// And on, past the sync.
	before := tried.Load()
	testenv.Eventually(t, "denied connections tried after the pod is enforced", 30*time.Second, func() bool {
		return tried.Load() >= before+int64(3*len(denied)*denyProbers)
	})
	stop()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	run.probes = int(tried.Load())
	return run
}

func (w *window) isolating() bool { return w.ctrl.cfg.IsolatePodsUntilEnforced }

func (w *window) inLedger(t *testing.T, a netip.Addr, family string) bool {
	s, err := w.ledger.List(enforcedSet + family)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(s.Entries, a.String())
}

// dials reports whether a TCP connection from ns to target opens within timeout.
func dials(ns *tnetns.NS, target netip.AddrPort, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := ns.Do(func() error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", target.String())
		if err == nil {
			conn.Close()
		}
		return err
	})
	return err == nil
}

// acceptFrom listens on port in ns (both families) and reports the source of every
// connection it accepts, until the test ends.
func acceptFrom(t *testing.T, ns *tnetns.NS, port int, accepted func(netip.Addr)) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", ":"+strconv.Itoa(port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted(conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
			conn.Close()
		}
	}()
}

// countEach lists the distinct lines of lines, each with how often it occurs.
func countEach(lines []string) string {
	counts := map[string]int{}
	for _, l := range lines {
		counts[l]++
	}
	var out strings.Builder
	for _, l := range slices.Sorted(maps.Keys(counts)) {
		fmt.Fprintf(&out, "  %dx %s\n", counts[l], l)
	}
	return out.String()
}

// spread is the median and the maximum of ds.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("median %v, max %v (%d pods)", s[len(s)/2].Round(time.Millisecond/10), s[len(s)-1].Round(time.Millisecond/10), len(s))
}
