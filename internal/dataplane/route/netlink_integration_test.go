//go:build integration

package route

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// The netlink implementation lists, replaces and deletes only routes carrying our
// protocol id; a foreign route to a neighbouring prefix survives everything.
func TestNetlinkTouchesOnlyOurRoutes(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netns.NewNS(t, "node", "route-test")
	ns.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	ns.Run(t, "ip", "link", "set", "eth0", "up")
	ns.Run(t, "ip", "link", "set", "eth1", "up")
	ns.Run(t, "ip", "addr", "add", "10.0.0.1/24", "dev", "eth0")
	ns.Run(t, "ip", "route", "add", "10.244.9.0/24", "via", "10.0.0.9", "proto", "static")

	k := Netlink{}
	ours := Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.2")}
	err := ns.Do(func() error {
		if err := k.ReplaceRoute(ours); err != nil {
			return err
		}
		moved := ours
		moved.Gateway = netip.MustParseAddr("10.0.0.3")
		if err := k.ReplaceRoute(moved); err != nil {
			return err
		}
		got, err := k.Routes()
		if err != nil {
			return err
		}
		if len(got) != 1 || got[0] != moved {
			t.Errorf("our routes = %v, want only %v", got, moved)
		}
		prefixes, err := k.LocalPrefixes()
		if err != nil {
			return err
		}
		if len(prefixes) != 1 || prefixes[0] != netip.MustParsePrefix("10.0.0.0/24") {
			t.Errorf("local prefixes = %v, want [10.0.0.0/24]", prefixes)
		}
		// Deleting by a foreign route's destination must not remove it.
		if err := k.DeleteRoute(Route{Dst: netip.MustParsePrefix("10.244.9.0/24")}); err != nil {
			return err
		}
		if tunnels, err := k.Tunnels(); err != nil || len(tunnels) != 0 {
			t.Errorf("tunnels = %v, %v; want none", tunnels, err)
		}
		return k.DeleteRoute(moved)
	})
	if err != nil {
		t.Fatal(err)
	}
	out := ns.Run(t, "ip", "-4", "route", "show")
	if !strings.Contains(out, "10.244.9.0/24 via 10.0.0.9") {
		t.Errorf("the foreign route is gone:\n%s", out)
	}
	if strings.Contains(out, "10.244.2.0/24") {
		t.Errorf("our route is still there:\n%s", out)
	}
}

// IPv6 routes are listed, replaced and deleted the same way, next to IPv4 ones, and
// link-local networks are no local prefixes.
func TestNetlinkHandlesIPv6RoutesNextToIPv4(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netns.NewNS(t, "node", "route6-test")
	ns.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	ns.Run(t, "ip", "link", "set", "eth0", "up")
	ns.Run(t, "ip", "link", "set", "eth1", "up")
	ns.Run(t, "ip", "addr", "add", "10.0.0.1/24", "dev", "eth0")
	ns.Run(t, "ip", "addr", "add", "fd00::1/64", "dev", "eth0", "nodad")
	ns.Run(t, "ip", "-6", "route", "add", "fd00:244:9::/64", "via", "fd00::9", "proto", "static")

	k := Netlink{}
	v4 := Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.2")}
	v6 := Route{Dst: netip.MustParsePrefix("fd00:244:2::/64"), Gateway: netip.MustParseAddr("fd00::2")}
	err := ns.Do(func() error {
		for _, r := range []Route{v4, v6} {
			if err := k.ReplaceRoute(r); err != nil {
				return err
			}
		}
		moved := v6
		moved.Gateway = netip.MustParseAddr("fd00::3")
		if err := k.ReplaceRoute(moved); err != nil {
			return err
		}
		got, err := k.Routes()
		if err != nil {
			return err
		}
		SortRoutes(got)
		if len(got) != 2 || got[0] != v4 || got[1] != moved {
			t.Errorf("our routes = %v, want [%v %v]", got, v4, moved)
		}
		prefixes, err := k.LocalPrefixes()
		if err != nil {
			return err
		}
		want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00::/64")}
		if len(prefixes) != 2 || !slices.Contains(prefixes, want[0]) || !slices.Contains(prefixes, want[1]) {
			t.Errorf("local prefixes = %v, want %v (no link-local network)", prefixes, want)
		}
		if err := k.DeleteRoute(Route{Dst: netip.MustParsePrefix("fd00:244:9::/64")}); err != nil {
			return err
		}
		return k.DeleteRoute(moved)
	})
	if err != nil {
		t.Fatal(err)
	}
	out := ns.Run(t, "ip", "-6", "route", "show")
	if !strings.Contains(out, "fd00:244:9::/64 via fd00::9") {
		t.Errorf("the foreign IPv6 route is gone:\n%s", out)
	}
	if strings.Contains(out, "fd00:244:2::/64") {
		t.Errorf("our IPv6 route is still there:\n%s", out)
	}
}

// The kernel refuses a gateway on no connected network; ReplaceRoute says so with
// ErrNextHopUnreachable, for both families.
func TestNetlinkReportsAnOffLinkNextHop(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netns.NewNS(t, "node", "route-offlink")
	ns.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	ns.Run(t, "ip", "link", "set", "eth0", "up")
	ns.Run(t, "ip", "link", "set", "eth1", "up")
	ns.Run(t, "ip", "addr", "add", "10.0.0.1/24", "dev", "eth0")
	ns.Run(t, "ip", "addr", "add", "fd00::1/64", "dev", "eth0", "nodad")
	err := ns.Do(func() error {
		for _, r := range []Route{
			{Dst: netip.MustParsePrefix("10.244.3.0/24"), Gateway: netip.MustParseAddr("10.0.1.3")},
			{Dst: netip.MustParsePrefix("fd00:244:3::/64"), Gateway: netip.MustParseAddr("fd01::3")},
		} {
			if err := (Netlink{}).ReplaceRoute(r); !errors.Is(err, ErrNextHopUnreachable) {
				t.Errorf("ReplaceRoute(%v) = %v; want ErrNextHopUnreachable", r, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
