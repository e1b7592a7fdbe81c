package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/conntrack"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/dummy"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/podtunnel"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// fakeKernel is the fake dataplane; it outlives controllers to model restarts.
type fakeKernel struct {
	ipvs       *ipvs.Fake
	ipsets     *ipset.Fake
	ledger     *ipvs.IPSetLedger
	dummy      *dummy.Fake
	conntrack  *conntrack.Fake
	ipt4, ipt6 *iptables.Fake
	sysctls    *sysctl.Fake
	tunnels    *podtunnel.Fake
}

func newFakeKernel() *fakeKernel {
	sets := ipset.NewFake()
	return &fakeKernel{ipvs: ipvs.NewFake(), ipsets: sets, ledger: &ipvs.IPSetLedger{Sets: sets},
		dummy: dummy.NewFake(), conntrack: &conntrack.Fake{},
		ipt4: iptables.NewFake(ipfamily.IPv4), ipt6: iptables.NewFake(ipfamily.IPv6), sysctls: &sysctl.Fake{},
		tunnels: podtunnel.NewFake()}
}

func (k *fakeKernel) dataplane() Dataplane {
	return Dataplane{IPVS: k.ipvs, Ledger: k.ledger, Dummy: k.dummy, Conntrack: k.conntrack,
		IPSets: k.ipsets, IPTables: []iptables.Interface{k.ipt4, k.ipt6}, Sysctls: k.sysctls,
		Tunnels: k.tunnels}
}

// harness drives a controller synchronously: objects go straight into the informer
// stores and syncs are called directly, so nothing depends on timing.
type harness struct {
	t       testing.TB
	c       *Controller
	factory informers.SharedInformerFactory
	kernel  *fakeKernel
	clock   time.Time
	ports   *testPorts
}

func newHarness(t testing.TB, kernel *fakeKernel, mods ...func(*config.ServiceProxy)) *harness {
	t.Helper()
	h := newHarnessOn(t, kernel.dataplane(), mods...)
	h.kernel = kernel
	return h
}

// newHarnessOn builds a harness over any dataplane (the VM tests pass the kernel's),
// with the default config changed by mods.
func newHarnessOn(t testing.TB, dp Dataplane, mods ...func(*config.ServiceProxy)) *harness {
	t.Helper()
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	cfg := config.Default().ServiceProxy
	for _, m := range mods {
		m(&cfg)
	}
	c, err := New(daemon.Env{Informers: factory, NodeName: thisNode}, cfg, dp)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, c: c, factory: factory, clock: time.Unix(1000, 0), ports: newTestPorts()}
	c.rec.now = func() time.Time { return h.clock }
	// Health endpoints listen on 127.0.0.1, on free ports, never on the host's.
	c.listen = h.ports.listen
	t.Cleanup(c.closeHealth)
	h.store(&corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: thisNode},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "192.168.1.10"},
			{Type: corev1.NodeHostName, Address: thisNode},
		}},
	})
	return h
}

func (h *harness) indexer(obj any) cache.Indexer {
	switch obj.(type) {
	case *corev1.Service:
		return h.factory.Core().V1().Services().Informer().GetIndexer()
	case *discoveryv1.EndpointSlice, *k8s.EndpointSlice:
		return h.factory.Discovery().V1().EndpointSlices().Informer().GetIndexer()
	case *corev1.Node:
		return h.factory.Core().V1().Nodes().Informer().GetIndexer()
	}
	h.t.Fatalf("unexpected object %T", obj)
	return nil
}

// store adds or updates obj as an informer would and marks its Service dirty.
func (h *harness) store(obj any) {
	h.t.Helper()
	if err := h.indexer(obj).Update(obj); err != nil {
		h.t.Fatal(err)
	}
	h.markDirty(obj)
}

func (h *harness) remove(obj any) {
	h.t.Helper()
	if err := h.indexer(obj).Delete(obj); err != nil {
		h.t.Fatal(err)
	}
	h.markDirty(obj)
}

func (h *harness) markDirty(obj any) {
	for _, f := range []func(any) (types.NamespacedName, bool){serviceName, sliceServiceName} {
		if n, ok := f(obj); ok {
			h.c.changes.Mark(n)
		}
	}
}

func (h *harness) sync(full bool) {
	h.t.Helper()
	if _, err := h.c.sync(context.Background(), full); err != nil {
		h.t.Fatalf("sync(full=%v): %v", full, err)
	}
}

func (h *harness) wantIPVS(want string) {
	h.t.Helper()
	if got := h.kernel.ipvs.Dump(); strings.TrimSpace(got) != strings.TrimSpace(want) {
		h.t.Errorf("IPVS table:\n%s\nwant:\n%s", got, want)
	}
}

