package routing

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

func TestReconcileKernel(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	k := route.NewFake(netip.MustParsePrefix("10.0.0.0/24"))
	never := func(route.Route) bool { return false }
	tun := route.Tunnel{Name: "krt-0a000103", Local: netip.MustParseAddr("10.0.0.1"), Remote: netip.MustParseAddr("10.0.1.3")}
	routes := []route.Route{
		{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.2")},
		{Dst: netip.MustParsePrefix("10.244.3.0/24"), Device: tun.Name},
	}
	n, _, err := reconcileKernel(k, route.State{Routes: routes, Tunnels: []route.Tunnel{tun}}, never, log)
	if err != nil || n != 2 {
		t.Fatalf("first sync: installed %d, err %v", n, err)
	}
	want := "tunnel krt-0a000103 ipip local 10.0.0.1 remote 10.0.1.3\nroute 10.244.2.0/24 via 10.0.0.2\nroute 10.244.3.0/24 dev krt-0a000103\n"
	if got := k.Dump(); got != want {
		t.Fatalf("kernel after first sync:\n%s\nwant\n%s", got, want)
	}

	t.Run("a sync with nothing to do changes nothing", func(t *testing.T) {
		before := k.Calls
		if _, _, err := reconcileKernel(k, route.State{Routes: routes, Tunnels: []route.Tunnel{tun}}, never, log); err != nil {
			t.Fatal(err)
		}
		if k.Calls != before {
			t.Errorf("%d kernel calls for an unchanged state", k.Calls-before)
		}
	})

	t.Run("a kept route survives with its tunnel", func(t *testing.T) {
		keep := func(r route.Route) bool { return r.Device == tun.Name }
		if _, _, err := reconcileKernel(k, route.State{}, keep, log); err != nil {
			t.Fatal(err)
		}
		want := "tunnel krt-0a000103 ipip local 10.0.0.1 remote 10.0.1.3\nroute 10.244.3.0/24 dev krt-0a000103\n"
		if got := k.Dump(); got != want {
			t.Errorf("got\n%s\nwant\n%s", got, want)
		}
	})

	t.Run("withdrawn routes and unused tunnels are removed", func(t *testing.T) {
		if _, _, err := reconcileKernel(k, route.State{}, never, log); err != nil {
			t.Fatal(err)
		}
		if got := k.Dump(); got != "" {
			t.Errorf("kernel not empty:\n%s", got)
		}
	})

	t.Run("cleanup removes everything of ours", func(t *testing.T) {
		if _, _, err := reconcileKernel(k, route.State{Routes: routes, Tunnels: []route.Tunnel{tun}}, never, log); err != nil {
			t.Fatal(err)
		}
		if err := cleanupKernel(k, config.Default().Routing); err != nil {
			t.Fatal(err)
		}
		if got := k.Dump(); got != "" {
			t.Errorf("kernel not empty:\n%s", got)
		}
	})
}

// A route via a next hop on no connected network (a node in another subnet with the
// overlay off) cannot be installed by retrying: it is reported, not failed, and the
// routes beside it are installed.
func TestReconcileKernelReportsUnreachableNextHops(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	k := route.NewFake(netip.MustParsePrefix("10.0.0.0/24"))
	offLink := route.Route{Dst: netip.MustParsePrefix("10.244.3.0/24"), Gateway: netip.MustParseAddr("10.0.1.3")}
	routes := []route.Route{
		{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.2")},
		offLink,
	}
	n, unreachable, err := reconcileKernel(k, route.State{Routes: routes}, func(route.Route) bool { return false }, log)
	if err != nil || n != 1 {
		t.Fatalf("installed %d, err %v; want 1 and no error", n, err)
	}
	if len(unreachable) != 1 || unreachable[0] != offLink {
		t.Fatalf("unreachable = %v; want [%v]", unreachable, offLink)
	}
	if got, want := k.Dump(), "route 10.244.2.0/24 via 10.0.0.2\n"; got != want {
		t.Fatalf("kernel:\n%s\nwant\n%s", got, want)
	}
	if got := withoutRoutes(routes, unreachable); len(got) != 1 || got[0] != routes[0] {
		t.Fatalf("withoutRoutes = %v", got)
	}
}

// VXLAN: the device, its peers and the onlink routes go in together; a peer whose
// node left is removed alone, a kept route keeps its peer, and the device goes with
// the last route. FOU opens its receive ports, which only cleanup closes, and only
// the configured one.
func TestReconcileKernelVXLANAndFOU(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	k := route.NewFake(netip.MustParsePrefix("10.0.0.0/24"))
	never := func(route.Route) bool { return false }
	node := func(a string) netip.Addr { return netip.MustParseAddr(a) }
	dev := route.Tunnel{Name: route.VXLANName(false), Encap: route.EncapVXLAN, Local: node("10.0.0.1"), Port: 4789, VNI: 1}
	peerOf := func(a string) route.VXLANPeer {
		return route.VXLANPeer{Device: dev.Name, Node: node(a), MAC: route.VXLANMAC(node(a))}
	}
	routeTo := func(dst, via string) route.Route {
		return route.Route{Dst: netip.MustParsePrefix(dst), Gateway: node(via), Device: dev.Name}
	}
	two := route.State{Tunnels: []route.Tunnel{dev}, Peers: []route.VXLANPeer{peerOf("10.0.1.3"), peerOf("10.0.2.4")},
		Routes: []route.Route{routeTo("10.244.3.0/24", "10.0.1.3"), routeTo("10.244.4.0/24", "10.0.2.4")}}
	if n, _, err := reconcileKernel(k, two, never, log); err != nil || n != 2 {
		t.Fatalf("first sync: installed %d, err %v", n, err)
	}
	if got := k.Dump(); got != two.Dump() {
		t.Fatalf("got\n%s\nwant\n%s", got, two.Dump())
	}
	before := k.Calls
	if _, _, err := reconcileKernel(k, two, never, log); err != nil || k.Calls != before {
		t.Fatalf("an unchanged state made %d kernel calls (err %v)", k.Calls-before, err)
	}

	one := route.State{Tunnels: two.Tunnels, Peers: two.Peers[:1], Routes: two.Routes[:1]}
	if _, _, err := reconcileKernel(k, one, never, log); err != nil {
		t.Fatal(err)
	}
	if got := k.Dump(); got != one.Dump() {
		t.Fatalf("after a node left: got\n%s\nwant\n%s", got, one.Dump())
	}

	keep := func(r route.Route) bool { return r.Gateway == node("10.0.1.3") }
	if _, _, err := reconcileKernel(k, route.State{}, keep, log); err != nil {
		t.Fatal(err)
	}
	if got := k.Dump(); got != one.Dump() {
		t.Fatalf("a kept route lost its device or peer: got\n%s\nwant\n%s", got, one.Dump())
	}
	if _, _, err := reconcileKernel(k, route.State{}, never, log); err != nil {
		t.Fatal(err)
	}
	if got := k.Dump(); got != "" {
		t.Fatalf("kernel not empty:\n%s", got)
	}

	tun := route.Tunnel{Name: route.TunnelName(node("10.0.1.3")), Encap: route.EncapFOU, Local: node("10.0.0.1"), Remote: node("10.0.1.3"), Port: 6000}
	fou := route.State{FOUPorts: []route.FOUPort{{Port: 6000}}, Tunnels: []route.Tunnel{tun},
		Routes: []route.Route{{Dst: netip.MustParsePrefix("10.244.3.0/24"), Device: tun.Name}}}
	if _, _, err := reconcileKernel(k, fou, never, log); err != nil {
		t.Fatal(err)
	}
	if got := k.Dump(); got != fou.Dump() {
		t.Fatalf("FOU: got\n%s\nwant\n%s", got, fou.Dump())
	}
	if _, _, err := reconcileKernel(k, route.State{}, never, log); err != nil {
		t.Fatal(err)
	}
	if got, want := k.Dump(), "fou port 6000 ipproto 4 (IPv4)\n"; got != want {
		t.Fatalf("without tunnels the FOU port stays open until cleanup: got\n%s\nwant\n%s", got, want)
	}
	if err := k.AddFOUPort(route.FOUPort{Port: 7000}); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default().Routing
	cfg.OverlayEncapPort = 6000
	if err := cleanupKernel(k, cfg); err != nil {
		t.Fatal(err)
	}
	if got, want := k.Dump(), "fou port 7000 ipproto 4 (IPv4)\n"; got != want {
		t.Fatalf("cleanup closes only the configured FOU port: got\n%s\nwant\n%s", got, want)
	}
}
