//go:build integration

package routing

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// bfdLab is a node and BIRD, its router, on one link, with a 90 s BGP hold time:
// only BFD can take the router's routes away within seconds of a link cut.
type bfdLab struct {
	link         *netns.Link
	node, router *netns.Node
	bird         *netns.BIRD
	proc         *nodeProcess
	routerPort   string // the router's port on the link's bridge
}

var (
	bfdRouterRoute   = netip.MustParsePrefix("172.20.0.0/16")
	bfdRouterRouteV6 = netip.MustParsePrefix("fd00:172:20::/48")
)

func newBFDLab(t *testing.T, bfd bool) *bfdLab {
	t.Helper()
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	api := forwardAPIServer(t, rc)
	lab := &bfdLab{link: netns.NewLink(t), routerPort: "n2"}
	lab.node = lab.link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("bfd"), Client: cs})
	lab.router = lab.link.AddNode(t, netns.NodeOptions{Name: "router"}) // not registered
	lab.bird = netns.StartBIRD(t, lab.router.NS, fmt.Sprintf(`
router id %[1]s;
log stderr all;
protocol device {}
protocol bfd { interface "*" { interval 300 ms; multiplier 3; }; }
protocol static { ipv4; route %[2]s blackhole; }
protocol static { ipv6; route %[4]s blackhole; }
template bgp node { local as 65000; bfd on; hold time 90; connect retry time 2; connect delay time 1; error wait time 1, 5; }
protocol bgp node4 from node { neighbor %[3]s as 64512; ipv4 { import all; export where source = RTS_STATIC; }; }
protocol bgp node6 from node { neighbor %[5]s as 64512; ipv6 { import all; export where source = RTS_STATIC; }; }
`, lab.router.IPv4, bfdRouterRoute, lab.node.IPv4, bfdRouterRouteV6, lab.node.IPv6))
	lab.proc = startController(t, lab.node, api, fmt.Sprintf(`
[routing]
hold_time = "1m30s"
min_sync_interval = "50ms"
[[routing.peers]]
address = "%[1]s"
asn = 65000
bfd = %[3]v
[[routing.peers]]
address = "%[2]s"
asn = 65000
bfd = %[3]v
`, lab.router.IPv4, lab.router.IPv6, bfd))
	t.Cleanup(func() { lab.setLink(t, true) })
	return lab
}

// setLink disables or enables the router's bridge port: frames stop both ways while
// both interfaces stay up, as when a switch between them fails.
func (lab *bfdLab) setLink(t *testing.T, up bool) {
	t.Helper()
	state := "0" // disabled
	if up {
		state = "3" // forwarding
	}
	lab.link.Run(t, "bridge", "link", "set", "dev", lab.routerPort, "state", state)
}

// nodeHasRouterRoute reports whether the node has the router's route of a family
// ("-4", "-6") in its kernel.
func (lab *bfdLab) nodeHasRouterRoute(t *testing.T, family string) bool {
	want := fmt.Sprintf("%s via %s", bfdRouterRoute, lab.router.IPv4)
	if family == "-6" {
		want = fmt.Sprintf("%s via %s", bfdRouterRouteV6, lab.router.IPv6)
	}
	return slices.Contains(ourRoutesVia(t, lab.node, family), want)
}

// birdHasNodeRoute reports whether BIRD has the node's pod CIDR of a family from it.
func (lab *bfdLab) birdHasNodeRoute(family string) bool {
	if family == "-6" {
		return strings.Contains(lab.bird.Ctl("show", "route", lab.node.PodCIDRv6.String()), "[node6 ")
	}
	return strings.Contains(lab.bird.Ctl("show", "route", lab.node.PodCIDRv4.String()), "[node4 ")
}

func (lab *bfdLab) established(t *testing.T) {
	t.Helper()
	waitFor(t, "BGP to carry routes both ways in both families", func() bool {
		return lab.nodeHasRouterRoute(t, "-4") && lab.nodeHasRouterRoute(t, "-6") && lab.birdHasNodeRoute("-4") && lab.birdHasNodeRoute("-6")
	})
}

// waitGone returns how long after since gone turned true, failing the test after window.
func waitGone(t *testing.T, what string, since time.Time, window time.Duration, present func() bool) time.Duration {
	t.Helper()
	for present() {
		if time.Since(since) > window {
			t.Fatalf("%s is still there %s after the link died", what, window)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(since)
}

// TestBFDWithdrawsTheRoutesOfADeadLinkAtOnce cuts the link between a node and BIRD
// (one session per IP family) a few times without either side's interface going down. With bfd = true the
// node's BFD session finds it dead in under a second, resets the BGP session and
// the router's routes leave the kernel; BIRD's BFD withdraws ours. Without BFD the
// routes stay for the 90 s hold time, well past the window the test waits.
func TestBFDWithdrawsTheRoutesOfADeadLinkAtOnce(t *testing.T) {
	const window = 10 * time.Second // far under the hold time
	t.Run("with BFD", func(t *testing.T) {
		lab := newBFDLab(t, true)
		for cut := 1; cut <= 3; cut++ {
			lab.established(t)
			waitFor(t, "BFD up on both sides in both families", func() bool {
				return strings.Count(lab.bird.Ctl("show", "bfd", "sessions"), " Up ") == 2 &&
					strings.Count(lab.proc.log.String(), "new=up") >= 2*cut
			})
			lab.setLink(t, false)
			cutAt := time.Now()
			var took []string
			for _, family := range []string{"-4", "-6"} {
				d := waitGone(t, fmt.Sprintf("cut %d: the router's route (%s) in our kernel", cut, family), cutAt, window,
					func() bool { return lab.nodeHasRouterRoute(t, family) })
				took = append(took, fmt.Sprintf("our kernel %s %s", family, d.Round(time.Millisecond)))
			}
			for _, family := range []string{"-4", "-6"} {
				d := waitGone(t, fmt.Sprintf("cut %d: BIRD's route (%s) to our pods", cut, family), cutAt, window,
					func() bool { return lab.birdHasNodeRoute(family) })
				took = append(took, fmt.Sprintf("BIRD %s %s", family, d.Round(time.Millisecond)))
			}
			t.Logf("cut %d: routes withdrawn after the cut: %s", cut, strings.Join(took, ", "))
			lab.setLink(t, true)
		}
		lab.established(t)
		if log := lab.proc.log.String(); !strings.Contains(log, "BFD found the link to the peer dead; resetting its BGP session") ||
			!strings.Contains(log, "peer="+lab.router.IPv4.String()) {
			t.Errorf("the node did not log the dead link naming the peer")
		}
		if got := lab.proc.scrape(t)[`kube_routerd_routing_bfd_transitions_total{state="down"}`]; got < 6 {
			t.Errorf("BFD transitions to down = %v, want at least 6 (3 cuts, 2 families)", got)
		}
	})
	t.Run("without BFD", func(t *testing.T) {
		lab := newBFDLab(t, false)
		lab.established(t)
		lab.setLink(t, false)
		time.Sleep(window)
		for _, family := range []string{"-4", "-6"} {
			if !lab.nodeHasRouterRoute(t, family) {
				t.Errorf("the router's route (%s) left the kernel within %s without BFD: the hold time cannot explain that", family, window)
			}
		}
	})
}
