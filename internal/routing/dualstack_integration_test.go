//go:build integration

package routing

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// ourRoutesVia lists the routes of our protocol of one family ("-4" or "-6") in a
// node's namespace as sorted "dst via gateway" lines.
func ourRoutesVia(t *testing.T, n *netns.Node, family string) []string {
	t.Helper()
	out, err := n.Command(context.Background(), "ip", family, "route", "show", "proto", "144").CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s route in %s: %v: %s", family, n.Name, err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[1] == "via" {
			lines = append(lines, strings.Join(f[:3], " "))
		} else if l != "" {
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	return lines
}

// podRoutesTo is what ourRoutesVia shows on a node that learned the pod CIDRs of
// others in family ("-4" or "-6").
func podRoutesTo(family string, others ...*netns.Node) []string {
	var out []string
	for _, o := range others {
		if family == "-4" {
			out = append(out, fmt.Sprintf("%s via %s", o.PodCIDRv4, o.IPv4))
		} else {
			out = append(out, fmt.Sprintf("%s via %s", o.PodCIDRv6, o.IPv6))
		}
	}
	slices.Sort(out)
	return out
}

const (
	metricEstablished = `kube_routerd_routing_bgp_peers{state="ESTABLISHED"}`
	metricAdvertised  = "kube_routerd_routing_routes_advertised"
	metricReceived    = "kube_routerd_routing_routes_received"
	metricInstalled   = "kube_routerd_routing_routes_installed"
	metricFlaps       = "kube_routerd_routing_bgp_session_flaps_total"
)

// metricsAre reports whether every wanted metric has its value, logging the
// difference (the last one is shown when a wait times out).
func metricsAre(t *testing.T, p *nodeProcess, want map[string]float64) bool {
	t.Helper()
	got := p.scrape(t)
	for name, v := range want {
		if got[name] != v {
			t.Logf("metric %s = %v, waiting for %v", name, got[name], v)
			return false
		}
	}
	return true
}

func TestDualStackMeshCarriesIPv6PodTrafficAndReportsPeerMetrics(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	api := forwardAPIServer(t, rc)
	link := netns.NewLink(t)
	var nodes []*netns.Node
	var pods []*netns.Pod
	for range 3 {
		// Registered with an IPv4 and an IPv6 InternalIP and pod CIDR each.
		n := link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("ds"), Client: cs})
		nodes = append(nodes, n)
		pods = append(pods, n.AddPod(t, netns.PodOptions{}))
	}
	var procs []*nodeProcess
	start := time.Now()
	for _, n := range nodes {
		procs = append(procs, startController(t, n, api, meshConfig))
	}
	others := func(self int) []*netns.Node {
		var out []*netns.Node
		for i, n := range nodes {
			if i != self {
				out = append(out, n)
			}
		}
		return out
	}
	testenv.Eventually(t, "every node to install the other nodes' IPv4 and IPv6 pod CIDRs", 90*time.Second, func() bool {
		for i, n := range nodes {
			if !slices.Equal(ourRoutesVia(t, n, "-4"), podRoutesTo("-4", others(i)...)) ||
				!slices.Equal(ourRoutesVia(t, n, "-6"), podRoutesTo("-6", others(i)...)) {
				return false
			}
		}
		return true
	})
	t.Logf("3 dual-stack nodes: all 12 pod routes installed %s after the controllers started", time.Since(start).Round(time.Millisecond))

	// Real IPv6 pod-to-pod traffic across nodes, both ways, through the learned routes.
	for _, pair := range [][2]int{{0, 2}, {2, 1}} {
		from, to := pods[pair[0]], pods[pair[1]]
		for _, proto := range []netns.Proto{netns.TCP, netns.UDP} {
			srv := to.Serve(t, proto, 0)
			r := from.ExpectReply(t, proto, netip.AddrPortFrom(to.IPv6, uint16(srv.Port)), to.Label)
			if r.Client.Addr() != from.IPv6 {
				t.Errorf("%s saw the %v connection from %s, want the pod address %s", to.Label, proto, r.Client.Addr(), from.IPv6)
			}
		}
	}

	// Two sessions (IPv4, IPv6) to each of two nodes; our two pod CIDRs announced;
	// one pod CIDR received on each session and installed.
	testenv.Eventually(t, "node 0's metrics to show the mesh", 60*time.Second, func() bool {
		return metricsAre(t, procs[0], map[string]float64{
			metricEstablished: 4, metricAdvertised: 2, metricReceived: 4, metricInstalled: 4, metricFlaps: 0,
		})
	})

	t.Run("a peer restart counts two session flaps and the sessions come back", func(t *testing.T) {
		procs[2].stop()
		testenv.Eventually(t, "node 0 to count both sessions to node 2 going down", 60*time.Second, func() bool {
			return metricsAre(t, procs[0], map[string]float64{metricEstablished: 2, metricFlaps: 2})
		})
		// Graceful restart: node 0 keeps node 2's routes while node 2 is away.
		if got := ourRoutesVia(t, nodes[0], "-6"); !slices.Equal(got, podRoutesTo("-6", nodes[1], nodes[2])) {
			t.Errorf("node 0 dropped IPv6 routes while node 2 restarts: %q", got)
		}
		restarted := time.Now()
		procs[2] = startController(t, nodes[2], api, meshConfig)
		testenv.Eventually(t, "node 0 to see both sessions to node 2 established again", 90*time.Second, func() bool {
			return metricsAre(t, procs[0], map[string]float64{metricEstablished: 4, metricFlaps: 2, metricReceived: 4, metricInstalled: 4})
		})
		t.Logf("sessions to a restarted node re-established %s after its controller started", time.Since(restarted).Round(time.Millisecond))
	})

	t.Run("a node that goes away has its IPv6 pod route withdrawn", func(t *testing.T) {
		procs[2].stop()
		if err := cs.CoreV1().Nodes().Delete(context.Background(), nodes[2].Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, "the IPv6 route to the deleted node's pods to go", 60*time.Second, func() bool {
			return slices.Equal(ourRoutesVia(t, nodes[0], "-6"), podRoutesTo("-6", nodes[1])) &&
				slices.Equal(ourRoutesVia(t, nodes[1], "-6"), podRoutesTo("-6", nodes[0]))
		})
		testenv.Eventually(t, "node 0's metrics to forget the node", 60*time.Second, func() bool {
			return metricsAre(t, procs[0], map[string]float64{metricEstablished: 2, metricReceived: 2, metricInstalled: 2})
		})
	})
}