func (h *harness) wantWrites(want ...string) {
	h.t.Helper()
	got := h.kernel.ipvs.Writes()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		h.t.Errorf("IPVS writes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	h.kernel.ipvs.ResetWrites()
}

func namedService(name, clusterIP string, mods ...func(*corev1.Service)) *corev1.Service {
	s := service(mods...)
	s.Name = name
	s.Spec.ClusterIP, s.Spec.ClusterIPs = clusterIP, []string{clusterIP}
	return s
}

func sliceFor(name string, eps ...ep) *discoveryv1.EndpointSlice {
	s := v4(eps...)
	s.Name = name + "-abc"
	s.Labels[discoveryv1.LabelServiceName] = name
	return s
}

func TestSyncProgramsServicesAndRestartChangesNothing(t *testing.T) {
	kernel := newFakeKernel()
	h := newHarness(t, kernel)
	h.store(namedService("web", "10.96.0.10", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	}))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}))
	h.store(namedService("db", "10.96.0.20"))
	h.store(sliceFor("db", ep{ip: "10.1.0.3"}))
	h.sync(true)
	h.wantIPVS(`
10.96.0.10:80/TCP rr
  -> 10.1.0.1:8080 weight 1
  -> 10.1.0.2:8080 weight 1
10.96.0.20:80/TCP rr
  -> 10.1.0.3:8080 weight 1
192.168.1.10:30080/TCP rr
  -> 10.1.0.1:8080 weight 1
  -> 10.1.0.2:8080 weight 1`)
	if got, _ := kernel.dummy.Addrs(); len(got) != 2 {
		t.Errorf("dummy addresses = %v, want the two ClusterIPs", got)
	}
	kernel.ipvs.ResetWrites()
	dummyChanges := kernel.dummy.Changes

	h.sync(true)
	h.wantWrites()

	// A restart (a new controller over the same kernel) changes nothing either.
	h2 := newHarness(t, kernel)
	for _, o := range []any{
		namedService("web", "10.96.0.10", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
		}),
		sliceFor("web", ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}),
		namedService("db", "10.96.0.20"), sliceFor("db", ep{ip: "10.1.0.3"}),
	} {
		h2.store(o)
	}
	h2.sync(true)
	h2.wantWrites()
	if kernel.dummy.Changes != dummyChanges {
		t.Errorf("restart changed dummy interface addresses")
	}
}

func TestPartialSyncTouchesOnlyTheChangedService(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	for i, ip := range []string{"10.96.0.10", "10.96.0.11", "10.96.0.12"} {
		name := []string{"a", "b", "c"}[i]
		h.store(namedService(name, ip))
		h.store(sliceFor(name, ep{ip: "10.1.0.1"}))
	}
	h.sync(true)
	h.kernel.ipvs.ResetWrites()

	h.store(sliceFor("b", ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.9"}))
	h.sync(false)
	h.wantWrites("add destination 10.96.0.11:80/TCP -> 10.1.0.9:8080 weight 1")

	h.store(namedService("b", "10.96.0.11", func(s *corev1.Service) { s.Annotations[annotationScheduler] = "lc" }))
	h.sync(false)
	h.wantWrites("update service 10.96.0.11:80/TCP lc")

	h.remove(namedService("c", "10.96.0.12"))
	h.sync(false)
	h.wantWrites("delete service 10.96.0.12:80/TCP")
	if got, _ := h.kernel.dummy.Addrs(); len(got) != 2 {
		t.Errorf("dummy addresses = %v, want the deleted Service's VIP gone", got)
	}
}

func TestServiceThatGainsAServiceProxyNameLosesItsVirtualServices(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	h.store(namedService("web", "10.96.0.10"))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}))
	h.store(namedService("db", "10.96.0.20"))
	h.store(sliceFor("db", ep{ip: "10.1.0.3"}))
	h.sync(true)
	h.kernel.ipvs.ResetWrites()

	h.store(namedService("web", "10.96.0.10", func(s *corev1.Service) {
		s.Labels = map[string]string{k8s.LabelServiceProxyName: "other-proxy"}
	}))
	h.sync(false)
	h.wantWrites("delete service 10.96.0.10:80/TCP")
	if got, _ := h.kernel.dummy.Addrs(); len(got) != 1 {
		t.Errorf("dummy addresses = %v, want only db's VIP", got)
	}
	h.sync(true)
	h.wantWrites()

	// The label goes again: the Service is ours once more.
	h.store(namedService("web", "10.96.0.10"))
	h.sync(false)
	h.wantIPVS(`
10.96.0.10:80/TCP rr
  -> 10.1.0.1:8080 weight 1
10.96.0.20:80/TCP rr
  -> 10.1.0.3:8080 weight 1`)
}

