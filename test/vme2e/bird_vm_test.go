//go:build vm

package vme2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// startBIRD runs BIRD 2 in a router namespace as an outside BGP router that peers with
// nodes and puts what it learns into its kernel table.
func startBIRD(t *testing.T, router *netns.Node, asn int, nodes ...*netns.Node) *netns.BIRD {
	t.Helper()
	var neighbors strings.Builder
	for i, n := range nodes {
		fmt.Fprintf(&neighbors, "protocol bgp node%d from k8s_node { neighbor %s as 64512; }\n", i, n.IPv4)
	}
	return netns.StartBIRD(t, router.NS, fmt.Sprintf(`router id %s;
protocol device {}
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }
template bgp k8s_node { local as %d; ipv4 { import all; export none; }; }
%s`, router.IPv4, asn, neighbors.String()))
}

// TestOutsideRouterReachesAServiceVIPThroughBGPAndIPVS: a node runs the real binary
// with the service proxy and routing advertising cluster IPs to an outside BIRD router
// on its segment. BIRD learns the Service's cluster IP as a /32 via the node, installs
// it, and new connections from the router to the VIP reach both backend pods through
// the node's IPVS.
func TestOutsideRouterReachesAServiceVIPThroughBGPAndIPVS(t *testing.T) {
	testenv.RequireVM(t)
	bin := daemonBinary(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	link := netns.NewLink(t)
	node := link.AddNode(t, netns.NodeOptions{Client: cs})
	// Outside the cluster: no Node object, so the nodes do not mesh with it.
	router := link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("router")})
	labels := map[string]string{"app": "web"}
	webA := node.AddPod(t, netns.PodOptions{Name: "web-a", Namespace: ns, Labels: labels})
	webB := node.AddPod(t, netns.PodOptions{Name: "web-b", Namespace: ns, Labels: labels})
	for _, p := range []*netns.Pod{webA, webB} {
		p.Serve(t, netns.TCP, probeTargetPort)
	}

	const routerASN = 65000
	bird := startBIRD(t, router, routerASN, node)
	d := newDaemon(t, node, rc, bin, fmt.Sprintf(`
[service_proxy]
cluster_cidrs = ["10.244.0.0/16"]

[network_policy]
enabled = false

[routing]
advertise_cluster_ips = true

[[routing.peers]]
address = %q
asn = %d
`, router.IPv4, routerASN))
	t.Logf("READY after %s", d.StartReady(readyTimeout).Round(time.Millisecond))

	vip := createService(t, cs, ns, "web", webA, webB)
	target := netip.AddrPortFrom(vip, probePort)
	waitIPVS(t, node, target, webA, webB)
	created := time.Now()
	testenv.Eventually(t, "BIRD to learn and install the cluster IP "+vip.String(), 3*time.Minute, func() bool {
		return strings.Contains(router.Run(t, "ip", "-4", "route", "show", "proto", "bird"), vip.String()+" via "+node.IPv4.String())
	})
	t.Logf("the router installed %s/32 via %s %s after the Service was created", vip, node.IPv4, time.Since(created).Round(time.Millisecond))
	t.Logf("birdcl show route:\n%s", bird.Ctl("show", "route"))
	t.Logf("router: ip route show proto bird\n%s", router.Run(t, "ip", "-4", "route", "show", "proto", "bird"))

	seen := map[string]int{}
	for range 4 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := router.Probe(ctx, netns.TCP, target)
		cancel()
		if err != nil {
			t.Fatalf("the router cannot reach the Service at %s: %v", target, err)
		}
		seen[r.Server]++
		t.Logf("router -> %s answered by %s, which saw the client as %s", target, r.Server, r.Client.Addr())
	}
	if seen[webA.Name] == 0 || seen[webB.Name] == 0 {
		t.Errorf("connections from the router were answered %v, want both backends", seen)
	}
}
