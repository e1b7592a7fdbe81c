//go:build vm

package proxy

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/podtunnel"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// accepted is what a pod's server saw of one connection.
type accepted struct{ local, remote netip.AddrPort }

// serveAccepts listens on port 80 in the pod, answers each connection with a line and
// reports its addresses.
func serveAccepts(t *testing.T, pod *netns.Pod) <-chan accepted {
	t.Helper()
	var ln net.Listener
	if err := pod.Do(func() (err error) { ln, err = net.Listen("tcp4", ":80"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	out := make(chan accepted, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			out <- accepted{c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()}
			_, _ = c.Write([]byte(pod.Name + "\n"))
			c.Close()
		}
	}()
	return out
}

// request connects from the client to target and reads the answering pod's name,
// retrying while the path is still settling (neighbour resolution).
func request(t *testing.T, client *netns.Node, target netip.AddrPort) string {
	t.Helper()
	var last error
	for deadline := time.Now().Add(vmWait); time.Now().Before(deadline); {
		conn, err := client.DialTCP(target, 5*time.Second)
		if err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, rerr := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if rerr == nil {
				return line[:len(line)-1]
			}
			err = rerr
		}
		last = err
	}
	t.Fatalf("no answer from %s: %v", target, last)
	return ""
}

// dsrNode runs a proxy harness on a test node; its pods are found in the test's
// namespaces. Each harness sees itself as thisNode, so the slices it stores say which
// endpoints are its own.
func dsrNode(t *testing.T, n *netns.Node) (*harness, Dataplane) {
	dp := testKernelDataplane(t, n.NS)
	dp.Tunnels = &podtunnel.Kernel{Places: []string{"/var/run/netns", podtunnel.ProcPlace}, Node: n.Handle}
	return newHarnessOn(t, dp, allowTestExternalIPs), dp
}

// TestDSRRepliesGoFromThePodStraightToTheClient: a client outside the cluster sends
// requests to a DSR external IP through node A. A's IPVS tunnels them to a pod on B,
// then also to a pod on A; each pod holds the VIP and answers the client itself, so
// the pod's socket has the VIP and the client's own address, and B's pod's replies
// never reach A (B and the client share a link): A's IPVS counts no reply packet.
func TestDSRRepliesGoFromThePodStraightToTheClient(t *testing.T) {
	testenv.RequireVM(t)
	link := netns.NewLink(t)
	nodeA := link.AddNode(t, netns.NodeOptions{})
	nodeB := link.AddNode(t, netns.NodeOptions{})
	client := link.AddNode(t, netns.NodeOptions{Name: "client"})
	link.StaticPodRoutes(t)
	vip := netip.MustParseAddr("203.0.113.5")
	client.AddRoute(t, netip.PrefixFrom(vip, 32), nodeA.IPv4)
	podA, podB := nodeA.AddPod(t, netns.PodOptions{}), nodeB.AddPod(t, netns.PodOptions{})
	gotA, gotB := serveAccepts(t, podA), serveAccepts(t, podB)

	svc := func(value string) *corev1.Service {
		return dsrService(value, func(s *corev1.Service) { s.Status.LoadBalancer.Ingress = nil })
	}
	hA, dpA := dsrNode(t, nodeA)
	hB, _ := dsrNode(t, nodeB)
	// apply gives both nodes the Service and its endpoints: podB always, podA when
	// withA. Each node sees its own pod as local.
	apply := func(value string, withA bool) {
		onA, onB := []ep{{ip: podB.IPv4.String(), node: "b"}}, []ep{{ip: podB.IPv4.String()}}
		if withA {
			onA, onB = append(onA, ep{ip: podA.IPv4.String()}), append(onB, ep{ip: podA.IPv4.String(), node: "a"})
		}
		hA.store(svc(value))
		hA.store(port80(onA...))
		hB.store(svc(value))
		hB.store(port80(onB...))
		hA.sync(true)
		hB.sync(true)
	}
	target := netip.AddrPortFrom(vip, 80)
	// wantDSR checks what a pod's server saw: the pod itself ended the connection as
	// the VIP, facing the real client, so its replies left with the VIP as source.
	// Through NAT it would see its own address.
	wantDSR := func(pod *netns.Pod, ch <-chan accepted) {
		t.Helper()
		if a := <-ch; a.local != target || a.remote.Addr() != client.IPv4 {
			t.Errorf("pod %s accepted %s -> %s, want %s -> %s", pod.Name, a.remote, a.local, client.IPv4, target)
		}
	}

	// Only podB, on the other node: A's IPVS counts the requests and no reply, as
	// podB's replies go from B straight to the client over their shared link.
	apply("tunnel", false)
	if got := request(t, client, target); got != podB.Name {
		t.Fatalf("answer from %s, want %s", got, podB.Name)
	}
	wantDSR(podB, gotB)
	key := ipvs.Key{Addr: vip, Proto: ipvs.TCP, Port: 80}
	var st ipvs.Stats
	for deadline := time.Now().Add(vmWait); st.PacketsIn == 0 && time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		all, err := dpA.IPVS.Stats()
		if err != nil {
			t.Fatal(err)
		}
		st = all[key]
	}
	t.Logf("IPVS counters of %s on node A: %d connections, %d packets in, %d out", key, st.Connections, st.PacketsIn, st.PacketsOut)
	if st.PacketsIn == 0 || st.PacketsOut != 0 {
		t.Errorf("IPVS counters of %s on node A: %d packets in, %d out; want some in and none out", key, st.PacketsIn, st.PacketsOut)
	}

	// podA on node A too: both pods hold the VIP on their tunnel and answer directly.
	apply("tunnel", true)
	for _, pod := range []*netns.Pod{podA, podB} {
		tun, err := pod.Netlink.LinkByName(podtunnel.LinkName)
		if err != nil {
			t.Fatalf("pod %s has no %s: %v", pod.Name, podtunnel.LinkName, err)
		}
		addrs, err := pod.Netlink.AddrList(tun, netlink.FAMILY_V4)
		if err != nil || len(addrs) != 1 || !addrs[0].IP.Equal(net.IP(vip.AsSlice())) {
			t.Errorf("pod %s: %s holds %v (%v), want only %s", pod.Name, podtunnel.LinkName, addrs, err, vip)
		}
	}
	answered := map[string]bool{}
	for i := 0; i < 6 && len(answered) < 2; i++ {
		answered[request(t, client, target)] = true
	}
	if !answered[podA.Name] || !answered[podB.Name] {
		t.Fatalf("answers came from %v, want both pods", answered)
	}
	wantDSR(podA, gotA)
	wantDSR(podB, gotB)

	// The annotation goes: the pods lose their tunnels, and NAT serves the VIP again.
	apply("", true)
	for _, pod := range []*netns.Pod{podA, podB} {
		if _, err := pod.Netlink.LinkByName(podtunnel.LinkName); err == nil {
			t.Errorf("pod %s still has %s after the annotation went", pod.Name, podtunnel.LinkName)
		}
	}
	for _, ch := range []<-chan accepted{gotA, gotB} {
		for len(ch) > 0 {
			<-ch // connections of retries above
		}
	}
	name := request(t, client, target)
	ch := map[string]<-chan accepted{podA.Name: gotA, podB.Name: gotB}[name]
	if a := <-ch; a.local.Addr() == vip {
		t.Errorf("without DSR pod %s still accepted on the VIP: %s", name, a.local)
	}
}