func TestFullSyncRepairsDriftAndLeavesForeignServicesAlone(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	h.store(namedService("web", "10.96.0.10"))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}))
	foreign := ipvs.Service{Key: ipvs.Key{Addr: netip.MustParseAddr("10.0.0.99"), Proto: ipvs.TCP, Port: 80}, Scheduler: "wlc"}
	if err := h.kernel.ipvs.AddService(foreign); err != nil {
		t.Fatal(err)
	}
	h.sync(true)

	web := ipvs.Key{Addr: netip.MustParseAddr("10.96.0.10"), Proto: ipvs.TCP, Port: 80}
	if err := h.kernel.ipvs.DeleteService(web); err != nil { // someone runs ipvsadm -D
		t.Fatal(err)
	}
	h.kernel.ipvs.ResetWrites()
	h.sync(true)
	h.wantWrites("add service 10.96.0.10:80/TCP rr", "add destination 10.96.0.10:80/TCP -> 10.1.0.1:8080 weight 1")
	h.wantIPVS(`
10.0.0.99:80/TCP wlc
10.96.0.10:80/TCP rr
  -> 10.1.0.1:8080 weight 1`)
}

func TestTerminatingEndpointsDrainThenGo(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	web := ipvs.Key{Addr: netip.MustParseAddr("10.96.0.10"), Proto: ipvs.TCP, Port: 80}
	old := ipvs.DestKey{Addr: netip.MustParseAddr("10.1.0.1"), Port: 8080}
	h.store(namedService("web", "10.96.0.10"))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}))
	h.sync(true)
	h.kernel.ipvs.SetConnections(web, old, 3, 1)
	h.kernel.ipvs.ResetWrites()

	h.store(sliceFor("web", ep{ip: "10.1.0.1", ready: ptr.To(false), terminating: ptr.To(true)}, ep{ip: "10.1.0.2"}))
	h.sync(false)
	h.wantWrites("update destination 10.96.0.10:80/TCP -> 10.1.0.1:8080 weight 0")

	// Still connected: kept. Gone from the slice entirely: still drained, not cut.
	h.store(sliceFor("web", ep{ip: "10.1.0.2"}))
	h.sync(false)
	h.wantWrites()

	h.kernel.ipvs.SetConnections(web, old, 0, 0)
	h.sync(false)
	h.wantWrites("delete destination 10.96.0.10:80/TCP -> 10.1.0.1:8080")
}

func TestDrainingEndsAfterTheGracePeriod(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	web := ipvs.Key{Addr: netip.MustParseAddr("10.96.0.10"), Proto: ipvs.TCP, Port: 80}
	old := ipvs.DestKey{Addr: netip.MustParseAddr("10.1.0.1"), Port: 8080}
	h.store(namedService("web", "10.96.0.10"))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}))
	h.sync(true)
	h.kernel.ipvs.SetConnections(web, old, 5, 0)
	h.store(sliceFor("web", ep{ip: "10.1.0.2"}))
	h.sync(false)
	h.kernel.ipvs.ResetWrites()

	h.clock = h.clock.Add(h.c.cfg.GracefulTerminationTimeout.Duration)
	h.sync(false)
	h.wantWrites("delete destination 10.96.0.10:80/TCP -> 10.1.0.1:8080")
}

func TestRemovedUDPEndpointLosesItsConntrackEntries(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	udp := func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolUDP }
	udpSlice := func(eps ...ep) *discoveryv1.EndpointSlice {
		s := sliceFor("dns", eps...)
		s.Ports[0].Protocol = ptr.To(corev1.ProtocolUDP)
		return s
	}
	h.store(namedService("dns", "10.96.0.10", udp))
	h.store(udpSlice(ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}))
	h.sync(true)
	// IPVS still counts the client's flow: a UDP endpoint is not drained but removed.
	dns := ipvs.Key{Addr: netip.MustParseAddr("10.96.0.10"), Proto: ipvs.UDP, Port: 80}
	h.kernel.ipvs.SetConnections(dns, ipvs.DestKey{Addr: netip.MustParseAddr("10.1.0.1"), Port: 8080}, 0, 1)
	h.kernel.ipvs.ResetWrites()
	h.store(udpSlice(ep{ip: "10.1.0.2"}))
	h.sync(false)
	h.wantWrites("delete destination 10.96.0.10:80/UDP -> 10.1.0.1:8080")
	want := conntrack.Flow{ServiceAddr: netip.MustParseAddr("10.96.0.10"), ServicePort: 80, Endpoint: netip.MustParseAddr("10.1.0.1")}
	if got := h.kernel.conntrack.Deleted(); len(got) != 1 || got[0] != want {
		t.Errorf("conntrack deletions = %v, want [%v]", got, want)
	}
}

