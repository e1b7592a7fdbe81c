//go:build vm

package route

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// IPIP and ip6ip6 tunnels need the ipip and ip6_tunnel modules, which only the VM's
// kernel has.
func TestNetlinkTunnelsAreCreatedRecreatedAndDeletedOnlyWhenOurs(t *testing.T) {
	testenv.RequireVM(t)
	for _, f := range []tunnelFamily{
		{name: "ipv4", local: "10.0.0.1", moved: "10.0.0.2", subnet: "10.0.0.1/24", remote: "10.0.1.3", foreignRemote: "10.0.5.5", pods: "10.244.3.0/24"},
		{name: "ipv6", local: "fd00::1", moved: "fd00::2", subnet: "fd00::1/64", remote: "fd00:1::3", foreignRemote: "fd00:5::5", pods: "fd00:10:244:3::/64"},
	} {
		t.Run(f.name, func(t *testing.T) { inPrivateNetns(t, func() error { return tunnelScenario(t, f) }) })
	}
}

// tunnelFamily holds the addresses of one run of tunnelScenario.
type tunnelFamily struct {
	name, local, moved, subnet, remote, foreignRemote, pods string
}

// inPrivateNetns runs fn in a new network namespace.
func inPrivateNetns(t *testing.T, fn func() error) {
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
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func tunnelScenario(t *testing.T, f tunnelFamily) error {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}
	if err := netlink.LinkAdd(veth); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return err
	}
	addr, _ := netlink.ParseAddr(f.subnet)
	addr.Flags = unix.IFA_F_NODAD
	if err := netlink.AddrAdd(veth, addr); err != nil {
		return err
	}
	local, foreignRemote := netip.MustParseAddr(f.local), netip.MustParseAddr(f.foreignRemote)
	var foreign netlink.Link = &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "foreign0"}, Local: local.AsSlice(), Remote: foreignRemote.AsSlice()}
	if local.Is6() {
		foreign = &netlink.Ip6tnl{LinkAttrs: netlink.LinkAttrs{Name: "foreign0"}, Local: local.AsSlice(), Remote: foreignRemote.AsSlice(), Proto: unix.IPPROTO_IPV6}
	}
	if err := netlink.LinkAdd(foreign); err != nil {
		return err
	}
	k := Netlink{}
	remote := netip.MustParseAddr(f.remote)
	tun := Tunnel{Name: TunnelName(remote), Local: local, Remote: remote}
	r := Route{Dst: netip.MustParsePrefix(f.pods), Device: tun.Name}
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
	moved.Local = netip.MustParseAddr(f.moved)
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

// FOU needs the fou and fou6 modules, which only the VM's kernel has. Ports of both
// families open and close; a foreign port for another protocol is not listed; a
// plain tunnel asked to be FOU is recreated with the encapsulation and reads back as
// asked, for IPv4 and IPv6.
func TestNetlinkFOUTunnelsAndPorts(t *testing.T) {
	testenv.RequireVM(t)
	inPrivateNetns(t, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(veth); err != nil {
			return err
		}
		for _, a := range []string{"10.0.0.1/24", "fd00::1/64"} {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = unix.IFA_F_NODAD
			if err := netlink.AddrAdd(veth, addr); err != nil {
				return err
			}
		}
		k := Netlink{}
		ports := []FOUPort{{Port: 5555}, {V6: true, Port: 5555}}
		for _, p := range ports {
			if err := k.AddFOUPort(p); err != nil {
				return err
			}
		}
		if err := netlink.FouAdd(netlink.Fou{Family: netlink.FAMILY_V4, Port: 6080, Protocol: unix.IPPROTO_GRE, EncapType: netlink.FOU_ENCAP_DIRECT}); err != nil {
			return fmt.Errorf("a foreign GRE port: %w", err)
		}
		got, err := k.FOUPorts()
		if err != nil {
			return fmt.Errorf("listing: %w", err)
		}
		if s := (State{FOUPorts: got}).Dump(); s != (State{FOUPorts: ports}).Dump() {
			t.Errorf("FOU ports:\n%s\nwant (not the foreign GRE port 6080)\n%s", s, State{FOUPorts: ports}.Dump())
		}
		for _, f := range []struct{ local, remote string }{{"10.0.0.1", "10.0.1.3"}, {"fd00::1", "fd00:1::3"}} {
			plain := Tunnel{Name: TunnelName(netip.MustParseAddr(f.remote)), Local: netip.MustParseAddr(f.local), Remote: netip.MustParseAddr(f.remote)}
			fou := plain
			fou.Encap, fou.Port = EncapFOU, 5555
			for _, want := range []Tunnel{plain, fou} {
				if err := k.EnsureTunnel(want); err != nil {
					return fmt.Errorf("ensuring %s: %w", want, err)
				}
				ts, err := k.Tunnels()
				if err != nil {
					return err
				}
				if !slices.Contains(ts, want) {
					t.Errorf("tunnels %v, want %v among them", ts, want)
				}
			}
			if err := k.DeleteTunnel(fou.Name); err != nil {
				return err
			}
		}
		for _, p := range ports {
			if err := k.DeleteFOUPort(p); err != nil {
				return err
			}
		}
		if got, err := k.FOUPorts(); err != nil || len(got) != 0 {
			t.Errorf("after closing: FOU ports %v, %v", got, err)
		}
		return nil
	})
}
