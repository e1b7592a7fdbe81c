//go:build vm

package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// testKernelDataplane returns the real dataplane of a fresh network namespace.
func testKernelDataplane(t testing.TB, ns *netns.NS) Dataplane {
	t.Helper()
	dp, err := KernelDataplane(config.Default().ServiceProxy, ns.Handle)
	if err != nil {
		testenv.Unavailable(t, "kernel dataplane: %v", err)
	}
	return dp
}

func TestKernelIPVSSyncRepairAndForeignServices(t *testing.T) {
	testenv.RequireVM(t)
	ns := netns.NewNS(t, "node", "proxy")
	dp := testKernelDataplane(t, ns)
	k := dp.IPVS
	foreign := ipvs.Service{Key: ipvs.Key{Addr: netip.MustParseAddr("10.0.0.99"), Proto: ipvs.TCP, Port: 80}, Scheduler: "wlc"}
	if err := k.AddService(foreign); err != nil {
		t.Fatal(err)
	}
	objects := func(h *harness) {
		h.store(namedService("web", "10.96.0.10", func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		}))
		h.store(sliceFor("web", ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}))
		h.store(namedService("dns", "fd00:96::53", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolUDP }))
	}
	h := newHarnessOn(t, dp)
	objects(h)
	h.sync(true)

	web := ipvs.Key{Addr: netip.MustParseAddr("10.96.0.10"), Proto: ipvs.TCP, Port: 80}
	got, ok, err := k.Service(web)
	if err != nil || !ok {
		t.Fatalf("web virtual service: ok=%v err=%v", ok, err)
	}
	if want := (ipvs.Service{Key: web, Scheduler: "rr", Flags: ipvs.FlagPersistent, Timeout: 10800}); got != want {
		t.Errorf("kernel has %v, want %v", got, want)
	}
	if dests, err := k.Destinations(web); err != nil || len(dests) != 2 {
		t.Errorf("destinations = %v, %v; want two", dests, err)
	}
	if addrs, err := dp.Dummy.Addrs(); err != nil || len(addrs) != 2 {
		t.Errorf("dummy addresses = %v, %v; want the IPv4 and IPv6 ClusterIPs", addrs, err)
	}
	if out := ns.Run(t, "iptables-save", "-t", "nat"); !strings.Contains(out, "-A POSTROUTING -m comment --comment \"kube-routerd service proxy\" -j KUBE-ROUTER-POSTROUTING") {
		t.Errorf("no POSTROUTING jump:\n%s", out)
	}

	// A second full sync finds nothing to do: our rules read back exactly as written.
	h.sync(true)
	if w := h.c.writes(); w != 0 {
		t.Errorf("idle full sync made %d kernel writes", w)
	}

	// A restarted controller (new state, same kernel) finds nothing to do either.
	h2 := newHarnessOn(t, dp)
	objects(h2)
	h2.sync(true)
	if w := h2.c.writes(); w != 0 {
		t.Errorf("full sync after restart made %d kernel writes", w)
	}

	// Deleted by hand: repaired by the next full sync.
	if err := k.DeleteService(web); err != nil {
		t.Fatal(err)
	}
	h2.sync(true)
	if _, ok, _ := k.Service(web); !ok {
		t.Error("hand-deleted virtual service was not repaired")
	}

	// The Service goes away: its virtual service goes, the foreign one stays.
	h2.remove(namedService("web", "10.96.0.10"))
	h2.sync(false)
	if _, ok, _ := k.Service(web); ok {
		t.Error("virtual service of a deleted Service still exists")
	}
	if err := cleanup(t.Context(), dp, slog.Default()); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	list, err := k.Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0] != foreign {
		t.Errorf("after cleanup IPVS holds %v, want only the foreign service", list)
	}
	for _, table := range []string{"filter", "nat"} {
		if out := ns.Run(t, "iptables-save", "-t", table); strings.Contains(out, "KUBE-ROUTER") {
			t.Errorf("after cleanup %s table still has our rules:\n%s", table, out)
		}
	}
	if out := ns.Run(t, "ipset", "list", "-n"); strings.TrimSpace(out) != "" {
		t.Errorf("after cleanup ipsets remain: %s", out)
	}
}