// largeRequestSize is a request that takes more than one full-size segment.
const largeRequestSize = 3000

// serveLarge listens on port 80 in the pod and answers each connection that sent a
// whole large request with the pod's name.
func serveLarge(t *testing.T, pod *netns.Pod) {
	t.Helper()
	var ln net.Listener
	if err := pod.Do(func() (err error) { ln, err = net.Listen("tcp4", ":80"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.ReadFull(c, make([]byte, largeRequestSize)); err == nil {
					_, _ = c.Write([]byte(pod.Name + "\n"))
				}
			}()
		}
	}()
}

// largeRequest sends a large request from the client to target and reads the answer.
// mss is the client's segment size on the connection (the server's advertised MSS
// less TCP options); err is set when the answer did not come within wait.
func largeRequest(client *netns.Node, target netip.AddrPort, wait time.Duration) (name string, mss int, err error) {
	conn, err := client.DialTCP(target, 10*time.Second)
	if err != nil {
		return "", 0, err
	}
	defer conn.Close()
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return "", 0, err
	}
	var sockErr error
	if err := raw.Control(func(fd uintptr) { mss, sockErr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) }); err != nil {
		return "", 0, err
	}
	if sockErr != nil {
		return "", 0, sockErr
	}
	_ = conn.SetDeadline(time.Now().Add(wait))
	if _, err := conn.Write(make([]byte, largeRequestSize)); err != nil {
		return "", mss, err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", mss, err
	}
	return line[:len(line)-1], mss, nil
}

