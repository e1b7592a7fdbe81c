//go:build vm

package vme2e

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// joinSubnets routes between two links through a router namespace that holds the
// first host address of each link's subnet, and points every node of each link at it
// for the other subnet. The router knows the two subnets only, never a pod CIDR, so
// pod traffic between the subnets crosses it only inside a tunnel.
func joinSubnets(t *testing.T, a, b *netns.Link) *netns.NS {
	t.Helper()
	router := netns.NewNS(t, "router", "router")
	for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := router.Sysctl(key, "1"); err != nil {
			t.Fatal(err)
		}
	}
	for i, l := range []*netns.Link{a, b} {
		name := fmt.Sprintf("eth%d", i)
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "router", PeerNamespace: netlink.NsFd(int(l.Handle))}
		if err := router.Netlink.LinkAdd(veth); err != nil {
			t.Fatalf("router: veth %s into %s: %v", name, l.V4, err)
		}
		port, err := l.Netlink.LinkByName("router")
		if err != nil {
			t.Fatal(err)
		}
		br, err := l.Netlink.LinkByName("br0")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Netlink.LinkSetMaster(port, br); err != nil {
			t.Fatal(err)
		}
		if err := l.Netlink.LinkSetUp(port); err != nil {
			t.Fatal(err)
		}
		gw, gw6 := l.V4.Masked().Addr().Next(), l.V6.Masked().Addr().Next()
		for _, a := range []netip.Prefix{netip.PrefixFrom(gw, l.V4.Bits()), netip.PrefixFrom(gw6, l.V6.Bits())} {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
			if err := router.Netlink.AddrAdd(veth, addr); err != nil {
				t.Fatalf("router: address %s on %s: %v", a, name, err)
			}
		}
		if err := router.Netlink.LinkSetUp(veth); err != nil {
			t.Fatal(err)
		}
		other := b
		if l == b {
			other = a
		}
		for _, n := range l.Nodes() {
			n.AddRoute(t, other.V4.Masked(), gw)
			n.AddRoute(t, other.V6.Masked(), gw6)
		}
	}
	return router
}

// tunnelPackets is how many packets the node sent into its tunnels so far.
func tunnelPackets(t *testing.T, n *netns.Node) uint64 {
	t.Helper()
	links, err := n.Netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, route.TunnelNamePrefix) && l.Attrs().Statistics != nil {
			sum += l.Attrs().Statistics.TxPackets
		}
	}
	return sum
}

// routeTo is the node's kube-routerd route to dst ("" if none).
func routeTo(t *testing.T, n *netns.Node, dst netip.Prefix) string {
	t.Helper()
	for _, l := range strings.Split(ourRoutes(t, n), "\n") {
		if strings.HasPrefix(l, dst.String()+" ") {
			return l
		}
	}
	return ""
}

// isTunnelRoute reports whether a line of ourRoutes points into one of our tunnels;
// otherwise it is a direct route via the other node.
func isTunnelRoute(line string) bool {
	return strings.Contains(line, " dev "+route.TunnelNamePrefix)
}