// TestIPv6OnlyNodesMeshAndCarryPodTraffic registers three nodes with only an IPv6
// InternalIP and pod CIDR: each speaker derives its router id from its IPv6 address,
// peers over IPv6 only, installs the other nodes' IPv6 pod CIDRs, and pods talk across
// nodes over IPv6.
func TestIPv6OnlyNodesMeshAndCarryPodTraffic(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	api := forwardAPIServer(t, rc)
	link := netns.NewLink(t)
	var nodes []*netns.Node
	var pods []*netns.Pod
	var procs []*nodeProcess
	for range 3 {
		n := link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("v6only"), Client: cs, IPv6Only: true})
		nodes = append(nodes, n)
		pods = append(pods, n.AddPod(t, netns.PodOptions{}))
	}
	start := time.Now()
	for _, n := range nodes {
		procs = append(procs, startController(t, n, api, meshConfig))
	}
	testenv.Eventually(t, "every node to install the other nodes' IPv6 pod CIDRs and no IPv4 route", 90*time.Second, func() bool {
		for i, n := range nodes {
			others := slices.Delete(slices.Clone(nodes), i, i+1)
			if len(ourRoutesVia(t, n, "-4")) != 0 || !slices.Equal(ourRoutesVia(t, n, "-6"), podRoutesTo("-6", others...)) {
				return false
			}
		}
		return true
	})
	t.Logf("3 IPv6-only nodes: all 6 pod routes installed %s after the controllers started", time.Since(start).Round(time.Millisecond))
	for _, pair := range [][2]int{{0, 2}, {2, 1}} {
		from, to := pods[pair[0]], pods[pair[1]]
		srv := to.Serve(t, netns.TCP, 0)
		from.ExpectReply(t, netns.TCP, netip.AddrPortFrom(to.IPv6, uint16(srv.Port)), to.Label)
	}
	// One IPv6 session to each other node, our one pod CIDR announced, theirs installed.
	testenv.Eventually(t, "node 0's metrics to show an IPv6-only mesh", 60*time.Second, func() bool {
		return metricsAre(t, procs[0], map[string]float64{
			metricEstablished: 2, metricAdvertised: 1, metricReceived: 2, metricInstalled: 2,
		})
	})
}
