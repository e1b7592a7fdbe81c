package routing

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"

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
	n, _, err := reconcileKernel(k, routes, []route.Tunnel{tun}, never, log)
	if err != nil || n != 2 {
		t.Fatalf("first sync: installed %d, err %v", n, err)
	}
	want := "tunnel krt-0a000103 ipip local 10.0.0.1 remote 10.0.1.3\nroute 10.244.2.0/24 via 10.0.0.2\nroute 10.244.3.0/24 dev krt-0a000103\n"
	if got := k.Dump(); got != want {
		t.Fatalf("kernel after first sync:\n%s\nwant\n%s", got, want)
	}

	t.Run("a sync with nothing to do changes nothing", func(t *testing.T) {
		before := k.Calls
		if _, _, err := reconcileKernel(k, routes, []route.Tunnel{tun}, never, log); err != nil {
			t.Fatal(err)
		}
		if k.Calls != before {
			t.Errorf("%d kernel calls for an unchanged state", k.Calls-before)
		}
	})

	t.Run("a kept route survives with its tunnel", func(t *testing.T) {
		keep := func(r route.Route) bool { return r.Device == tun.Name }
		if _, _, err := reconcileKernel(k, nil, nil, keep, log); err != nil {
			t.Fatal(err)
		}
		want := "tunnel krt-0a000103 ipip local 10.0.0.1 remote 10.0.1.3\nroute 10.244.3.0/24 dev krt-0a000103\n"
		if got := k.Dump(); got != want {
			t.Errorf("got\n%s\nwant\n%s", got, want)
		}
	})

	t.Run("withdrawn routes and unused tunnels are removed", func(t *testing.T) {
		if _, _, err := reconcileKernel(k, nil, nil, never, log); err != nil {
			t.Fatal(err)
		}
		if got := k.Dump(); got != "" {
			t.Errorf("kernel not empty:\n%s", got)
		}
	})

	t.Run("cleanup removes everything of ours", func(t *testing.T) {
		if _, _, err := reconcileKernel(k, routes, []route.Tunnel{tun}, never, log); err != nil {
			t.Fatal(err)
		}
		if err := cleanupKernel(k); err != nil {
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
	n, unreachable, err := reconcileKernel(k, routes, nil, func(route.Route) bool { return false }, log)
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
