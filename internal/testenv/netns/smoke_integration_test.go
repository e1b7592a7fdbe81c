//go:build integration

package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestPodToPodProbesPassAndAnIptablesDropBlocksThem(t *testing.T) {
	_, cs := testenv.APIServer(t)
	k8sNS := testenv.Namespace(t, cs)
	node := NewNode(t, NodeOptions{Client: cs})
	a := node.AddPod(t, PodOptions{Namespace: k8sNS, Name: "client"})
	b := node.AddPod(t, PodOptions{Namespace: k8sNS, Name: "server"})

	pod, err := cs.CoreV1().Pods(k8sNS).Get(context.Background(), "server", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Status.PodIP != b.IPv4.String() || pod.Spec.NodeName != node.Name {
		t.Errorf("registered pod: podIP=%s node=%s, want %s on %s", pod.Status.PodIP, pod.Spec.NodeName, b.IPv4, node.Name)
	}

	tcp := b.Serve(t, TCP, 8080)
	udp := b.Serve(t, UDP, 8080)
	web := b.ServeHTTP(t, 8081)
	for _, dst := range []netip.Addr{b.IPv4, b.IPv6} {
		for _, srv := range []*Server{tcp, udp} {
			r := a.ExpectReply(t, srv.Proto, netip.AddrPortFrom(dst, uint16(srv.Port)), "server")
			if want := a.SameFamily(dst); r.Client.Addr() != want {
				t.Errorf("%s to %s: server saw the probe from %s, want %s (no SNAT between pods)", srv.Proto, dst, r.Client.Addr(), want)
			}
		}
		url := "http://" + netip.AddrPortFrom(dst, uint16(web.Port)).String() + "/"
		if r, err := a.HTTPGet(context.Background(), url); err != nil || r.Server != "server" {
			t.Errorf("GET %s: %v, %v", url, r, err)
		}
	}
	logProbeLatency(t, a, netip.AddrPortFrom(b.IPv4, uint16(tcp.Port)))

	// Same-bridge traffic passes the node's FORWARD chain (bridge netfilter is on).
	v4Target := netip.AddrPortFrom(b.IPv4, uint16(tcp.Port))
	rule := []string{"FORWARD", "-s", a.IPv4.String(), "-d", b.IPv4.String(), "-p", "tcp", "--dport", strconv.Itoa(tcp.Port), "-j", "DROP"}
	node.Run(t, "iptables", append([]string{"-w", "-I"}, rule...)...)
	a.ExpectBlocked(t, TCP, v4Target)
	// Only what the rule matches is blocked.
	a.ExpectReply(t, UDP, netip.AddrPortFrom(b.IPv4, uint16(udp.Port)), "server")
	a.ExpectReply(t, TCP, netip.AddrPortFrom(b.IPv6, uint16(tcp.Port)), "server")

	node.Run(t, "iptables", append([]string{"-w", "-D"}, rule...)...)
	a.ExpectReply(t, TCP, v4Target, "server")
}

func TestNodesOnOneLinkReachEachOthersPods(t *testing.T) {
	link := NewLink(t)
	n1 := link.AddNode(t, NodeOptions{})
	n2 := link.AddNode(t, NodeOptions{})
	link.StaticPodRoutes(t)
	p1 := n1.AddPod(t, PodOptions{Name: "p1"})
	p2 := n2.AddPod(t, PodOptions{Name: "p2"})
	if n1.PodCIDRv4 == n2.PodCIDRv4 || n1.IPv4 == n2.IPv4 {
		t.Fatalf("nodes share addresses: %s/%s and %s/%s", n1.IPv4, n1.PodCIDRv4, n2.IPv4, n2.PodCIDRv4)
	}

	srv := p2.Serve(t, TCP, 0)
	for _, dst := range []netip.Addr{p2.IPv4, p2.IPv6} {
		target := netip.AddrPortFrom(dst, uint16(srv.Port))
		// The first packet over a freshly made link can be lost while its ports and
		// neighbour entries settle; wait for first contact, then assert.
		testenv.Eventually(t, fmt.Sprintf("p1 to reach p2 at %s", target), 20*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := p1.Probe(ctx, TCP, target)
			return err == nil
		})
		r := p1.ExpectReply(t, TCP, target, "p2")
		if want := p1.SameFamily(dst); r.Client.Addr() != want {
			t.Errorf("routed pod-to-pod probe arrived from %s, want %s", r.Client.Addr(), want)
		}
	}
	nodeSrv := n2.Serve(t, UDP, 0)
	n1.ExpectReply(t, UDP, netip.AddrPortFrom(n2.IPv4, uint16(nodeSrv.Port)), n2.Name)
	n1.ExpectReply(t, UDP, netip.AddrPortFrom(n2.IPv6, uint16(nodeSrv.Port)), n2.Name)
}

