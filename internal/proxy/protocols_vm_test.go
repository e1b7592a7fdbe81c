//go:build vm

package proxy

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// apiService describes a Service with one port; create writes it to the real API
// server with an EndpointSlice per address family listing the given pods.
type apiService struct {
	name      string
	proto     corev1.Protocol
	port      int32
	target    int32
	svcType   corev1.ServiceType
	dualStack bool
	// local sets externalTrafficPolicy Local (for a NodePort or LoadBalancer type).
	local bool
}

func (s apiService) create(t *testing.T, cs kubernetes.Interface, namespace string, node *netns.Node, pods ...*netns.Pod) *corev1.Service {
	t.Helper()
	ctx := t.Context()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: s.name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: []corev1.ServicePort{{
			Name: "p", Protocol: s.proto, Port: s.port, TargetPort: intstr.FromInt32(s.target)}}},
	}
	if s.svcType != "" {
		svc.Spec.Type = s.svcType
	}
	if s.local {
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}
	families := []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4}
	if s.dualStack {
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
		svc.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
		families = append(families, discoveryv1.AddressTypeIPv6)
	}
	svc, err := cs.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Service %s (a dual-stack one needs --service-cluster-ip-range with both families): %v", s.name, err)
	}
	for _, family := range families {
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: namespace, Name: s.name + "-" + strings.ToLower(string(family)), Labels: map[string]string{discoveryv1.LabelServiceName: s.name}},
			AddressType: family,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("p"), Protocol: ptr.To(s.proto), Port: ptr.To(s.target)}},
		}
		for _, p := range pods {
			addr := p.IPv4
			if family == discoveryv1.AddressTypeIPv6 {
				addr = p.IPv6
			}
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{addr.String()},
				NodeName:   ptr.To(node.Name),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: p.Name},
			})
		}
		if _, err := cs.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return svc
}

// conntrackOf opens a conntrack netlink handle in ns. (NS.Netlink speaks only rtnetlink;
// asked for conntrack it would read the caller's namespace.)
func conntrackOf(t *testing.T, ns *netns.NS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatalf("netfilter netlink in %s: %v", ns.Label, err)
	}
	t.Cleanup(h.Close)
	return h
}

// udpConntrack lists the UDP conntrack entries addressed to vip:port as the endpoint
// addresses the kernel translated them to.
func udpConntrack(t *testing.T, h *netlink.Handle, vip netip.Addr, port uint16) []netip.Addr {
	t.Helper()
	family := netlink.InetFamily(unix.AF_INET)
	if vip.Is6() {
		family = unix.AF_INET6
	}
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, family)
	if err != nil {
		t.Fatalf("listing conntrack entries: %v", err)
	}
	var out []netip.Addr
	for _, f := range flows {
		dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
		src, _ := netip.AddrFromSlice(f.Reverse.SrcIP)
		if f.Forward.Protocol == syscall.IPPROTO_UDP && dst.Unmap() == vip && f.Forward.DstPort == port {
			out = append(out, src.Unmap())
		}
	}
	return out
}

// countReplies probes target n times from client and counts the answers per server,
// checking that each backend saw the client's own address.
func countReplies(t *testing.T, n int, want netip.Addr, probe func() (netns.Reply, error)) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		r, err := probe()
		if err != nil {
			t.Fatal(err)
		}
		seen[r.Server]++
		if r.Client.Addr() != want {
			t.Errorf("backend %s saw client %s, want the pod's own address %s", r.Server, r.Client.Addr(), want)
		}
	}
	return seen
}

