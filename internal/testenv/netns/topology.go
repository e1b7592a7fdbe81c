package netns

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// Default addressing. Every test gets its own namespaces, so these never clash between
// tests or with the host.
var (
	defaultLinkV4 = netip.MustParsePrefix("192.168.200.0/24")
	defaultLinkV6 = netip.MustParsePrefix("fd00:200::/64")
)

// DefaultBridge is the pod bridge's name in a node namespace, as kube-router names it.
const DefaultBridge = "kube-bridge"

// Link is a shared L2 segment for multi-node tests: a bridge ("br0") in a namespace of
// its own, with each node's "eth0" plugged into it.
type Link struct {
	*NS
	// V4 and V6 are the link's subnets; node i gets host number 10+i in each.
	V4, V6 netip.Prefix

	bridgeIndex int
	mu          sync.Mutex
	nodes       []*Node
}

// NewLink creates an empty link (192.168.200.0/24 and fd00:200::/64).
func NewLink(t testing.TB) *Link {
	t.Helper()
	ns := NewNS(t, "link", "link")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := ns.Netlink.LinkAdd(br); err != nil {
		t.Fatalf("create bridge in %s: %v", ns.NetnsName, err)
	}
	if err := ns.Netlink.LinkSetUp(br); err != nil {
		t.Fatalf("set bridge up in %s: %v", ns.NetnsName, err)
	}
	return &Link{NS: ns, V4: defaultLinkV4, V6: defaultLinkV6, bridgeIndex: br.Attrs().Index}
}

// Nodes returns the nodes attached so far, in order.
func (l *Link) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Node(nil), l.nodes...)
}

// NodeOptions says how to build a node. Zero values pick defaults.
type NodeOptions struct {
	// Name of the Node object and label of the namespace; default a unique name.
	Name string
	// PodCIDRv4 and PodCIDRv6 default to 10.244.<i>.0/24 and fd00:10:244:<i>::/64 for
	// the i-th node of a link (i = 1 for a standalone node).
	PodCIDRv4, PodCIDRv6 netip.Prefix
	// Bridge is the pod bridge's name; default DefaultBridge.
	Bridge string
	// Client, when set, registers the Node (and later its Pods) in that API server.
	Client kubernetes.Interface
	// Labels of the Node object.
	Labels map[string]string
	// IPv6Only registers the Node with only its IPv6 InternalIP and pod CIDR; the
	// namespace keeps its IPv4 addresses, which then no controller should use.
	IPv6Only bool
}

// Node is a test node: a namespace that forwards IPv4 and IPv6, with a pod bridge
// whose first address in each pod CIDR is the pods' gateway.
type Node struct {
	*NS
	// Name is the Node object's name.
	Name string
	// IPv4 and IPv6 are the node's addresses on its link ("eth0"); a standalone node
	// uses its gateway addresses.
	IPv4, IPv6 netip.Addr
	// PodCIDRv4 and PodCIDRv6 hold the node's pod addresses.
	PodCIDRv4, PodCIDRv6 netip.Prefix
	// GatewayV4 and GatewayV6 are the bridge's addresses, the pods' default gateway.
	GatewayV4, GatewayV6 netip.Addr
	// Bridge is the pod bridge's name.
	Bridge string
	// Object is the registered Node, nil without NodeOptions.Client.
	Object *corev1.Node

	client      kubernetes.Interface
	bridgeIndex int
	mu          sync.Mutex
	pods        int
}

// NewNode creates a standalone node (no link).
func NewNode(t testing.TB, opts NodeOptions) *Node {
	t.Helper()
	n := newNode(t, opts, 1)
	n.IPv4, n.IPv6 = n.GatewayV4, n.GatewayV6
	n.register(t, opts)
	return n
}

// AddNode creates a node attached to the link by its "eth0".
func (l *Link) AddNode(t testing.TB, opts NodeOptions) *Node {
	t.Helper()
	l.mu.Lock()
	index := len(l.nodes) + 1
	l.mu.Unlock()
	n := newNode(t, opts, index)
	n.IPv4, n.IPv6 = hostAddr(l.V4, 10+index), hostAddr(l.V6, 10+index)

	peer := fmt.Sprintf("n%d", index)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: peer, PeerNamespace: netlink.NsFd(int(l.Handle))}
	if err := n.Netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth eth0/%s for node %s: %v", peer, n.Name, err)
	}
	l.plug(t, peer)
	n.configure(t, "eth0", netip.PrefixFrom(n.IPv4, l.V4.Bits()), netip.PrefixFrom(n.IPv6, l.V6.Bits()))
	n.register(t, opts)

	l.mu.Lock()
	l.nodes = append(l.nodes, n)
	l.mu.Unlock()
	return n
}

// plug attaches the link-side end of a veth to the link's bridge and sets it up.
func (l *Link) plug(t testing.TB, name string) {
	t.Helper()
	port, err := l.Netlink.LinkByName(name)
	if err == nil {
		err = l.Netlink.LinkSetMasterByIndex(port, l.bridgeIndex)
	}
	if err == nil {
		err = l.Netlink.LinkSetUp(port)
	}
	if err != nil {
		t.Fatalf("plug %s into the link bridge: %v", name, err)
	}
}