func TestCleanupDeletesEveryNamespace(t *testing.T) {
	var names []string
	t.Run("build a node with pods", func(t *testing.T) {
		link := NewLink(t)
		node := link.AddNode(t, NodeOptions{})
		pod := node.AddPod(t, PodOptions{})
		pod.Serve(t, TCP, 0)
		names = []string{link.NetnsName, node.NetnsName, pod.NetnsName}
	})
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(runDir, n)); !os.IsNotExist(err) {
			t.Errorf("namespace %s still exists after the test ended (stat: %v)", n, err)
		}
	}
}

func TestStaleNamespacesOfDeadProcessesAreSwept(t *testing.T) {
	testenv.RequireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := namePrefix + strconv.Itoa(dead.Process.Pid) + "-pod1"
	if _, err := createNamed(stale); err != nil {
		t.Fatalf("create %s: %v", stale, err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Join(runDir, stale)) })
	sweepStale(t)
	if _, err := os.Stat(filepath.Join(runDir, stale)); !os.IsNotExist(err) {
		t.Errorf("stale namespace %s survived the sweep (stat: %v)", stale, err)
	}
}

// logProbeLatency reports (never asserts) how long a TCP probe takes end to end.
func logProbeLatency(t *testing.T, from *Pod, target netip.AddrPort) {
	const n = 50
	start := time.Now()
	for range n {
		if _, err := from.Probe(context.Background(), TCP, target); err != nil {
			t.Fatalf("probe: %v", err)
		}
	}
	t.Logf("TCP probe %s -> %s: %v per probe (mean of %d; includes entering the namespace and connect)", from.Label, target, time.Since(start)/n, n)
}

// A Linux bridge whose address was never set takes the lowest address of its ports.
// The pods' gateway must keep its address when a pod joins, or routed IPv6 breaks
// until each pod's neighbour entry for the gateway goes stale (no unsolicited
// neighbour advertisement tells them).
func TestPodBridgeKeepsItsAddressWhenAPortWithALowerOneJoins(t *testing.T) {
	node := NewNode(t, NodeOptions{})
	node.AddPod(t, PodOptions{})
	before := node.bridgeMAC(t)

	lowest := net.HardwareAddr{0, 0, 0, 0, 0, 1} // no unicast address is lower
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vlow", HardwareAddr: lowest}, PeerName: "vlow-peer"}
	if err := node.Netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth vlow: %v", err)
	}
	if err := node.Netlink.LinkSetMasterByIndex(veth, node.bridgeIndex); err != nil {
		t.Fatalf("attach vlow to %s: %v", node.Bridge, err)
	}
	node.AddPod(t, PodOptions{})
	if after := node.bridgeMAC(t); after.String() != before.String() {
		t.Errorf("%s changed its address from %s to %s when ports joined", node.Bridge, before, after)
	}
}

func (n *Node) bridgeMAC(t *testing.T) net.HardwareAddr {
	t.Helper()
	br, err := n.Netlink.LinkByIndex(n.bridgeIndex)
	if err != nil {
		t.Fatalf("read %s: %v", n.Bridge, err)
	}
	return br.Attrs().HardwareAddr
}

func TestFlushNeighboursEmptiesBothFamilies(t *testing.T) {
	node := NewNode(t, NodeOptions{})
	a := node.AddPod(t, PodOptions{})
	b := node.AddPod(t, PodOptions{})
	srv := b.Serve(t, UDP, 0)
	for _, dst := range []netip.Addr{b.IPv4, b.IPv6} {
		a.ExpectReply(t, UDP, netip.AddrPortFrom(dst, uint16(srv.Port)), b.Label)
	}
	if n := len(a.neighbours(t)); n < 2 {
		t.Fatalf("after probes in both families, want entries for b in both, got %d", n)
	}
	a.FlushNeighbours(t)
	if left := a.neighbours(t); len(left) > 0 {
		t.Errorf("entries left after the flush: %v", left)
	}
}

// neighbours returns the namespace's resolvable neighbour entries (no multicast).
func (ns *NS) neighbours(t *testing.T) []string {
	t.Helper()
	all, err := ns.Netlink.NeighList(0, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range all {
		if n.State&(netlink.NUD_NOARP|netlink.NUD_PERMANENT) == 0 {
			out = append(out, n.IP.String())
		}
	}
	return out
}