func TestServiceProxyIPv6UDPAndSCTP(t *testing.T) {
	cs, namespace, link, node := vmCluster(t)
	ctx := t.Context()
	outside := link.AddNode(t, netns.NodeOptions{})
	pod1 := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	pod2 := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	client := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	for _, p := range []*netns.Pod{pod1, pod2} {
		p.Serve(t, netns.TCP, 8080)
		p.Serve(t, netns.UDP, 5353)
		p.Serve(t, netns.SCTP, 9000)
	}

	dp := testKernelDataplane(t, node.NS)
	cfg := config.Default().ServiceProxy
	cfg.ClusterCIDRs = []config.Prefix{
		{Prefix: netip.MustParsePrefix("10.244.0.0/16")},
		{Prefix: netip.MustParsePrefix("fd00:10:244::/48")},
	}
	// Long enough that only removing a UDP endpoint at once (not draining it) passes.
	cfg.GracefulTerminationTimeout = config.Duration{Duration: time.Hour}
	startController(t, cs, node.Name, cfg, dp)

	web := apiService{name: "web", proto: corev1.ProtocolTCP, port: 80, target: 8080, svcType: corev1.ServiceTypeNodePort, dualStack: true}.
		create(t, cs, namespace, node, pod1, pod2)
	dns := apiService{name: "dns", proto: corev1.ProtocolUDP, port: 53, target: 5353}.create(t, cs, namespace, node, pod1, pod2)
	sig := apiService{name: "sig", proto: corev1.ProtocolSCTP, port: 3868, target: 9000}.create(t, cs, namespace, node, pod1, pod2)
	flow := apiService{name: "flow", proto: corev1.ProtocolUDP, port: 54, target: 5353}.create(t, cs, namespace, node, pod1, pod2)
	if len(web.Spec.ClusterIPs) != 2 {
		t.Fatalf("Service web got ClusterIPs %v, want one per family", web.Spec.ClusterIPs)
	}
	web6 := netip.MustParseAddr(web.Spec.ClusterIPs[1])
	nodePort := uint16(web.Spec.Ports[0].NodePort)
	keys := map[string]ipvs.Key{
		"web IPv6 ClusterIP": {Addr: web6, Proto: ipvs.TCP, Port: 80},
		"web IPv6 NodePort":  {Addr: node.IPv6, Proto: ipvs.TCP, Port: nodePort},
		"dns":                {Addr: netip.MustParseAddr(dns.Spec.ClusterIP), Proto: ipvs.UDP, Port: 53},
		"sig":                {Addr: netip.MustParseAddr(sig.Spec.ClusterIP), Proto: ipvs.SCTP, Port: 3868},
		"flow":               {Addr: netip.MustParseAddr(flow.Spec.ClusterIP), Proto: ipvs.UDP, Port: 54},
	}
	testenv.Eventually(t, "every Service programmed with two destinations", 3*time.Minute, func() bool {
		for _, k := range keys {
			if d, _ := dp.IPVS.Destinations(k); len(d) != 2 {
				return false
			}
		}
		return true
	})

	t.Run("IPv6 ClusterIP balances round robin and keeps the client address", func(t *testing.T) {
		target := netip.AddrPortFrom(web6, 80)
		seen := countReplies(t, 4, client.IPv6, func() (netns.Reply, error) { return client.Probe(ctx, netns.TCP, target) })
		if seen[pod1.Name] != 2 || seen[pod2.Name] != 2 {
			t.Errorf("replies per backend = %v, want 2 each", seen)
		}
	})

	t.Run("IPv6 NodePort from outside the cluster is reachable and masqueraded", func(t *testing.T) {
		r, err := outside.Probe(ctx, netns.TCP, netip.AddrPortFrom(node.IPv6, nodePort))
		if err != nil {
			t.Fatal(err)
		}
		if r.Client.Addr() != node.GatewayV6 {
			t.Errorf("backend saw client %s, want the node's bridge address %s (masqueraded)", r.Client.Addr(), node.GatewayV6)
		}
	})

	t.Run("UDP ClusterIP balances datagrams round robin", func(t *testing.T) {
		target := netip.AddrPortFrom(keys["dns"].Addr, 53)
		// Each probe comes from a new socket (source port), so IPVS schedules it afresh.
		seen := countReplies(t, 4, client.IPv4, func() (netns.Reply, error) { return client.Probe(ctx, netns.UDP, target) })
		if seen[pod1.Name] != 2 || seen[pod2.Name] != 2 {
			t.Errorf("replies per backend = %v, want 2 each", seen)
		}
	})

	t.Run("SCTP ClusterIP balances associations round robin", func(t *testing.T) {
		target := netip.AddrPortFrom(keys["sig"].Addr, 3868)
		seen := countReplies(t, 4, client.IPv4, func() (netns.Reply, error) { return client.Probe(t.Context(), netns.SCTP, target) })
		if seen[pod1.Name] != 2 || seen[pod2.Name] != 2 {
			t.Errorf("replies per backend = %v, want 2 each", seen)
		}
	})

	t.Run("a removed UDP endpoint loses its conntrack entries and the flow moves on", func(t *testing.T) {
		k := keys["flow"]
		ct := conntrackOf(t, node.NS)
		conn := dialUDP(t, client.NS, netip.AddrPortFrom(k.Addr, k.Port))
		first, err := exchangeUDP(conn)
		if err != nil {
			t.Fatal(err)
		}
		removed, kept := pod1, pod2
		if first.Server == pod2.Name {
			removed, kept = pod2, pod1
		}
		if got := udpConntrack(t, ct, k.Addr, k.Port); !slices.Contains(got, removed.IPv4) {
			t.Fatalf("conntrack entries for %s translate to %v, want one to %s; conntrack -L:\n%s",
				k, got, removed.IPv4, node.Run(t, "conntrack", "-L", "-p", "udp"))
		}

		slice, err := cs.DiscoveryV1().EndpointSlices(namespace).Get(ctx, "flow-ipv4", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slice.Endpoints = withoutAddr(slice.Endpoints, removed.IPv4)
		if _, err := cs.DiscoveryV1().EndpointSlices(namespace).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, "the removed endpoint gone from IPVS", 2*time.Minute, func() bool {
			d, _ := dp.IPVS.Destinations(k)
			return len(d) == 1 && d[0].Addr == kept.IPv4
		})
		// The sync deletes the destination and then the entries; a moment may separate them.
		testenv.Eventually(t, "the stale conntrack entry gone", 30*time.Second, func() bool {
			return !slices.Contains(udpConntrack(t, ct, k.Addr, k.Port), removed.IPv4)
		})
		// The same socket (same source port) now reaches the remaining backend.
		var next netns.Reply
		testenv.Eventually(t, "a reply on the same flow", time.Minute, func() bool {
			next, err = exchangeUDP(conn)
			return err == nil
		})
		if next.Server != kept.Name {
			t.Errorf("after the removal the flow reached %s, want %s", next.Server, kept.Name)
		}
		t.Logf("flow from %s moved from %s to %s; conntrack now %v", conn.LocalAddr(), first.Server, next.Server, udpConntrack(t, ct, k.Addr, k.Port))
	})
}

