//go:build integration

package route

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// vxlanNode is one side of TestNetlinkVXLANCarriesPodTrafficBetweenNodes: a namespace
// with a node address per family on eth0 and a pod address per family on lo.
type vxlanNode struct {
	ns             *netns.NS
	addr4, addr6   netip.Addr
	pod4, pod6     netip.Prefix
	podIP4, podIP6 netip.Addr
}

// The VXLAN device, its peers and the onlink routes, written by Netlink, carry pod
// traffic of both families between two nodes (the host kernel has vxlan), and each
// object reads back as written, so a second pass changes nothing. A peer whose
// forwarding entry someone removed reads back without its MAC, and is repaired.
func TestNetlinkVXLANCarriesPodTrafficBetweenNodes(t *testing.T) {
	testenv.RequireRoot(t)
	a := &vxlanNode{ns: netns.NewNS(t, "node", "vxlan-a"), addr4: netip.MustParseAddr("10.0.0.1"), addr6: netip.MustParseAddr("fd00::1"),
		pod4: netip.MustParsePrefix("10.244.1.0/24"), pod6: netip.MustParsePrefix("fd00:244:1::/64")}
	b := &vxlanNode{ns: netns.NewNS(t, "node", "vxlan-b"), addr4: netip.MustParseAddr("10.0.0.2"), addr6: netip.MustParseAddr("fd00::2"),
		pod4: netip.MustParsePrefix("10.244.2.0/24"), pod6: netip.MustParsePrefix("fd00:244:2::/64")}
	a.ns.Run(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.ns.NetnsName)
	for _, n := range []*vxlanNode{a, b} {
		n.podIP4, n.podIP6 = n.pod4.Addr().Next(), n.pod6.Addr().Next()
		n.ns.Run(t, "ip", "link", "set", "eth0", "up")
		n.ns.Run(t, "ip", "addr", "add", n.addr4.String()+"/24", "dev", "eth0")
		n.ns.Run(t, "ip", "addr", "add", n.addr6.String()+"/64", "dev", "eth0", "nodad")
		n.ns.Run(t, "ip", "addr", "add", n.podIP4.String()+"/32", "dev", "lo")
		n.ns.Run(t, "ip", "addr", "add", n.podIP6.String()+"/128", "dev", "lo", "nodad")
	}
	program := func(self, other *vxlanNode) State {
		var st State
		for _, f := range []struct {
			local, remote netip.Addr
			pods          netip.Prefix
		}{{self.addr4, other.addr4, other.pod4}, {self.addr6, other.addr6, other.pod6}} {
			dev := Tunnel{Name: VXLANName(f.local.Is6()), Encap: EncapVXLAN, Local: f.local, Port: 4789, VNI: 42}
			st.Tunnels = append(st.Tunnels, dev)
			peer := VXLANPeer{Device: dev.Name, Node: f.remote, MAC: VXLANMAC(f.remote)}
			st.Peers = append(st.Peers, peer)
			st.Routes = append(st.Routes, Route{Dst: f.pods, Gateway: peer.Gateway(), Device: dev.Name})
		}
		k := Netlink{}
		err := self.ns.Do(func() error {
			for _, tun := range st.Tunnels {
				if err := k.EnsureTunnel(tun); err != nil {
					return err
				}
			}
			for _, p := range st.Peers {
				if err := k.ReplaceVXLANPeer(p); err != nil {
					return err
				}
			}
			for _, r := range st.Routes {
				if err := k.ReplaceRoute(r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", self.ns.Label, err)
		}
		return st
	}
	readBack := func(n *vxlanNode) State {
		var st State
		err := n.ns.Do(func() error {
			k := Netlink{}
			var err error
			if st.Routes, err = k.Routes(); err != nil {
				return err
			}
			if st.Tunnels, err = k.Tunnels(); err != nil {
				return err
			}
			st.Peers, err = k.VXLANPeers()
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	wantA, wantB := program(a, b), program(b, a)
	for _, c := range []struct {
		n    *vxlanNode
		want State
	}{{a, wantA}, {b, wantB}} {
		if got := readBack(c.n); got.Dump() != c.want.Dump() {
			t.Errorf("%s reads back\n%s\nwant\n%s", c.n.ns.Label, got.Dump(), c.want.Dump())
		}
	}
	if out := a.ns.Run(t, "ip", "-d", "link", "show", "krt-vxlan"); !strings.Contains(out, "vxlan id 42") ||
		!strings.Contains(out, VXLANMAC(a.addr4)) || !strings.Contains(out, "mtu 1450") {
		t.Errorf("krt-vxlan on a is not what we asked for (VNI 42, MAC %s, MTU 1500-50):\n%s", VXLANMAC(a.addr4), out)
	}

	txPackets := func(n *vxlanNode) uint64 {
		var sum uint64
		for _, name := range []string{VXLANName(false), VXLANName(true)} {
			l, err := n.ns.Netlink.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			sum += l.Attrs().Statistics.TxPackets
		}
		return sum
	}
	before := txPackets(a)
	for _, c := range [][2]netip.Addr{{a.podIP4, b.podIP4}, {a.podIP6, b.podIP6}} {
		a.ns.Run(t, "ping", "-c", "2", "-W", "2", "-I", c[0].String(), c[1].String())
	}
	if sent := txPackets(a) - before; sent < 4 {
		t.Errorf("a sent %d packets into its VXLAN devices for 4 pings", sent)
	}

	// Someone removes a's neighbour entry for b: the peer reads back without its MAC.
	// Then the forwarding entry too: the peer is gone. Replacing it makes traffic
	// flow again.
	peer := wantA.Peers[0]
	a.ns.Run(t, "ip", "neigh", "del", peer.Gateway().String(), "dev", peer.Device)
	if got := readBack(a); !strings.Contains(got.Dump(), fmt.Sprintf("peer %s lladdr  dst %s", peer.Gateway(), peer.Node)) {
		t.Errorf("a peer without its neighbour entry reads back as\n%s", got.Dump())
	}
	a.ns.Run(t, "bridge", "fdb", "del", peer.MAC, "dev", peer.Device, "dst", peer.Node.String())
	if got := readBack(a); strings.Contains(got.Dump(), "dst "+peer.Node.String()) {
		t.Errorf("a peer without its entries reads back as\n%s", got.Dump())
	}
	if err := a.ns.Do(func() error { return Netlink{}.ReplaceVXLANPeer(peer) }); err != nil {
		t.Fatal(err)
	}
	a.ns.Run(t, "ping", "-c", "1", "-W", "2", "-I", a.podIP4.String(), b.podIP4.String())

	// Deleting a peer leaves the other family's alone; deleting the device takes the
	// rest, and a foreign VXLAN device of the same kind is never ours.
	a.ns.Run(t, "ip", "link", "add", "vx-foreign", "type", "vxlan", "id", "9", "dstport", "4790", "local", a.addr4.String())
	err := a.ns.Do(func() error {
		k := Netlink{}
		if err := k.DeleteVXLANPeer(peer); err != nil {
			return err
		}
		if ps, err := k.VXLANPeers(); err != nil || len(ps) != 1 || ps[0] != wantA.Peers[1] {
			return fmt.Errorf("after deleting %s: peers %v, %v; want [%v]", peer, ps, err, wantA.Peers[1])
		}
		for _, tun := range wantA.Tunnels {
			if err := k.DeleteTunnel(tun.Name); err != nil {
				return err
			}
		}
		ts, err := k.Tunnels()
		if err != nil || len(ts) != 0 {
			return fmt.Errorf("tunnels %v, %v; want none (vx-foreign is not ours)", ts, err)
		}
		if err := k.DeleteTunnel("vx-foreign"); err == nil {
			return fmt.Errorf("deleting a foreign VXLAN device succeeded")
		}
		_, err = netlink.LinkByName("vx-foreign")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