// StaticPodRoutes gives every node of the link a route to every other node's pod
// CIDRs via that node's link address: the routes the routing controller would learn,
// for tests that do not exercise it.
func (l *Link) StaticPodRoutes(t testing.TB) {
	t.Helper()
	nodes := l.Nodes()
	for _, from := range nodes {
		for _, to := range nodes {
			if from == to {
				continue
			}
			from.AddRoute(t, to.PodCIDRv4, to.IPv4)
			from.AddRoute(t, to.PodCIDRv6, to.IPv6)
		}
	}
}

// AddRoute adds a route in the node's namespace to dst via gw.
func (n *Node) AddRoute(t testing.TB, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	r := &netlink.Route{Dst: ipNet(dst), Gw: net.IP(gw.AsSlice())}
	if err := n.Netlink.RouteAdd(r); err != nil {
		t.Fatalf("node %s: route %s via %s: %v", n.Name, dst, gw, err)
	}
}

func newNode(t testing.TB, opts NodeOptions, index int) *Node {
	t.Helper()
	if opts.Name == "" {
		opts.Name = testenv.UniqueName("node")
	}
	if !opts.PodCIDRv4.IsValid() {
		opts.PodCIDRv4 = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(index), 0}), 24)
	}
	if !opts.PodCIDRv6.IsValid() {
		opts.PodCIDRv6 = netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", index))
	}
	if opts.Bridge == "" {
		opts.Bridge = DefaultBridge
	}
	n := &Node{
		NS:        NewNS(t, "node", opts.Name),
		Name:      opts.Name,
		PodCIDRv4: opts.PodCIDRv4.Masked(),
		PodCIDRv6: opts.PodCIDRv6.Masked(),
		Bridge:    opts.Bridge,
		client:    opts.Client,
	}
	n.GatewayV4, n.GatewayV6 = hostAddr(n.PodCIDRv4, 1), hostAddr(n.PodCIDRv6, 1)
	for key, value := range map[string]string{
		"net/ipv4/ip_forward":          "1",
		"net/ipv6/conf/all/forwarding": "1",
	} {
		if err := n.Sysctl(key, value); err != nil {
			t.Fatalf("node %s: sysctl %s: %v", n.Name, key, err)
		}
	}
	// Pod-to-pod traffic on one bridge is switched, not routed; network policies
	// (iptables FORWARD) only see it with bridge netfilter on, as on a kube-router node.
	for _, key := range []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"} {
		if err := n.Sysctl(key, "1"); err != nil {
			testenv.Unavailable(t, "node %s: sysctl %s (is br_netfilter loaded?): %v", n.Name, key, err)
		}
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge}}
	if err := n.Netlink.LinkAdd(br); err != nil {
		t.Fatalf("node %s: create bridge %s: %v", n.Name, n.Bridge, err)
	}
	n.bridgeIndex = br.Attrs().Index
	pinBridgeAddress(t, n)
	n.configure(t, n.Bridge, netip.PrefixFrom(n.GatewayV4, n.PodCIDRv4.Bits()), netip.PrefixFrom(n.GatewayV6, n.PodCIDRv6.Bits()))
	return n
}

// pinBridgeAddress sets the pod bridge's address to the one the kernel gave it, as
// the CNI bridge plugin does. A bridge whose address was never set takes the lowest
// address of its ports, so a pod joining with a lower one would change every pod's
// gateway address; IPv6 pods would not learn of it until their entries go stale.
func pinBridgeAddress(t testing.TB, n *Node) {
	t.Helper()
	br, err := n.Netlink.LinkByIndex(n.bridgeIndex)
	if err == nil {
		err = n.Netlink.LinkSetHardwareAddr(br, br.Attrs().HardwareAddr)
	}
	if err != nil {
		t.Fatalf("node %s: pin the address of %s: %v", n.Name, n.Bridge, err)
	}
}

// configure gives an interface of the node its addresses and sets it up.
func (n *Node) configure(t testing.TB, name string, addrs ...netip.Prefix) {
	t.Helper()
	if err := configureLink(n.NS, name, addrs...); err != nil {
		t.Fatalf("node %s: %v", n.Name, err)
	}
}

func (n *Node) register(t testing.TB, opts NodeOptions) {
	t.Helper()
	if n.client == nil {
		return
	}
	spec := testenv.NodeSpec{
		Name:        n.Name,
		PodCIDRs:    []string{n.PodCIDRv4.String(), n.PodCIDRv6.String()},
		InternalIPs: []string{n.IPv4.String(), n.IPv6.String()},
		Labels:      opts.Labels,
	}
	if opts.IPv6Only {
		spec.PodCIDRs, spec.InternalIPs = spec.PodCIDRs[1:], spec.InternalIPs[1:]
	}
	n.Object = testenv.CreateNode(t, n.client, spec)
}