// runningController is a proxy controller running against a real API server.
type runningController struct {
	c      *Controller
	cancel context.CancelFunc
	done   chan struct{}
}

func startController(t testing.TB, cs kubernetes.Interface, nodeName string, cfg config.ServiceProxy, dp Dataplane) *runningController {
	t.Helper()
	factory := informers.NewSharedInformerFactory(cs, 0)
	env := daemon.Env{Client: cs, Informers: factory, NodeName: nodeName, Registry: prometheus.NewRegistry()}
	c, err := New(env, cfg, dp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	rc := &runningController{c: c, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(rc.done)
		_ = c.Run(ctx, daemon.NewHeartbeat("proxy", nil))
	}()
	t.Cleanup(rc.stop)
	return rc
}

func (rc *runningController) stop() {
	rc.cancel()
	<-rc.done
}

// vmCluster starts most proxy VM tests: it skips outside the VM, and returns the
// real API server's client, a namespace for the test's objects, a link, and a node
// on it registered as a Node.
func vmCluster(t *testing.T) (kubernetes.Interface, string, *netns.Link, *netns.Node) {
	t.Helper()
	testenv.RequireVM(t)
	_, cs := testenv.APIServer(t)
	namespace := testenv.Namespace(t, cs)
	link := netns.NewLink(t)
	return cs, namespace, link, link.AddNode(t, netns.NodeOptions{Client: cs})
}

// vmWait bounds waits in the VM tests; it only keeps a broken test from hanging, and
// is generous because the VM emulates its CPU.
const vmWait = 90 * time.Second

func TestServiceProxyEndToEnd(t *testing.T) {
	cs, namespace, link, node := vmCluster(t)
	ctx := t.Context()
	outside := link.AddNode(t, netns.NodeOptions{})
	pod1 := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	pod2 := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	client := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	pod1.Serve(t, netns.TCP, 8080)
	pod2.Serve(t, netns.TCP, 8080)
	// A host service on the node listening on every address, VIPs included.
	node.Serve(t, netns.TCP, 81)

	dp := testKernelDataplane(t, node.NS)
	foreign := ipvs.Service{Key: ipvs.Key{Addr: netip.MustParseAddr("10.0.0.99"), Proto: ipvs.TCP, Port: 80}, Scheduler: "wlc"}
	if err := dp.IPVS.AddService(foreign); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default().ServiceProxy
	cfg.ClusterCIDRs = []config.Prefix{{Prefix: netip.MustParsePrefix("10.244.0.0/16")}}
	rc := startController(t, cs, node.Name, cfg, dp)

	createService := func(name string, mod func(*corev1.Service), pods ...*netns.Pod) *corev1.Service {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
		}
		if mod != nil {
			mod(svc)
		}
		svc, err := cs.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
		}
		for _, p := range pods {
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{p.IPv4.String()},
				NodeName:   ptr.To(node.Name),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: p.Name},
			})
		}
		if _, err := cs.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return svc
	}
	web := createService("web", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }, pod1, pod2)
	self := createService("self", nil, pod1)
	vip := netip.MustParseAddr(web.Spec.ClusterIP)
	webKey := ipvs.Key{Addr: vip, Proto: ipvs.TCP, Port: 80}
	selfKey := ipvs.Key{Addr: netip.MustParseAddr(self.Spec.ClusterIP), Proto: ipvs.TCP, Port: 80}
	testenv.Eventually(t, "both Services programmed", vmWait, func() bool {
		a, _ := dp.IPVS.Destinations(webKey)
		b, _ := dp.IPVS.Destinations(selfKey)
		return len(a) == 2 && len(b) == 1
	})
	target := netip.AddrPortFrom(vip, 80)

	t.Run("pod to service balances round robin and keeps the client address", func(t *testing.T) {
		seen := map[string]int{}
		for range 4 {
			r, err := client.Probe(ctx, netns.TCP, target)
			if err != nil {
				t.Fatal(err)
			}
			seen[r.Server]++
			if r.Client.Addr() != client.IPv4 {
				t.Errorf("backend saw client %s, want the pod's own address %s", r.Client.Addr(), client.IPv4)
			}
		}
		if seen[pod1.Name] != 2 || seen[pod2.Name] != 2 {
			t.Errorf("replies per backend = %v, want 2 each", seen)
		}
	})

	t.Run("NodePort from outside the cluster is reachable and masqueraded", func(t *testing.T) {
		r, err := outside.Probe(ctx, netns.TCP, netip.AddrPortFrom(node.IPv4, uint16(web.Spec.Ports[0].NodePort)))
		if err != nil {
			t.Fatal(err)
		}
		if r.Client.Addr() != node.GatewayV4 {
			t.Errorf("backend saw client %s, want the node's bridge address %s (masqueraded)", r.Client.Addr(), node.GatewayV4)
		}
	})

	t.Run("a pod reaching itself through its service is masqueraded", func(t *testing.T) {
		// The bridge sends the de-NATed reply back out the port it came in on, which
		// the CNI allows with hairpin mode on the pod's veth (kubelet's hairpin-veth).
		veth, err := node.Netlink.LinkByName(pod1.HostVeth)
		if err == nil {
			err = node.Netlink.LinkSetHairpin(veth, true)
		}
		if err != nil {
			t.Fatalf("hairpin mode on %s: %v", pod1.HostVeth, err)
		}
		rule := fmt.Sprintf("-A KUBE-ROUTER-POSTROUTING -s %s/32 -d %s/32 -j MASQUERADE", pod1.IPv4, pod1.IPv4)
		testenv.Eventually(t, "hairpin rule written", vmWait, func() bool {
			return strings.Contains(node.Run(t, "iptables-save", "-t", "nat"), rule)
		})
		r, err := pod1.Probe(ctx, netns.TCP, netip.AddrPortFrom(selfKey.Addr, 80))
		if err != nil {
			t.Fatal(err)
		}
		if r.Server != pod1.Name || r.Client.Addr() != node.GatewayV4 {
			t.Errorf("hairpin reply %v, want %s seeing %s", r, pod1.Name, node.GatewayV4)
		}
	})

	t.Run("a VIP port without a service is rejected, not served by the node", func(t *testing.T) {
		r, err := client.Probe(ctx, netns.TCP, netip.AddrPortFrom(vip, 81))
		if err == nil {
			t.Fatalf("VIP port 81 answered by %v", r)
		}
		if !strings.Contains(err.Error(), "refused") {
			t.Errorf("want connection refused (REJECT), got %v", err)
		}
	})

	t.Run("sessionAffinity ClientIP pins a client to one backend", func(t *testing.T) {
		svc, err := cs.CoreV1().Services(namespace).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
		if _, err := cs.CoreV1().Services(namespace).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, "persistence programmed", vmWait, func() bool {
			s, ok, _ := dp.IPVS.Service(webKey)
			return ok && s.Flags&ipvs.FlagPersistent != 0 && s.Timeout == 60
		})
		seen := map[string]bool{}
		for range 4 {
			r, err := client.Probe(ctx, netns.TCP, target)
			if err != nil {
				t.Fatal(err)
			}
			seen[r.Server] = true
		}
		if len(seen) != 1 {
			t.Errorf("replies came from %v, want one backend", seen)
		}
	})

	t.Run("a hand-deleted virtual service is repaired by the next full sync", func(t *testing.T) {
		if err := dp.IPVS.DeleteService(webKey); err != nil {
			t.Fatal(err)
		}
		rc.c.runner.RequestFull()
		testenv.Eventually(t, "virtual service repaired", vmWait, func() bool {
			d, _ := dp.IPVS.Destinations(webKey)
			return len(d) == 2
		})
		if _, err := client.Probe(ctx, netns.TCP, target); err != nil {
			t.Error(err)
		}
	})

	t.Run("a restart changes nothing and the foreign service is untouched", func(t *testing.T) {
		rc.stop()
		rc2 := startController(t, cs, node.Name, cfg, dp)
		testenv.Eventually(t, "first sync after restart", vmWait, func() bool { return rc2.c.Details().(Details).Services > 0 })
		if w := rc2.c.Details().(Details).LastSyncWrites; w != 0 {
			t.Errorf("first sync after restart made %d kernel writes", w)
		}
		s, ok, err := dp.IPVS.Service(foreign.Key)
		if err != nil || !ok || s != foreign {
			t.Errorf("foreign service now %v (ok=%v, err=%v), want %v", s, ok, err, foreign)
		}
	})
}