// TestCrossSubnetOverlayTunnelsOnlyBetweenSubnets runs three nodes with the real
// binary: two in subnet A, one in subnet B behind a router that knows no pod CIDR,
// all dual-stack. With overlay "cross-subnet" the nodes of A route each other's pods
// directly and tunnel to the node in B (IPIP for IPv4, ip6ip6 for IPv6), and every pod
// reaches every other pod over both families; with overlay "always" every pod route is
// a tunnel and traffic still flows; with "never" the subnets cannot reach each other's
// pods, which each daemon reports while still serving the routes it can install.
func TestCrossSubnetOverlayTunnelsOnlyBetweenSubnets(t *testing.T) {
	testenv.RequireVM(t)
	bin := daemonBinary(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)

	subnetA := netns.NewLink(t)
	subnetB := netns.NewLink(t)
	subnetB.V4, subnetB.V6 = netip.MustParsePrefix("192.168.201.0/24"), netip.MustParsePrefix("fd00:201::/64")
	a1 := subnetA.AddNode(t, netns.NodeOptions{Client: cs})
	a2 := subnetA.AddNode(t, netns.NodeOptions{Client: cs})
	b1 := subnetB.AddNode(t, netns.NodeOptions{Client: cs,
		PodCIDRv4: netip.MustParsePrefix("10.244.3.0/24"), PodCIDRv6: netip.MustParsePrefix("fd00:10:244:3::/64")})
	router := joinSubnets(t, subnetA, subnetB)
	wire := countEncapsulations(t, router)
	nodes := []*netns.Node{a1, a2, b1}
	var pods []*netns.Pod
	for _, n := range nodes {
		p := n.AddPod(t, netns.PodOptions{Namespace: ns})
		p.Serve(t, netns.TCP, 8080)
		pods = append(pods, p)
	}
	t.Logf("subnet A %s: %s (pods %s), %s (pods %s); subnet B %s: %s (pods %s)",
		subnetA.V4, a1.IPv4, a1.PodCIDRv4, a2.IPv4, a2.PodCIDRv4, subnetB.V4, b1.IPv4, b1.PodCIDRv4)

	config := func(overlay, encap string) string {
		return fmt.Sprintf(`
[service_proxy]
enabled = false   # the restart test covers it

[network_policy]
enabled = false

[routing]
overlay = %q
overlay_encap = %q
`, overlay, encap)
	}
	var daemons []*daemon
	for _, n := range nodes {
		daemons = append(daemons, newDaemon(t, n, rc, bin, config("cross-subnet", "ipip")))
	}
	startAll := func() {
		t.Helper()
		for _, d := range daemons {
			d.Start()
		}
		for _, d := range daemons {
			d.WaitNotify("READY=1", readyTimeout)
		}
	}
	start := time.Now()
	startAll()
	t.Logf("three daemons READY after %s", time.Since(start).Round(time.Millisecond))

	// allRoutes waits until each node has a route to every other node's pod CIDR that
	// tunnels exactly when tunnel says so.
	allRoutes := func(overlay string, tunnel func(from, to *netns.Node) bool) {
		t.Helper()
		start := time.Now()
		logRoutes := func() {
			for _, n := range nodes {
				t.Logf("%s (%s): routes of protocol 144\n%s", n.Name, n.IPv4, ourRoutes(t, n))
			}
		}
		// Also when Eventually gives up: Fatalf runs deferred calls.
		defer func() {
			if t.Failed() {
				logRoutes()
			}
		}()
		testenv.Eventually(t, "pod routes of overlay "+overlay+" on every node", 3*time.Minute, func() bool {
			for _, from := range nodes {
				for _, to := range nodes {
					if from == to {
						continue
					}
					for _, dst := range []netip.Prefix{to.PodCIDRv4, to.PodCIDRv6} {
						r := routeTo(t, from, dst)
						if r == "" || isTunnelRoute(r) != tunnel(from, to) {
							return false
						}
					}
				}
			}
			return true
		})
		t.Logf("overlay %s: routes converged %s after READY", overlay, time.Since(start).Round(time.Millisecond))
		logRoutes()
	}
	// allPairs probes every pod from every other and checks that traffic between two
	// nodes entered a tunnel exactly when their route is one.
	allPairs := func(overlay string, tunnel func(from, to *netns.Node) bool) {
		t.Helper()
		for _, from := range pods {
			for _, to := range pods {
				if from == to {
					continue
				}
				for _, target := range []netip.Addr{to.IPv4, to.IPv6} {
					before := tunnelPackets(t, from.Node)
					probeTarget(t, from.NS, netip.AddrPortFrom(target, 8080))
					sent := tunnelPackets(t, from.Node) - before
					if tunnel(from.Node, to.Node) != (sent > 0) {
						t.Errorf("overlay %s: %s -> %s (%s) sent %d packets into tunnels (route %q)",
							overlay, from.Name, to.Name, target, sent, routeTo(t, from.Node, netip.PrefixFrom(target, target.BitLen())))
					}
				}
			}
		}
	}

	// onTheWire probes every pair and checks that what crossed the router between the
	// subnets was the encapsulation asked for, in both families, and nothing else; and
	// that each tunnel device leaves room for its headers in the node link's MTU.
	onTheWire := func(overlay, encap string, tunnel func(from, to *netns.Node) bool) {
		t.Helper()
		wire.reset(t)
		allPairs(overlay+"/"+encap, tunnel)
		got := wire.read(t)
		t.Logf("overlay %s, encapsulation %s: packets across the router %v", overlay, encap, got)
		for _, family := range []string{"4", "6"} {
			for _, kind := range []string{"ipip", "fou", "vxlan"} {
				n := got[kind+family]
				if kind == encap && n == 0 {
					t.Errorf("encapsulation %s: no %s packet of IPv%s crossed the router", encap, kind, family)
				}
				if kind != encap && n > 0 {
					t.Errorf("encapsulation %s: %d %s packets of IPv%s crossed the router", encap, n, kind, family)
				}
			}
		}
		for _, n := range nodes {
			checkTunnelMTUs(t, n, encap)
		}
	}

	inB := func(n *netns.Node) bool { return n == b1 }
	crossSubnet := func(from, to *netns.Node) bool { return inB(from) != inB(to) }
	allRoutes("cross-subnet", crossSubnet)
	for _, want := range [][2]string{{routeTo(t, a1, a2.PodCIDRv4), a2.IPv4.String()}, {routeTo(t, a1, a2.PodCIDRv6), a2.IPv6.String()}} {
		if !strings.Contains(want[0], "via "+want[1]) {
			t.Errorf("%s routes %s's pods %q, want directly via %s", a1.Name, a2.Name, want[0], want[1])
		}
	}
	onTheWire("cross-subnet", "ipip", crossSubnet)

	// overlay "always": a restart with the new setting turns every route into a tunnel.
	for _, d := range daemons {
		d.Stop()
		d.reconfigure(config("always", "ipip"))
	}
	start = time.Now()
	startAll()
	t.Logf("three daemons READY with overlay always after %s", time.Since(start).Round(time.Millisecond))
	always := func(from, to *netns.Node) bool { return true }
	allRoutes("always", always)
	allPairs("always", always)
	for _, n := range nodes {
		t.Logf("%s tunnels: %s", n.Name, strings.Join(tunnelNames(t, n), " "))
	}

	// The other encapsulations, each after a restart that replaces the tunnels of
	// the last: FOU (IPIP and ip6ip6 inside UDP) for every route, then VXLAN across
	// the subnets only.
	for _, phase := range []struct {
		overlay, encap string
		tunnel         func(from, to *netns.Node) bool
	}{{"always", "fou", always}, {"cross-subnet", "vxlan", crossSubnet}} {
		for _, d := range daemons {
			d.Stop()
			d.reconfigure(config(phase.overlay, phase.encap))
		}
		start = time.Now()
		startAll()
		t.Logf("three daemons READY with overlay %s, encapsulation %s after %s", phase.overlay, phase.encap, time.Since(start).Round(time.Millisecond))
		allRoutes(phase.overlay+"/"+phase.encap, phase.tunnel)
		// The routes above may still go through the last setting's tunnels, until
		// each daemon's first sync replaces them: wait for tunnels of this one.
		testenv.Eventually(t, "tunnels of encapsulation "+phase.encap+" on every node", 3*time.Minute, func() bool {
			for _, n := range nodes {
				if !tunnelsAre(t, n, phase.encap) {
					return false
				}
			}
			return true
		})
		onTheWire(phase.overlay, phase.encap, phase.tunnel)
		for _, n := range nodes {
			t.Logf("%s tunnels: %s", n.Name, strings.Join(tunnelNames(t, n), " "))
		}
	}

	// overlay "never": the nodes in A cannot route to B's pods (the next hop is on no
	// connected network). Each daemon still becomes READY, warns once naming the node
	// it cannot reach, keeps no tunnel, and pods within subnet A still talk directly.
	for _, d := range daemons {
		d.Stop()
		d.reconfigure(config("never", "vxlan"))
	}
	start = time.Now()
	startAll()
	t.Logf("three daemons READY with overlay never after %s", time.Since(start).Round(time.Millisecond))
	testenv.Eventually(t, "direct routes within subnet A and no tunnels", 3*time.Minute, func() bool {
		r1, r2 := routeTo(t, a1, a2.PodCIDRv4), routeTo(t, a2, a1.PodCIDRv4)
		return strings.Contains(r1, "via "+a2.IPv4.String()) && strings.Contains(r2, "via "+a1.IPv4.String()) &&
			len(tunnelNames(t, a1)) == 0 && len(tunnelNames(t, a2)) == 0 && len(tunnelNames(t, b1)) == 0
	})
	for _, pair := range [][2]*netns.Node{{a1, b1}, {a2, b1}, {b1, a1}, {b1, a2}} {
		for _, dst := range []netip.Prefix{pair[1].PodCIDRv4, pair[1].PodCIDRv6} {
			if r := routeTo(t, pair[0], dst); r != "" {
				t.Errorf("overlay never: %s has a route to %s's pods across subnets: %q", pair[0].Name, pair[1].Name, r)
			}
		}
	}
	testenv.Eventually(t, "a warning naming the unreachable node on a1", time.Minute, func() bool {
		log := daemons[0].LogText()
		return strings.Contains(log, "route not installed") && strings.Contains(log, b1.Name)
	})
	probeTarget(t, pods[0].NS, netip.AddrPortFrom(pods[1].IPv4, 8080))
	probeTarget(t, pods[1].NS, netip.AddrPortFrom(pods[0].IPv4, 8080))
	probeTarget(t, pods[0].NS, netip.AddrPortFrom(pods[1].IPv6, 8080))
}

