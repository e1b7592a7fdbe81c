//go:build integration

package routing

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestASPerRackShapeSeenByBIRD runs an AS-per-rack cluster: two nodes in AS 64601,
// one in 64602, each peering through its kube-router.io/peers annotation with BIRD,
// the rack router in AS 65000. BIRD sees each node's AS, the first node's prepending
// and communities; the first node refuses the range its customimportreject names.
// Changing the annotations changes what BIRD and the nodes see, without a restart.
func TestASPerRackShapeSeenByBIRD(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	api := forwardAPIServer(t, rc)
	link := netns.NewLink(t)
	n1 := link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("rack"), Client: cs})
	n2 := link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("rack"), Client: cs})
	n3 := link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("rack"), Client: cs})
	router := link.AddNode(t, netns.NodeOptions{Name: "router"}) // not registered: the rack router

	outside, rejected := netip.MustParsePrefix("172.20.0.0/16"), netip.MustParsePrefix("172.21.0.0/16")
	// "external" takes any AS but BIRD's own: a node's AS may change under it.
	bird := netns.StartBIRD(t, router.NS, fmt.Sprintf(`
router id %[1]s;
log stderr all;
protocol device {}
protocol static outside { ipv4; route %[2]s blackhole; route %[3]s blackhole; }
template bgp nodes { local as 65000; hold time 9; ipv4 { import all; export where source = RTS_STATIC; }; }
protocol bgp node1 from nodes { neighbor %[4]s external; }
protocol bgp node2 from nodes { neighbor %[5]s external; }
protocol bgp node3 from nodes { neighbor %[6]s external; }
`, router.IPv4, outside, rejected, n1.IPv4, n2.IPv4, n3.IPv4))

	peers := fmt.Sprintf("- remoteip: %s\n  remoteasn: 65000\n", router.IPv4)
	annotateNode(t, cs, n1.Name, map[string]string{
		annotationPeers: peers, annotationNodeASN: "64601",
		annotationPrependAS: "64601", annotationPrependRepeat: "2",
		annotationCommunities: "64601:100,no-export", annotationImportReject: rejected.String(),
	})
	annotateNode(t, cs, n2.Name, map[string]string{annotationPeers: peers, annotationNodeASN: "64601"})
	annotateNode(t, cs, n3.Name, map[string]string{annotationPeers: peers, annotationNodeASN: "64602"})
	for _, n := range []*netns.Node{n1, n2, n3} {
		startController(t, n, api, meshConfig)
	}

	// birdRoute is BIRD's path for a node's pod CIDR: "as_path | communities".
	birdRoute := func(n *netns.Node) string {
		var path, communities string
		for _, l := range strings.Split(bird.Ctl("show", "route", "all", n.PodCIDRv4.String()), "\n") {
			l = strings.TrimSpace(l)
			if v, ok := strings.CutPrefix(l, "BGP.as_path:"); ok {
				path = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(l, "BGP.community:"); ok {
				communities = strings.TrimSpace(v)
			}
		}
		return path + " | " + communities
	}
	expect := func(what string, want map[*netns.Node]string) {
		t.Helper()
		waitFor(t, what, func() bool {
			for n, w := range want {
				if birdRoute(n) != w {
					return false
				}
			}
			return true
		})
		for n, w := range want {
			t.Logf("BIRD's path to %s's pods: %s (want %s)", n.Name, birdRoute(n), w)
		}
	}
	expect("BIRD to see each rack's AS, and the first node's prepending and communities", map[*netns.Node]string{
		n1: "64601 64601 64601 | (64601,100) (65535,65281)",
		n2: "64601 | ",
		n3: "64602 | ",
	})

	// Nodes of one rack reach each other over iBGP, the other rack over eBGP, all
	// directly on the shared link; the router's outside range is installed, except
	// on the node that rejects it.
	waitFor(t, "the mesh across racks and the router's routes", func() bool {
		r1, r2, r3 := ourRoutes(t, n1), ourRoutes(t, n2), ourRoutes(t, n3)
		return strings.Contains(r1, routeLine(n2.PodCIDRv4, n2.IPv4)) && strings.Contains(r1, routeLine(n3.PodCIDRv4, n3.IPv4)) &&
			strings.Contains(r3, routeLine(n1.PodCIDRv4, n1.IPv4)) && strings.Contains(r3, routeLine(n2.PodCIDRv4, n2.IPv4)) &&
			strings.Contains(r1, routeLine(outside, router.IPv4)) && strings.Contains(r2, routeLine(rejected, router.IPv4))
	})
	if got := ourRoutes(t, n1); strings.Contains(got, rejected.String()) {
		t.Errorf("%s installed %s, which its customimportreject names:\n%s", n1.Name, rejected, got)
	}

	// Live changes: less prepending, another community, another rejected range, and
	// the third node moves into the first rack.
	annotateNode(t, cs, n1.Name, map[string]string{
		annotationPrependRepeat: "1", annotationCommunities: "64601:200", annotationImportReject: "172.22.0.0/16",
	})
	annotateNode(t, cs, n3.Name, map[string]string{annotationNodeASN: "64601"})
	expect("BIRD to see the new prepending, community and rack", map[*netns.Node]string{
		n1: "64601 64601 | (64601,200)",
		n2: "64601 | ",
		n3: "64601 | ",
	})
	waitFor(t, "the first node to install the range it no longer rejects", func() bool {
		return strings.Contains(ourRoutes(t, n1), routeLine(rejected, router.IPv4))
	})
	waitFor(t, "the nodes of the now single rack to keep their routes to each other", func() bool {
		r1, r3 := ourRoutes(t, n1), ourRoutes(t, n3)
		return strings.Contains(r1, routeLine(n3.PodCIDRv4, n3.IPv4)) && strings.Contains(r3, routeLine(n1.PodCIDRv4, n1.IPv4))
	})
}