// PodOptions says how to build a pod. Zero values pick defaults.
type PodOptions struct {
	// Name of the Pod object and label of the namespace; default "<node>-pod<k>".
	Name string
	// Namespace of the Pod object; default "default".
	Namespace string
	// Labels of the Pod object.
	Labels map[string]string
	// Ports of the Pod's container (for named ports).
	Ports []corev1.ContainerPort
	// Unregistered leaves the Pod object to the caller, who writes its addresses when
	// it likes, as kubelet writes a pod's IPs some time after the CNI plugin ran.
	Unregistered bool
}

// Pod is a test pod: a namespace whose "eth0" is a veth into its node's bridge, with
// the next free address of each pod CIDR and default routes via the node's gateways.
type Pod struct {
	*NS
	// Name and Namespace identify the Pod object.
	Name, Namespace string
	// Node is the node the pod runs on.
	Node *Node
	// IPv4 and IPv6 are the pod's addresses.
	IPv4, IPv6 netip.Addr
	// HostVeth is the name of the veth's node end, on the node's bridge.
	HostVeth string
	// Object is the registered Pod, nil when the node is not registered.
	Object *corev1.Pod
}

// AddPod creates a pod on the node, registered as a Running Pod when the node is
// (unless opts.Unregistered).
func (n *Node) AddPod(t testing.TB, opts PodOptions) *Pod {
	t.Helper()
	n.mu.Lock()
	n.pods++
	k := n.pods
	n.mu.Unlock()
	if opts.Name == "" {
		opts.Name = fmt.Sprintf("%s-pod%d", n.Name, k)
	}
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	p := &Pod{
		NS:        NewNS(t, "pod", opts.Name),
		Name:      opts.Name,
		Namespace: opts.Namespace,
		Node:      n,
		IPv4:      hostAddr(n.PodCIDRv4, 1+k),
		IPv6:      hostAddr(n.PodCIDRv6, 1+k),
		HostVeth:  fmt.Sprintf("veth%d", k),
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.HostVeth}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.Handle))}
	if err := n.Netlink.LinkAdd(veth); err != nil {
		t.Fatalf("pod %s: create veth %s/eth0 on node %s: %v", p.Name, p.HostVeth, n.Name, err)
	}
	if err := n.Netlink.LinkSetMasterByIndex(veth, n.bridgeIndex); err != nil {
		t.Fatalf("pod %s: attach %s to %s: %v", p.Name, p.HostVeth, n.Bridge, err)
	}
	if err := n.Netlink.LinkSetUp(veth); err != nil {
		t.Fatalf("pod %s: set %s up: %v", p.Name, p.HostVeth, err)
	}
	err := configureLink(p.NS, "eth0", netip.PrefixFrom(p.IPv4, n.PodCIDRv4.Bits()), netip.PrefixFrom(p.IPv6, n.PodCIDRv6.Bits()))
	if err != nil {
		t.Fatalf("pod %s: %v", p.Name, err)
	}
	for _, gw := range []netip.Addr{n.GatewayV4, n.GatewayV6} {
		if err := p.Netlink.RouteAdd(&netlink.Route{Gw: net.IP(gw.AsSlice())}); err != nil {
			t.Fatalf("pod %s: default route via %s: %v", p.Name, gw, err)
		}
	}
	if n.client != nil && !opts.Unregistered {
		p.Object = testenv.CreatePod(t, n.client, testenv.PodSpec{
			Namespace: p.Namespace,
			Name:      p.Name,
			NodeName:  n.Name,
			IPs:       []string{p.IPv4.String(), p.IPv6.String()},
			HostIP:    n.IPv4.String(),
			Labels:    opts.Labels,
			Ports:     opts.Ports,
		})
	}
	return p
}

// SameFamily returns the pod's address of the same IP family as a.
func (p *Pod) SameFamily(a netip.Addr) netip.Addr {
	if a.Unmap().Is4() {
		return p.IPv4
	}
	return p.IPv6
}

// configureLink adds addresses (without duplicate address detection, so IPv6 works at
// once) to an interface of ns and sets it up.
func configureLink(ns *NS, name string, addrs ...netip.Prefix) error {
	link, err := ns.Netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", name, ns.NetnsName, err)
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: ipNetOf(a), Flags: unix.IFA_F_NODAD}
		if err := ns.Netlink.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", a, name, ns.NetnsName, err)
		}
	}
	if err := ns.Netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up in %s: %w", name, ns.NetnsName, err)
	}
	return nil
}

// hostAddr returns the address with host number n in prefix (n small and positive).
func hostAddr(prefix netip.Prefix, n int) netip.Addr {
	b := prefix.Masked().Addr().AsSlice()
	carry := n
	for i := len(b) - 1; i >= 0 && carry > 0; i-- {
		sum := int(b[i]) + carry
		b[i] = byte(sum)
		carry = sum >> 8
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// ipNetOf keeps the host part (an interface address), ipNet masks it (a route).
func ipNetOf(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNet(p netip.Prefix) *net.IPNet { return ipNetOf(p.Masked()) }