// dialUDP opens a UDP socket in ns connected to target; it keeps its source port, so
// its datagrams are one flow for conntrack and IPVS.
func dialUDP(t *testing.T, ns *netns.NS, target netip.AddrPort) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	if err := ns.Do(func() (err error) {
		conn, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// exchangeUDP sends one probe on conn and reads the reply.
func exchangeUDP(conn *net.UDPConn) (netns.Reply, error) {
	if err := conn.SetDeadline(time.Now().Add(netns.DefaultProbeTimeout)); err != nil {
		return netns.Reply{}, err
	}
	if _, err := conn.Write([]byte("probe\n")); err != nil {
		return netns.Reply{}, err
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return netns.Reply{}, err
	}
	server, client, ok := strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
	ap, perr := netip.ParseAddrPort(client)
	if !ok || perr != nil {
		return netns.Reply{}, errors.New("malformed UDP reply " + string(buf[:n]))
	}
	return netns.Reply{Server: server, Client: ap}, nil
}

// withoutAddr returns the endpoints but the one with address a.
func withoutAddr(eps []discoveryv1.Endpoint, a netip.Addr) []discoveryv1.Endpoint {
	out := eps[:0]
	for _, e := range eps {
		if len(e.Addresses) == 0 || e.Addresses[0] != a.String() {
			out = append(out, e)
		}
	}
	return out
}
