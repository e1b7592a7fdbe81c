//go:build vm

package vmsmoke

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestIPVSRoundRobinsATCPServiceOverTwoPodBackends(t *testing.T) {
	testenv.RequireVM(t)
	_, cs := testenv.APIServer(t)
	node := netns.NewNode(t, netns.NodeOptions{Client: cs})
	k8sNS := testenv.Namespace(t, cs)
	backends := []*netns.Pod{
		node.AddPod(t, netns.PodOptions{Namespace: k8sNS, Name: "backend-a"}),
		node.AddPod(t, netns.PodOptions{Namespace: k8sNS, Name: "backend-b"}),
	}
	const backendPort = 8080
	for _, b := range backends {
		b.Serve(t, netns.TCP, backendPort)
	}

	// The VIP lives on a dummy interface, as kube-router's service proxy puts it.
	vip := netip.MustParseAddr("10.96.50.10")
	dummy := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "kube-dummy-if"}}
	if err := node.Netlink.LinkAdd(dummy); err != nil {
		t.Fatalf("add dummy interface: %v", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := node.Netlink.AddrAdd(dummy, addr); err != nil {
		t.Fatalf("add %s to %s: %v", vip, dummy.Name, err)
	}
	if err := node.Netlink.LinkSetUp(dummy); err != nil {
		t.Fatalf("set %s up: %v", dummy.Name, err)
	}

	h, err := ipvs.New(node.Path())
	if err != nil {
		t.Fatalf("IPVS handle in %s: %v", node.Name, err)
	}
	t.Cleanup(h.Close)
	svc := &ipvs.Service{
		Address:       vip.AsSlice(),
		Protocol:      syscall.IPPROTO_TCP,
		Port:          80,
		AddressFamily: syscall.AF_INET,
		Netmask:       0xffffffff,
		SchedName:     ipvs.RoundRobin,
	}
	if err := h.NewService(svc); err != nil {
		t.Fatalf("add IPVS service %s:80: %v", vip, err)
	}
	// The namespace goes away with the node, but delete what we made so a failure in
	// deleting IPVS state shows up here.
	t.Cleanup(func() {
		if err := h.DelService(svc); err != nil {
			t.Errorf("delete IPVS service %s:80: %v", vip, err)
		}
	})
	for _, b := range backends {
		dst := &ipvs.Destination{
			Address:         b.IPv4.AsSlice(),
			Port:            backendPort,
			Weight:          1,
			ConnectionFlags: ipvs.ConnectionFlagMasq,
			AddressFamily:   syscall.AF_INET,
		}
		if err := h.NewDestination(svc, dst); err != nil {
			t.Fatalf("add destination %s:%d: %v", b.IPv4, backendPort, err)
		}
	}
	dsts, err := h.GetDestinations(svc)
	if err != nil || len(dsts) != len(backends) {
		t.Fatalf("IPVS destinations of %s:80: %d, %v; want %d", vip, len(dsts), err, len(backends))
	}

	// Round robin sends consecutive new connections to alternating backends.
	target := netip.AddrPortFrom(vip, 80)
	seen := map[string]int{}
	var order []string
	for range 4 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := node.Probe(ctx, netns.TCP, target)
		cancel()
		if err != nil {
			t.Fatalf("TCP to %s after %v: %v", target, order, err)
		}
		seen[r.Server]++
		order = append(order, r.Server)
	}
	t.Logf("connections to %s answered by %v", target, order)
	if seen["backend-a"] != 2 || seen["backend-b"] != 2 {
		t.Errorf("answers %v, want each backend twice", order)
	}
	for i := 1; i < len(order); i++ {
		if order[i] == order[i-1] {
			t.Errorf("answers %v: round robin repeated %s", order, order[i])
		}
	}
}

func TestGuestListsServicesOfTheHostAPIServer(t *testing.T) {
	testenv.RequireVM(t)
	if os.Getenv(testenv.KubeconfigEnv) == "" {
		t.Fatalf("%s is not set: the VM runner must point the guest at the host's API server", testenv.KubeconfigEnv)
	}
	_, cs := testenv.APIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svcs, err := cs.CoreV1().Services(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list Services: %v", err)
	}
	var names []string
	for _, s := range svcs.Items {
		names = append(names, s.Name)
	}
	if !strings.Contains(" "+strings.Join(names, " ")+" ", " kubernetes ") {
		t.Errorf("Services in default: %v, want the kubernetes Service", names)
	}
}
