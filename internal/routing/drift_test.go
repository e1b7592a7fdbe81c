package routing

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

func TestDriftDetectorCountsOnlyWhatSomeoneElseChanged(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	never := func(route.Route) bool { return false }
	k := route.NewFake(netip.MustParsePrefix("10.0.0.0/24"))
	tun := route.Tunnel{Name: "krt-0a000103", Local: netip.MustParseAddr("10.0.0.1"), Remote: netip.MustParseAddr("10.0.1.3")}
	viaGw := route.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.2")}
	viaTun := route.Route{Dst: netip.MustParsePrefix("10.244.3.0/24"), Device: tun.Name}
	vxlan := route.Tunnel{Name: route.VXLANName(false), Encap: route.EncapVXLAN, Local: netip.MustParseAddr("10.0.0.1"), Port: 4789, VNI: 1}
	peer := route.VXLANPeer{Device: vxlan.Name, Node: netip.MustParseAddr("10.0.2.4"), MAC: route.VXLANMAC(netip.MustParseAddr("10.0.2.4"))}
	viaVXLAN := route.Route{Dst: netip.MustParsePrefix("10.244.4.0/24"), Gateway: peer.Node, Device: vxlan.Name}
	want := route.State{Routes: []route.Route{viaGw, viaTun, viaVXLAN}, Tunnels: []route.Tunnel{tun, vxlan}, Peers: []route.VXLANPeer{peer}}
	var d driftDetector
	sync := func() int {
		t.Helper()
		n, err := d.count(k, want)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = reconcileKernel(k, want, never, log)
		d.remember(want, err == nil)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	if n := sync(); n != 0 {
		t.Fatalf("first sync counted %d drifted; nothing was ours yet", n)
	}
	if n := sync(); n != 0 {
		t.Fatalf("unchanged kernel counted %d drifted", n)
	}
	// Someone deletes a route and the tunnel (which takes its route along).
	if err := k.DeleteRoute(viaGw); err != nil {
		t.Fatal(err)
	}
	if err := k.DeleteTunnel(tun.Name); err != nil {
		t.Fatal(err)
	}
	// And a VXLAN peer.
	if err := k.DeleteVXLANPeer(peer); err != nil {
		t.Fatal(err)
	}
	if n := sync(); n != 4 {
		t.Fatalf("counted %d drifted; want 4 (two routes, one tunnel, one peer)", n)
	}
	if got := k.Dump(); got != want.Dump() {
		t.Fatalf("not repaired:\n%s\nwant\n%s", got, want.Dump())
	}
	// A change we want ourselves (new next hop) is no drift.
	viaGw.Gateway = netip.MustParseAddr("10.0.0.3")
	want.Routes = []route.Route{viaGw, viaTun, viaVXLAN}
	if n := sync(); n != 0 {
		t.Fatalf("a wanted change counted as %d drifted", n)
	}
}
