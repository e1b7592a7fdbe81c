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

var bfdRouterRoute = netip.MustParsePrefix("172.20.0.0/16")

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
protocol bgp node {
	local as 65000; neighbor %[3]s as 64512; bfd on;
	hold time 90; connect retry time 2; connect delay time 1; error wait time 1, 5;
	ipv4 { import all; export where source = RTS_STATIC; };
}
`, lab.router.IPv4, bfdRouterRoute, lab.node.IPv4))
	lab.proc = startController(t, lab.node, api, fmt.Sprintf(`
[routing]
hold_time = "1m30s"
min_sync_interval = "50ms"
[[routing.peers]]
address = "%s"
asn = 65000
bfd = %v
`, lab.router.IPv4, bfd))
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

func (lab *bfdLab) nodeHasRouterRoute(t *testing.T) bool {
	return slices.Contains(ourRoutesVia(t, lab.node, "-4"), fmt.Sprintf("%s via %s", bfdRouterRoute, lab.router.IPv4))
}

func (lab *bfdLab) birdHasNodeRoute() bool {
	return strings.Contains(lab.bird.Ctl("show", "route", lab.node.PodCIDRv4.String()), "[node ")
}

func (lab *bfdLab) established(t *testing.T) {
	t.Helper()
	waitFor(t, "BGP to carry routes both ways", func() bool { return lab.nodeHasRouterRoute(t) && lab.birdHasNodeRoute() })
}

// TestBFDWithdrawsTheRoutesOfADeadLinkAtOnce cuts the link between a node and BIRD
// a few times without either side's interface going down. With bfd = true the
// node's BFD session finds it dead in under a second, resets the BGP session and
// the router's routes leave the kernel; BIRD's BFD withdraws ours. Without BFD the
// routes stay for the 90 s hold time, well past the window the test waits.
func TestBFDWithdrawsTheRoutesOfADeadLinkAtOnce(t *testing.T) {
	const window = 10 * time.Second // far under the hold time
	t.Run("with BFD", func(t *testing.T) {
		lab := newBFDLab(t, true)
		for cut := 1; cut <= 3; cut++ {
			lab.established(t)
			waitFor(t, "BFD up on both sides", func() bool {
				return strings.Contains(lab.bird.Ctl("show", "bfd", "sessions"), "Up") &&
					strings.Count(lab.proc.log.String(), "new=up") >= cut
			})
			lab.setLink(t, false)
			cutAt := time.Now()
			for lab.nodeHasRouterRoute(t) {
				if time.Since(cutAt) > window {
					t.Fatalf("cut %d: the router's route is still in the kernel %s after the link died", cut, window)
				}
				time.Sleep(10 * time.Millisecond)
			}
			nodeGone := time.Since(cutAt)
			for lab.birdHasNodeRoute() {
				if time.Since(cutAt) > window {
					t.Fatalf("cut %d: BIRD still has our route %s after the link died", cut, window)
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("cut %d: router's route left our kernel %s after the cut; BIRD withdrew ours after %s",
				cut, nodeGone.Round(time.Millisecond), time.Since(cutAt).Round(time.Millisecond))
			lab.setLink(t, true)
		}
		lab.established(t)
		if log := lab.proc.log.String(); !strings.Contains(log, "BFD found the link to the peer dead; resetting its BGP session") ||
			!strings.Contains(log, "peer="+lab.router.IPv4.String()) {
			t.Errorf("the node did not log the dead link naming the peer")
		}
		if got := lab.proc.scrape(t)[`kube_routerd_routing_bfd_transitions_total{state="down"}`]; got < 3 {
			t.Errorf("BFD transitions to down = %v, want at least 3", got)
		}
	})
	t.Run("without BFD", func(t *testing.T) {
		lab := newBFDLab(t, false)
		lab.established(t)
		lab.setLink(t, false)
		time.Sleep(window)
		if !lab.nodeHasRouterRoute(t) {
			t.Errorf("the router's route left the kernel within %s without BFD: the hold time cannot explain that", window)
		}
	})
}