// tunnelNames lists the node's tunnels of ours (IPIP, ip6ip6, VXLAN) with their
// remote ends and MTUs.
func tunnelNames(t *testing.T, n *netns.Node) []string {
	t.Helper()
	var names []string
	for _, l := range ourTunnelLinks(t, n) {
		remote := "all"
		switch tun := l.(type) {
		case *netlink.Iptun:
			remote = tun.Remote.String()
		case *netlink.Ip6tnl:
			remote = tun.Remote.String()
		}
		names = append(names, l.Attrs().Name+"->"+remote+"(mtu "+strconv.Itoa(l.Attrs().MTU)+")")
	}
	return names
}

// ourTunnelLinks are the node's tunnel devices of ours.
func ourTunnelLinks(t *testing.T, n *netns.Node) []netlink.Link {
	t.Helper()
	links, err := n.Netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []netlink.Link
	for _, l := range links {
		switch l.(type) {
		case *netlink.Iptun, *netlink.Ip6tnl, *netlink.Vxlan:
			if strings.HasPrefix(l.Attrs().Name, route.TunnelNamePrefix) {
				out = append(out, l)
			}
		}
	}
	return out
}

// tunnelsAre reports whether the node has tunnels and all are of the encapsulation:
// of its kind of device and with the MTU its headers leave.
func tunnelsAre(t *testing.T, n *netns.Node, encap string) bool {
	t.Helper()
	e, wantMTU := tunnelMTU(t, n, encap)
	links := ourTunnelLinks(t, n)
	for _, l := range links {
		_, isVXLAN := l.(*netlink.Vxlan)
		if isVXLAN != (e == route.EncapVXLAN) || l.Attrs().MTU != wantMTU(l) {
			return false
		}
	}
	return len(links) > 0
}