// TestDSRClampsTheMSSSoFullSizeRequestsFitTheTunnel: every link has an MTU of 1500,
// and the client drops ICMP "fragmentation needed" (a firewall in its path). A pod
// advertises the MSS of its 1500-byte interface, so the client's full-size segments
// (1500 bytes) no longer fit once IPVS adds its 20-byte IPIP header; IPVS's ICMP
// never reaches the client and a request of two segments hangs. The pod's node clamps
// the MSS in the pod's SYN-ACK to 1440, so requests pass: for a pod on another node
// than IPVS's and for one on the same node. Without the clamp (its chain flushed by
// hand) the request hangs; a full sync puts the rules back, and a restarted proxy
// finds them as it would write them.
func TestDSRClampsTheMSSSoFullSizeRequestsFitTheTunnel(t *testing.T) {
	testenv.RequireVM(t)
	link := netns.NewLink(t)
	nodeA := link.AddNode(t, netns.NodeOptions{})
	nodeB := link.AddNode(t, netns.NodeOptions{})
	client := link.AddNode(t, netns.NodeOptions{Name: "client"})
	link.StaticPodRoutes(t)
	vip := netip.MustParseAddr("203.0.113.5")
	client.AddRoute(t, netip.PrefixFrom(vip, 32), nodeA.IPv4)
	client.Run(t, "iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP")
	// A real client's NIC puts wire-size segments on the link; over veth the kernel
	// would hand IPVS one segmentation-offload packet, which IPVS fragments instead
	// of refusing.
	eth0, err := client.Netlink.LinkByName("eth0")
	if err == nil {
		err = client.Netlink.LinkSetGSOMaxSegs(eth0, 1)
	}
	if err != nil {
		t.Fatalf("client: one segment per packet on eth0: %v", err)
	}
	podA, podB := nodeA.AddPod(t, netns.PodOptions{}), nodeB.AddPod(t, netns.PodOptions{})
	serveLarge(t, podA)
	serveLarge(t, podB)

	svc := dsrService("tunnel", func(s *corev1.Service) { s.Status.LoadBalancer.Ingress = nil })
	hA, _ := dsrNode(t, nodeA)
	hB, _ := dsrNode(t, nodeB)
	// serve makes pod the Service's one endpoint on both nodes.
	serve := func(h *harness, self *netns.Node, pod *netns.Pod) {
		e := ep{ip: pod.IPv4.String()}
		if pod.Node != self {
			e.node = pod.Node.Name
		}
		h.store(svc)
		h.store(port80(e))
	}
	syncBoth := func() {
		hA.sync(true)
		hB.sync(true)
	}
	target := netip.AddrPortFrom(vip, 80)
	for _, pod := range []*netns.Pod{podB, podA} {
		serve(hA, nodeA, pod)
		serve(hB, nodeB, pod)
		syncBoth()
		var name string
		var mss int
		for deadline := time.Now().Add(vmWait); time.Now().Before(deadline); {
			if name, mss, err = largeRequest(client, target, 10*time.Second); err == nil {
				break
			}
		}
		t.Logf("pod %s on %s, IPVS on %s: %d-byte request answered by %q, client MSS %d (%v)",
			pod.Name, pod.Node.Name, nodeA.Name, largeRequestSize, name, mss, err)
		// 1440 advertised, less 12 bytes of TCP timestamps.
		if err != nil || name != pod.Name || mss > 1440-12 {
			t.Fatalf("with the clamp: answer %q, MSS %d, %v; want %s, MSS at most %d", name, mss, err, pod.Name, 1440-12)
		}

		pod.Node.Run(t, "iptables", "-t", "mangle", "-F", chainDSRMSS)
		name, mss, err = largeRequest(client, target, 15*time.Second)
		t.Logf("clamp flushed on %s: answer %q, client MSS %d (%v)", pod.Node.Name, name, mss, err)
		if err == nil || mss != 1500-40-12 {
			t.Fatalf("without the clamp: answer %q, MSS %d, %v; want no answer at MSS %d", name, mss, err, 1500-40-12)
		}
		syncBoth()
		if name, mss, err = largeRequest(client, target, vmWait); err != nil || name != pod.Name {
			t.Fatalf("after the full sync repaired the clamp: answer %q, MSS %d, %v", name, mss, err)
		}
	}

	// The rules as read back from the kernel are the rules as written: a restarted
	// proxy writes nothing.
	h2, _ := dsrNode(t, nodeA)
	serve(h2, nodeA, podA)
	h2.sync(true)
	if w := h2.c.writes(); w != 0 {
		t.Errorf("a restarted proxy on %s made %d writes, want 0:\n%s", nodeA.Name, w, nodeA.Run(t, "iptables-save", "-t", "mangle"))
	}
	if rules := nodeA.Run(t, "iptables-save", "-t", "mangle"); !strings.Contains(rules, "--set-mss 1440") {
		t.Errorf("no clamp to 1440 on %s:\n%s", nodeA.Name, rules)
	}
}

