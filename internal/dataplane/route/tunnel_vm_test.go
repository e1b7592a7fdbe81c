//go:build vm

package route

import (
	"net/netip"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// IPIP tunnels need the ipip module, which only the VM's kernel has.
func TestNetlinkTunnelsAreCreatedRecreatedAndDeletedOnlyWhenOurs(t *testing.T) {
	testenv.RequireVM(t)
	// A private namespace entered by a locked thread that never returns to the scheduler
	// (the package-level netlink calls act in the calling thread's namespace).
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := vnetns.New()
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		errc <- tunnelScenario(t)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func tunnelScenario(t *testing.T) error {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}
	if err := netlink.LinkAdd(veth); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return err
	}
	addr, _ := netlink.ParseAddr("10.0.0.1/24")
	if err := netlink.AddrAdd(veth, addr); err != nil {
		return err
	}
	foreign := &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "foreign0"}, Local: netip.MustParseAddr("10.0.0.1").AsSlice(), Remote: netip.MustParseAddr("10.0.5.5").AsSlice()}
	if err := netlink.LinkAdd(foreign); err != nil {
		return err
	}
	k := Netlink{}
	remote := netip.MustParseAddr("10.0.1.3")
	tun := Tunnel{Name: TunnelName(remote), Local: netip.MustParseAddr("10.0.0.1"), Remote: remote}
	r := Route{Dst: netip.MustParsePrefix("10.244.3.0/24"), Device: tun.Name}
	if err := k.EnsureTunnel(tun); err != nil {
		return err
	}
	if err := k.ReplaceRoute(r); err != nil {
		return err
	}
	ts, err := k.Tunnels()
	if err != nil {
		return err
	}
	if len(ts) != 1 || ts[0] != tun {
		t.Errorf("tunnels = %v, want only %v (not foreign0)", ts, tun)
	}
	rs, err := k.Routes()
	if err != nil {
		return err
	}
	if len(rs) != 1 || rs[0] != r {
		t.Errorf("routes = %v, want %v", rs, r)
	}
	moved := tun
	moved.Local = netip.MustParseAddr("10.0.0.2")
	if err := k.EnsureTunnel(moved); err != nil {
		return err
	}
	if ts, _ := k.Tunnels(); len(ts) != 1 || ts[0] != moved {
		t.Errorf("after a new local address: tunnels = %v, want %v", ts, moved)
	}
	if err := k.DeleteTunnel("foreign0"); err == nil {
		t.Errorf("deleting a foreign tunnel succeeded")
	}
	if err := k.DeleteTunnel(tun.Name); err != nil {
		return err
	}
	if _, err := netlink.LinkByName(tun.Name); err == nil {
		t.Errorf("tunnel %s still exists", tun.Name)
	}
	if _, err := netlink.LinkByName("foreign0"); err != nil {
		t.Errorf("the foreign tunnel is gone: %v", err)
	}
	return nil
}