func TestMalformedAnnotationKeepsWhatWasProgrammed(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	h.store(namedService("web", "10.96.0.10"))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}))
	h.store(namedService("db", "10.96.0.20"))
	h.sync(true)
	h.kernel.ipvs.ResetWrites()

	h.store(namedService("web", "10.96.0.10", func(s *corev1.Service) { s.Annotations[annotationScheduler] = "bogus" }))
	h.store(sliceFor("web", ep{ip: "10.1.0.5"}))
	h.store(sliceFor("db", ep{ip: "10.1.0.3"}))
	h.sync(false)
	h.sync(true) // a full resync keeps the frozen Service too
	h.wantWrites("add destination 10.96.0.20:80/TCP -> 10.1.0.3:8080 weight 1")
	h.wantIPVS(`
10.96.0.10:80/TCP rr
  -> 10.1.0.1:8080 weight 1
10.96.0.20:80/TCP rr
  -> 10.1.0.3:8080 weight 1`)
}

func TestStaleLedgerRecordsAreDropped(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	// A crash between recording and creating leaves a record without a service.
	stale := ipvs.Key{Addr: netip.MustParseAddr("10.96.9.9"), Proto: ipvs.TCP, Port: 443}
	if err := h.kernel.ledger.AddAll([]ipvs.Key{stale})[0]; err != nil {
		t.Fatal(err)
	}
	h.sync(true)
	if keys, _ := h.kernel.ledger.Keys(); len(keys) != 0 {
		t.Errorf("ledger = %v, want empty", keys)
	}
}

// failingLedger refuses to record one key, as a full ipset would.
type failingLedger struct {
	ipvs.Ledger
	refuse ipvs.Key
}

func (l failingLedger) AddAll(keys []ipvs.Key) []error {
	errs := l.Ledger.AddAll(slices.DeleteFunc(slices.Clone(keys), func(k ipvs.Key) bool { return k == l.refuse }))
	out := make([]error, len(keys))
	for i, k := range keys {
		if k == l.refuse {
			out[i] = fmt.Errorf("recording %s: set is full", k)
			continue
		}
		out[i], errs = errs[0], errs[1:]
	}
	return out
}

func TestServicesTheLedgerCannotRecordAreNotCreated(t *testing.T) {
	kernel := newFakeKernel()
	dp := kernel.dataplane()
	refused := ipvs.Key{Addr: netip.MustParseAddr("10.96.0.20"), Proto: ipvs.TCP, Port: 80}
	dp.Ledger = failingLedger{Ledger: kernel.ledger, refuse: refused}
	h := newHarnessOn(t, dp)
	h.kernel = kernel
	h.store(namedService("web", "10.96.0.10"))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}))
	h.store(namedService("db", "10.96.0.20"))
	h.store(sliceFor("db", ep{ip: "10.1.0.3"}))
	_, err := h.c.sync(context.Background(), true)
	if err == nil || !strings.Contains(err.Error(), refused.String()) {
		t.Fatalf("sync: got %v, want an error naming %s", err, refused)
	}
	// A crash now must not leave a service of ours that the ledger does not know.
	h.wantIPVS(`
10.96.0.10:80/TCP rr
  -> 10.1.0.1:8080 weight 1`)
}

func TestFullSyncSendsIPVSChangesInOneBatch(t *testing.T) {
	h, _ := benchHarness(t, 200)
	h.sync(true)
	if n := len(h.kernel.ipvs.Writes()); n != 200*11 {
		t.Fatalf("%d IPVS writes, want %d", n, 200*11)
	}
	if n := h.kernel.ipvs.ApplyCalls(); n != 1 {
		t.Errorf("the writes went out in %d batches, want 1", n)
	}
}

func TestCleanupRemovesOnlyWhatIsOurs(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	h.store(namedService("web", "10.96.0.10"))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}))
	foreign := ipvs.Service{Key: ipvs.Key{Addr: netip.MustParseAddr("10.0.0.99"), Proto: ipvs.TCP, Port: 80}, Scheduler: "wlc"}
	if err := h.kernel.ipvs.AddService(foreign); err != nil {
		t.Fatal(err)
	}
	h.sync(true)
	if err := cleanup(context.Background(), h.kernel.dataplane(), slog.Default()); err != nil {
		t.Fatal(err)
	}
	h.wantIPVS("10.0.0.99:80/TCP wlc")
	if _, err := h.kernel.dummy.Addrs(); err == nil {
		t.Error("dummy interface still exists after cleanup")
	}
}