// TestDSRServesIPv6ThroughIP6IP6Tunnels: an IPv6 external IP with DSR. A's IPVS
// tunnels requests (ip6ip6) to a pod on B, then to one on A; the pod holds the VIP on
// its ip6ip6 device and answers the client itself (B's pod's replies never reach A). A client dropping ICMPv6 "packet
// too big" still gets a large request through: the MSS is clamped to the pod's MTU
// less 100 (ip6ip6 40, IPv6 40, TCP 20); with the clamp flushed by hand it hangs.
func TestDSRServesIPv6ThroughIP6IP6Tunnels(t *testing.T) {
	testenv.RequireVM(t)
	link := netns.NewLink(t)
	nodeA := link.AddNode(t, netns.NodeOptions{})
	nodeB := link.AddNode(t, netns.NodeOptions{})
	client := link.AddNode(t, netns.NodeOptions{Name: "client"})
	link.StaticPodRoutes(t)
	vip := netip.MustParseAddr("2001:db8::5")
	client.AddRoute(t, netip.PrefixFrom(vip, 128), nodeA.IPv6)
	client.Run(t, "ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "packet-too-big", "-j", "DROP")
	eth0, err := client.Netlink.LinkByName("eth0")
	if err == nil {
		err = client.Netlink.LinkSetGSOMaxSegs(eth0, 1)
	}
	if err != nil {
		t.Fatalf("client: one segment per packet on eth0: %v", err)
	}
	podA, podB := nodeA.AddPod(t, netns.PodOptions{}), nodeB.AddPod(t, netns.PodOptions{})
	accepts := map[*netns.Pod]<-chan accepted{}
	for _, pod := range []*netns.Pod{podA, podB} {
		ch := make(chan accepted, 16)
		accepts[pod] = ch
		var ln net.Listener
		if err := pod.Do(func() (err error) { ln, err = net.Listen("tcp6", "[::]:80"); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				ch <- accepted{c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()}
				go func() {
					defer c.Close()
					if _, err := io.ReadFull(c, make([]byte, largeRequestSize)); err == nil {
						_, _ = c.Write([]byte(pod.Name + "\n"))
					}
				}()
			}
		}()
	}

	allowV6 := func(c *config.ServiceProxy) {
		c.ExternalIPRanges = []config.Prefix{{Prefix: netip.MustParsePrefix("2001:db8::/64")}}
	}
	newNode := func(n *netns.Node) (*harness, Dataplane) {
		dp := testKernelDataplane(t, n.NS)
		dp.Tunnels = &podtunnel.Kernel{Places: []string{"/var/run/netns", podtunnel.ProcPlace}, Node: n.Handle}
		return newHarnessOn(t, dp, allowV6), dp
	}
	hA, dpA := newNode(nodeA)
	hB, _ := newNode(nodeB)
	svc := dsrService("tunnel", func(s *corev1.Service) {
		s.Spec.ExternalIPs = []string{vip.String()}
		s.Status.LoadBalancer.Ingress = nil
	})
	serve := func(h *harness, self *netns.Node, pod *netns.Pod) {
		e := ep{ip: pod.IPv6.String()}
		if pod.Node != self {
			e.node = pod.Node.Name
		}
		slice := endpointSlice(discoveryv1.AddressTypeIPv6, e)
		*slice.Ports[0].Port = 80
		h.store(svc)
		h.store(slice)
		h.sync(true)
	}
	target := netip.AddrPortFrom(vip, 80)
	key := ipvs.Key{Addr: vip, Proto: ipvs.TCP, Port: 80}
	for _, pod := range []*netns.Pod{podB, podA} {
		serve(hA, nodeA, pod)
		serve(hB, nodeB, pod)
		var name string
		var mss int
		for deadline := time.Now().Add(vmWait); time.Now().Before(deadline); {
			if name, mss, err = largeRequest(client, target, 10*time.Second); err == nil {
				break
			}
		}
		t.Logf("pod %s on %s, IPVS on %s: %d-byte request answered by %q, client MSS %d (%v)",
			pod.Name, pod.Node.Name, nodeA.Name, largeRequestSize, name, mss, err)
		// 1400 advertised, less 12 bytes of TCP timestamps.
		if err != nil || name != pod.Name || mss > 1400-12 {
			t.Fatalf("answer %q, MSS %d, %v; want %s, MSS at most %d", name, mss, err, pod.Name, 1400-12)
		}
		var a accepted
		for ch := accepts[pod]; len(ch) > 0; {
			a = <-ch // every connection came from the client to the VIP
			if a.local != target || a.remote.Addr() != client.IPv6 {
				break
			}
		}
		if a.local != target || a.remote.Addr() != client.IPv6 {
			t.Errorf("pod %s accepted %s -> %s, want %s -> %s", pod.Name, a.remote, a.local, client.IPv6, target)
		}
		if pod == podB {
			// podB's replies go from B straight to the client: A's IPVS counts the
			// requests and no reply. (Counted before any test without the clamp, whose
			// ICMPv6 "packet too big" errors IPVS counts as out.)
			var st ipvs.Stats
			for deadline := time.Now().Add(vmWait); st.PacketsIn == 0 && time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
				all, err := dpA.IPVS.Stats()
				if err != nil {
					t.Fatal(err)
				}
				st = all[key]
			}
			t.Logf("IPVS counters of %s on node A: %d packets in, %d out", key, st.PacketsIn, st.PacketsOut)
			if st.PacketsIn == 0 || st.PacketsOut != 0 {
				t.Errorf("IPVS counters of %s on node A: %d packets in, %d out; want some in and none out", key, st.PacketsIn, st.PacketsOut)
			}
		}
		pod.Node.Run(t, "ip6tables", "-t", "mangle", "-F", chainDSRMSS)
		name, mss, err = largeRequest(client, target, 15*time.Second)
		t.Logf("clamp flushed on %s: answer %q, client MSS %d (%v)", pod.Node.Name, name, mss, err)
		if err == nil || mss != 1500-60-12 {
			t.Fatalf("without the clamp: answer %q, MSS %d, %v; want no answer at MSS %d", name, mss, err, 1500-60-12)
		}
		hA.sync(true)
		hB.sync(true)
		if name, _, err = largeRequest(client, target, vmWait); err != nil || name != pod.Name {
			t.Fatalf("after the full sync repaired the clamp: answer %q, %v", name, err)
		}
		tun, err := pod.Netlink.LinkByName(podtunnel.LinkName6)
		if err != nil {
			t.Fatalf("pod %s has no %s: %v", pod.Name, podtunnel.LinkName6, err)
		}
		if _, ok := tun.(*netlink.Ip6tnl); !ok {
			t.Errorf("pod %s: %s is a %T, want an ip6tnl device", pod.Name, podtunnel.LinkName6, tun)
		}
	}
}