// tunnelMTU parses encap and returns the MTU a tunnel of it must have on the node:
// the node link's MTU less the encapsulation's headers for the tunnel's family.
func tunnelMTU(t *testing.T, n *netns.Node, encap string) (route.Encap, func(netlink.Link) int) {
	t.Helper()
	e, err := route.ParseEncap(encap)
	if err != nil {
		t.Fatal(err)
	}
	eth, err := n.Netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	return e, func(l netlink.Link) int {
		v6 := false
		switch tun := l.(type) {
		case *netlink.Ip6tnl:
			v6 = true
		case *netlink.Vxlan:
			v6 = tun.SrcAddr.To4() == nil
		}
		return eth.Attrs().MTU - e.Overhead(v6)
	}
}

// checkTunnelMTUs checks that each tunnel of the node leaves exactly the room its
// encapsulation's headers need in the MTU of the node's link (what the pods' MTU is
// computed from).
func checkTunnelMTUs(t *testing.T, n *netns.Node, encap string) {
	t.Helper()
	_, wantMTU := tunnelMTU(t, n, encap)
	for _, l := range ourTunnelLinks(t, n) {
		if want := wantMTU(l); l.Attrs().MTU != want {
			t.Errorf("%s: tunnel %s has MTU %d, want %d (the node link's less the %s headers)", n.Name, l.Attrs().Name, l.Attrs().MTU, want, encap)
		}
	}
}

// wireCounters count, in the router between the subnets, the forwarded packets of
// each encapsulation and family: IP protocols 4 and 41, and UDP to FOU's and VXLAN's
// ports.
type wireCounters struct {
	router *netns.NS
}

var wireRules = []struct {
	name, cmd string
	match     []string
}{
	{"ipip4", "iptables", []string{"-p", "4"}},
	{"ipip6", "ip6tables", []string{"-p", "41"}},
	{"fou4", "iptables", []string{"-p", "udp", "--dport", "5555"}},
	{"fou6", "ip6tables", []string{"-p", "udp", "--dport", "5555"}},
	{"vxlan4", "iptables", []string{"-p", "udp", "--dport", "4789"}},
	{"vxlan6", "ip6tables", []string{"-p", "udp", "--dport", "4789"}},
}

func countEncapsulations(t *testing.T, router *netns.NS) *wireCounters {
	t.Helper()
	for _, r := range wireRules {
		args := append([]string{"-w", "-A", "FORWARD"}, r.match...)
		router.Run(t, r.cmd, append(args, "-m", "comment", "--comment", r.name)...)
	}
	return &wireCounters{router: router}
}

func (w *wireCounters) reset(t *testing.T) {
	t.Helper()
	w.router.Run(t, "iptables", "-w", "-Z", "FORWARD")
	w.router.Run(t, "ip6tables", "-w", "-Z", "FORWARD")
}

// read returns the packets counted per rule name since the last reset.
func (w *wireCounters) read(t *testing.T) map[string]uint64 {
	t.Helper()
	got := map[string]uint64{}
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, line := range strings.Split(w.router.Run(t, cmd, "-w", "-L", "FORWARD", "-v", "-x", "-n"), "\n") {
			f := strings.Fields(line)
			for _, r := range wireRules {
				if r.cmd == cmd && len(f) > 0 && strings.Contains(line, "/* "+r.name+" */") {
					n, err := strconv.ParseUint(f[0], 10, 64)
					if err != nil {
						t.Fatalf("%s counters: %q: %v", cmd, line, err)
					}
					got[r.name] += n
				}
			}
		}
	}
	return got
}
