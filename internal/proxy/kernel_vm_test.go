//go:build vm

package proxy

import (
	"net/netip"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/conntrack"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/dummy"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// inNewNetns runs the rest of the test on this goroutine's OS thread inside a fresh
// network namespace, which vanishes with the thread, so the VM's own network is never
// touched.
func inNewNetns(t *testing.T) {
	t.Helper()
	runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("creating network namespace: %v", err)
	}
	t.Cleanup(func() {
		ns.Close()
		_ = netns.Set(orig)
		orig.Close()
	})
}

func TestKernelIPVSSyncRepairAndForeignServices(t *testing.T) {
	testenv.RequireVM(t)
	inNewNetns(t)
	k, err := ipvs.NewKernel()
	if err != nil {
		testenv.Unavailable(t, "no IPVS: %v", err)
	}
	t.Cleanup(k.Close)
	dp := Dataplane{IPVS: k, Ledger: &ipvs.IPSetLedger{}, Dummy: &dummy.Link{Name: "kube-dummy-if"}, Conntrack: conntrack.Kernel{}}
	foreign := ipvs.Service{Key: ipvs.Key{Addr: netip.MustParseAddr("10.0.0.99"), Proto: ipvs.TCP, Port: 80}, Scheduler: "wlc"}
	if err := k.AddService(foreign); err != nil {
		t.Fatal(err)
	}

	h := newHarnessOn(t, dp)
	h.store(namedService("web", "10.96.0.10", func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	}))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}))
	h.store(namedService("dns", "fd00:96::53", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolUDP }))
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

	// A second full sync finds nothing to do.
	h.sync(true)
	if h.c.rec.writes != 0 {
		t.Errorf("idle full sync made %d kernel writes", h.c.rec.writes)
	}

	// A restarted controller (new state, same kernel) finds nothing to do either.
	h2 := newHarnessOn(t, dp)
	h2.store(namedService("web", "10.96.0.10", func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	}))
	h2.store(sliceFor("web", ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}))
	h2.store(namedService("dns", "fd00:96::53", func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolUDP }))
	h2.sync(true)
	if h2.c.rec.writes != 0 {
		t.Errorf("full sync after restart made %d kernel writes", h2.c.rec.writes)
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
	if err := cleanup(t.Context(), dp); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	list, err := k.Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0] != foreign {
		t.Errorf("after cleanup IPVS holds %v, want only the foreign service", list)
	}
}
