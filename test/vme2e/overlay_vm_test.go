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
	joinSubnets(t, subnetA, subnetB)
	nodes := []*netns.Node{a1, a2, b1}
	var pods []*netns.Pod
	for _, n := range nodes {
		p := n.AddPod(t, netns.PodOptions{Namespace: ns})
		p.Serve(t, netns.TCP, 8080)
		pods = append(pods, p)
	}
	t.Logf("subnet A %s: %s (pods %s), %s (pods %s); subnet B %s: %s (pods %s)",
		subnetA.V4, a1.IPv4, a1.PodCIDRv4, a2.IPv4, a2.PodCIDRv4, subnetB.V4, b1.IPv4, b1.PodCIDRv4)

	config := func(overlay string) string {
		return fmt.Sprintf(`
[service_proxy]
enabled = false   # the restart test covers it

[network_policy]
enabled = false

[routing]
overlay = %q
`, overlay)
	}
	var daemons []*daemon
	for _, n := range nodes {
		daemons = append(daemons, newDaemon(t, n, rc, bin, config("cross-subnet")))
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

	inB := func(n *netns.Node) bool { return n == b1 }
	crossSubnet := func(from, to *netns.Node) bool { return inB(from) != inB(to) }
	allRoutes("cross-subnet", crossSubnet)
	for _, want := range [][2]string{{routeTo(t, a1, a2.PodCIDRv4), a2.IPv4.String()}, {routeTo(t, a1, a2.PodCIDRv6), a2.IPv6.String()}} {
		if !strings.Contains(want[0], "via "+want[1]) {
			t.Errorf("%s routes %s's pods %q, want directly via %s", a1.Name, a2.Name, want[0], want[1])
		}
	}
	allPairs("cross-subnet", crossSubnet)

	// overlay "always": a restart with the new setting turns every route into a tunnel.
	for _, d := range daemons {
		d.Stop()
		d.reconfigure(config("always"))
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

	// overlay "never": the nodes in A cannot route to B's pods (the next hop is on no
	// connected network). Each daemon still becomes READY, warns once naming the node
	// it cannot reach, keeps no tunnel, and pods within subnet A still talk directly.
	for _, d := range daemons {
		d.Stop()
		d.reconfigure(config("never"))
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

// tunnelNames lists the node's tunnels of ours (IPIP and ip6ip6) with their remote ends.
func tunnelNames(t *testing.T, n *netns.Node) []string {
	t.Helper()
	links, err := n.Netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		var remote net.IP
		switch tun := l.(type) {
		case *netlink.Iptun:
			remote = tun.Remote
		case *netlink.Ip6tnl:
			remote = tun.Remote
		default:
			continue
		}
		if strings.HasPrefix(l.Attrs().Name, route.TunnelNamePrefix) {
			names = append(names, l.Attrs().Name+"->"+remote.String()+"(mtu "+strconv.Itoa(l.Attrs().MTU)+")")
		}
	}
	return names
}
