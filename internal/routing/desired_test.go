package routing

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

func node(name, ip string, podCIDRs []string, ann map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}, Spec: corev1.NodeSpec{PodCIDRs: podCIDRs}}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip}}
	}
	return n
}

func captureLog() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewTextHandler(&buf, nil)), &buf
}

func TestParseNode(t *testing.T) {
	cfg := config.Default().Routing
	hold := cfg.HoldTime.Duration
	for _, tc := range []struct {
		name    string
		node    *corev1.Node
		want    nodeInfo
		wantLog string
	}{
		{
			name: "InternalIP and pod CIDRs of both families are read",
			node: node("a", "10.0.0.1", []string{"10.244.0.0/24", "fd00::/64"}, nil),
			want: nodeInfo{Name: "a", Address: netip.MustParseAddr("10.0.0.1"), PodCIDRs: pfx("10.244.0.0/24", "fd00::/64")},
		},
		{
			name: "a dual-stack node has an address of each family, the first of each wins",
			node: func() *corev1.Node {
				n := node("ds", "fd00:200::11", []string{"fd00:10:244:1::/64", "10.244.1.0/24"}, nil)
				n.Status.Addresses = append(n.Status.Addresses,
					corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.168.200.11"},
					corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fd00:200::99"},
					corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "fe80::1"},
					corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "2001:db8::1"})
				return n
			}(),
			want: nodeInfo{
				Name: "ds", Address: netip.MustParseAddr("192.168.200.11"), AddressV6: netip.MustParseAddr("fd00:200::11"),
				PodCIDRs: pfx("fd00:10:244:1::/64", "10.244.1.0/24"),
			},
		},
		{
			name: "IPv6 peers and prefix limits come from the annotations, one limit for all",
			node: node("a", "10.0.0.1", nil, map[string]string{
				annotationPeerIPs: "192.0.2.1,2001:db8::1", annotationPeerASNs: "65000", annotationPeerMaxPrefixes: "100",
			}),
			want: nodeInfo{Name: "a", Address: netip.MustParseAddr("10.0.0.1"), Peers: []Peer{
				{Address: netip.MustParseAddr("192.0.2.1"), ASN: 65000, HoldTime: hold, MaxPrefixes: 100},
				{Address: netip.MustParseAddr("2001:db8::1"), ASN: 65000, HoldTime: hold, MaxPrefixes: 100},
			}},
		},
		{
			name:    "a prefix limit that is not a number is logged with the node name and the peers ignored",
			node:    node("bad-node", "10.0.0.1", nil, map[string]string{annotationPeerIPs: "192.0.2.1", annotationPeerASNs: "65000", annotationPeerMaxPrefixes: "lots"}),
			want:    nodeInfo{Name: "bad-node", Address: netip.MustParseAddr("10.0.0.1")},
			wantLog: "node=bad-node",
		},
		{
			name: "peer annotations give external peers, one ASN for all, passwords decoded",
			node: node("a", "10.0.0.1", nil, map[string]string{
				annotationPeerIPs: "192.0.2.1, 192.0.2.2", annotationPeerASNs: "65000", annotationPeerPasswords: "c2VjcmV0,b3RoZXI=",
			}),
			want: nodeInfo{Name: "a", Address: netip.MustParseAddr("10.0.0.1"), Peers: []Peer{
				{Address: netip.MustParseAddr("192.0.2.1"), ASN: 65000, Password: "secret", HoldTime: hold},
				{Address: netip.MustParseAddr("192.0.2.2"), ASN: 65000, Password: "other", HoldTime: hold},
			}},
		},
		{
			name:    "mismatched peer ASN list is logged with the node name and ignored",
			node:    node("bad-node", "10.0.0.1", nil, map[string]string{annotationPeerIPs: "192.0.2.1,192.0.2.2,192.0.2.3", annotationPeerASNs: "65000,65001"}),
			want:    nodeInfo{Name: "bad-node", Address: netip.MustParseAddr("10.0.0.1")},
			wantLog: "node=bad-node",
		},
		{
			name:    "a peer IP that is not an address is logged and all peer annotations ignored",
			node:    node("bad-node", "10.0.0.1", nil, map[string]string{annotationPeerIPs: "192.0.2.1,router", annotationPeerASNs: "65000"}),
			want:    nodeInfo{Name: "bad-node", Address: netip.MustParseAddr("10.0.0.1")},
			wantLog: "ignoring invalid peer annotations",
		},
		{
			name:    "an AS number out of range is rejected",
			node:    node("bad-node", "10.0.0.1", nil, map[string]string{annotationPeerIPs: "192.0.2.1", annotationPeerASNs: "4294967295"}),
			want:    nodeInfo{Name: "bad-node", Address: netip.MustParseAddr("10.0.0.1")},
			wantLog: "node=bad-node",
		},
		{
			name: "route reflector cluster id may be a number or an address",
			node: node("rr", "10.0.0.1", nil, map[string]string{annotationRRServer: "42"}),
			want: nodeInfo{Name: "rr", Address: netip.MustParseAddr("10.0.0.1"), RRServer: "0.0.0.42"},
		},
		{
			name:    "invalid route reflector id is logged and ignored",
			node:    node("rr", "10.0.0.1", nil, map[string]string{annotationRRClient: "zero"}),
			want:    nodeInfo{Name: "rr", Address: netip.MustParseAddr("10.0.0.1")},
			wantLog: "node=rr",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, buf := captureLog()
			got := parseNode(tc.node, cfg, log)
			tc.want.ASN = uint32(cfg.ASN)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if tc.wantLog == "" && buf.Len() > 0 {
				t.Errorf("unexpected log: %s", buf)
			}
			if !strings.Contains(buf.String(), tc.wantLog) {
				t.Errorf("log %q does not contain %q", buf, tc.wantLog)
			}
		})
	}
}

func info(name, ip string, cidrs ...string) nodeInfo {
	return nodeInfo{Name: name, Address: netip.MustParseAddr(ip), PodCIDRs: pfx(cidrs...)}
}

func peerSummary(ps []Peer) []string {
	var out []string
	for _, p := range ps {
		s := p.Address.String()
		if p.Node != "" {
			s += " node=" + p.Node
		}
		if p.RRClient {
			s += " rr-client=" + p.RRClusterID
		}
		out = append(out, s)
	}
	return out
}

func TestDesiredPeers(t *testing.T) {
	base := config.Default().Routing
	noMesh := base
	noMesh.NodeMesh = false
	withPeers := base
	withPeers.Peers = []config.Peer{
		{Address: config.Addr{Addr: netip.MustParseAddr("192.0.2.1")}, ASN: 65000, Multihop: 2},
		{Address: config.Addr{Addr: netip.MustParseAddr("192.0.2.9")}, ASN: 65009},
	}
	a, b, c := info("a", "10.0.0.1"), info("b", "10.0.0.2"), info("c", "10.0.1.3")
	server := a
	server.RRServer = "0.0.0.1"
	clientB, clientC := b, c
	clientB.RRClient, clientC.RRClient = "0.0.0.1", "0.0.0.1"
	selfWithAnnotations := a
	selfWithAnnotations.Peers = []Peer{{Address: netip.MustParseAddr("192.0.2.1"), ASN: 65111}}
	noAddress := nodeInfo{Name: "d"}
	for _, tc := range []struct {
		name  string
		cfg   config.Routing
		self  nodeInfo
		nodes []nodeInfo
		want  []string
	}{
		{"full mesh peers with every other node that has an address", base, a, []nodeInfo{a, b, c, noAddress}, []string{"10.0.0.2 node=b", "10.0.1.3 node=c"}},
		{"no mesh and no reflectors means no node peers", noMesh, a, []nodeInfo{a, b, c}, nil},
		{"route reflector server peers with its clients as reflector clients", noMesh, server, []nodeInfo{server, clientB, clientC}, []string{"10.0.0.2 node=b rr-client=0.0.0.1", "10.0.1.3 node=c rr-client=0.0.0.1"}},
		{"route reflector clients peer only with the server", base, clientB, []nodeInfo{server, clientB, clientC}, []string{"10.0.0.1 node=a"}},
		{"plain nodes skip reflector clients in the mesh", base, a, []nodeInfo{a, clientB, c}, []string{"10.0.1.3 node=c"}},
		{"external peers from the config are added", withPeers, a, []nodeInfo{a, b}, []string{"10.0.0.2 node=b", "192.0.2.1", "192.0.2.9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := peerSummary(desiredPeers(tc.cfg, tc.self, tc.nodes))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("a node's annotation overrides the config for the same address", func(t *testing.T) {
		ps := desiredPeers(withPeers, selfWithAnnotations, []nodeInfo{selfWithAnnotations})
		if len(ps) != 2 || ps[0].ASN != 65111 || ps[0].HoldTime != base.HoldTime.Duration {
			t.Errorf("got %+v", ps)
		}
	})
	t.Run("config peer settings carry over", func(t *testing.T) {
		ps := desiredPeers(withPeers, a, []nodeInfo{a})
		if ps[0].Multihop != 2 || ps[0].HoldTime != 90*time.Second {
			t.Errorf("got %+v", ps[0])
		}
	})
}

func svc(name string, typ corev1.ServiceType, clusterIP string, ann map[string]string, mutate ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Annotations: ann},
		Spec:       corev1.ServiceSpec{Type: typ, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP}},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

func TestDesiredAdvertisements(t *testing.T) {
	self := info("a", "10.0.0.1", "10.244.1.0/24")
	other := info("b", "10.0.0.2", "10.244.2.0/24")
	lb := func(ip string) func(*corev1.Service) {
		return func(s *corev1.Service) {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip}}
		}
	}
	local := func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal }
	ext := func(ip string) func(*corev1.Service) {
		return func(s *corev1.Service) { s.Spec.ExternalIPs = []string{ip} }
	}
	all := config.Default().Routing
	all.AdvertiseClusterIPs, all.AdvertiseExternalIPs, all.AdvertiseLoadBalancerIPs = true, true, true
	all.ProtectedCIDRs = []config.Prefix{{Prefix: netip.MustParsePrefix("10.96.0.0/12")}}
	ranged := all
	ranged.ServiceIPRanges = &config.ServiceIPRanges{
		External:     []config.Prefix{{Prefix: netip.MustParsePrefix("192.0.2.0/28")}},
		LoadBalancer: []config.Prefix{{Prefix: netip.MustParsePrefix("198.51.100.0/28")}},
	}
	podOnlyMesh := config.Default().Routing
	podOnlyMesh.AdvertisePodCIDR = false

	for _, tc := range []struct {
		name       string
		cfg        config.Routing
		services   []*corev1.Service
		endpoints  serviceEndpoints
		toExternal []string
		wantLog    string
	}{
		{"defaults announce only the pod CIDR", config.Default().Routing,
			[]*corev1.Service{svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil)}, nil,
			[]string{"10.244.1.0/24"}, ""},
		{"advertise_pod_cidr off keeps the pod CIDR inside the mesh", podOnlyMesh, nil, nil, nil, ""},
		{"cluster, external and LoadBalancer IPs when switched on", all,
			[]*corev1.Service{svc("web", corev1.ServiceTypeLoadBalancer, "10.96.0.10", nil, ext("192.0.2.10"), lb("198.51.100.7"))}, nil,
			[]string{"10.96.0.10/32", "10.244.1.0/24", "192.0.2.10/32", "198.51.100.7/32"}, ""},
		{"addresses the service proxy refuses are not announced", ranged,
			[]*corev1.Service{
				svc("in", corev1.ServiceTypeLoadBalancer, "10.96.0.10", nil, ext("192.0.2.10"), lb("198.51.100.7")),
				svc("out", corev1.ServiceTypeLoadBalancer, "10.96.0.11", nil, ext("203.0.113.1"), lb("198.51.100.200")),
			}, nil,
			[]string{"10.96.0.10/32", "10.96.0.11/32", "10.244.1.0/24", "192.0.2.10/32", "198.51.100.7/32"}, ""},
		{"a service annotation opts out of one kind", all,
			[]*corev1.Service{svc("web", corev1.ServiceTypeLoadBalancer, "10.96.0.10", map[string]string{annotationAdvertiseClusterIP: "false"}, lb("198.51.100.7"))}, nil,
			[]string{"10.244.1.0/24", "198.51.100.7/32"}, ""},
		{"a service annotation opts in when the config is off", config.Default().Routing,
			[]*corev1.Service{svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", map[string]string{annotationAdvertiseClusterIP: "true"})}, nil,
			[]string{"10.96.0.10/32", "10.244.1.0/24"}, ""},
		{"an invalid annotation is logged with the service and the config applies", all,
			[]*corev1.Service{svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", map[string]string{annotationAdvertiseClusterIP: "maybe"})}, nil,
			[]string{"10.96.0.10/32", "10.244.1.0/24"}, "service=default/web"},
		{"externalTrafficPolicy Local is announced only with a local endpoint", all,
			[]*corev1.Service{
				svc("here", corev1.ServiceTypeLoadBalancer, "10.96.0.11", nil, local, lb("198.51.100.1")),
				svc("elsewhere", corev1.ServiceTypeLoadBalancer, "10.96.0.12", nil, local, lb("198.51.100.2")),
			},
			serviceEndpoints{"default/here": true, "default/elsewhere": false},
			[]string{"10.96.0.11/32", "10.244.1.0/24", "198.51.100.1/32"}, ""},
		{"headless and ExternalName services are never announced", all,
			[]*corev1.Service{svc("headless", corev1.ServiceTypeClusterIP, "None", nil), svc("name", corev1.ServiceTypeExternalName, "", nil)}, nil,
			[]string{"10.244.1.0/24"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, buf := captureLog()
			adv := desiredAdvertisements(tc.cfg, self, []nodeInfo{self, other}, tc.services, tc.endpoints, log)
			var got []string
			for _, p := range adv.ToExternal {
				got = append(got, p.String())
			}
			if !reflect.DeepEqual(got, tc.toExternal) {
				t.Errorf("to external = %q, want %q", got, tc.toExternal)
			}
			if want := pfx("10.244.1.0/24", "10.244.2.0/24"); !reflect.DeepEqual(adv.ToNodes, want) {
				t.Errorf("to nodes = %v, want every node's pod CIDR", adv.ToNodes)
			}
			for _, p := range append(adv.ToNodes, adv.ToExternal...) {
				found := false
				for _, q := range adv.Protected {
					found = found || q.Contains(p.Addr())
				}
				if !found {
					t.Errorf("%s is announced but not protected from import", p)
				}
			}
			if !strings.Contains(buf.String(), tc.wantLog) || (tc.wantLog == "" && buf.Len() > 0) {
				t.Errorf("log %q, want %q", buf, tc.wantLog)
			}
		})
	}
}

func TestLocalEndpoints(t *testing.T) {
	a, b := "a", "b"
	no := false
	slices := []*discoveryv1.EndpointSlice{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			Endpoints: []discoveryv1.Endpoint{{NodeName: &b}, {NodeName: &a}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "db-1", Labels: map[string]string{discoveryv1.LabelServiceName: "db"}},
			Endpoints: []discoveryv1.Endpoint{{NodeName: &a, Conditions: discoveryv1.EndpointConditions{Ready: &no}}}},
	}
	got := localEndpoints([]*k8s.EndpointSlice{k8s.CompactEndpointSlice(slices[0]), k8s.CompactEndpointSlice(slices[1])}, "a")
	want := serviceEndpoints{"ns/web": true, "ns/db": false}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestDesiredKernel(t *testing.T) {
	self := info("a", "10.0.0.1", "10.244.1.0/24")
	same := info("b", "10.0.0.2", "10.244.2.0/24")
	far := info("c", "10.0.1.3", "10.244.3.0/24")
	nodes := []nodeInfo{self, same, far}
	local := pfx("10.0.0.0/24")
	learned := []LearnedRoute{
		{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: netip.MustParseAddr("10.0.0.2")},
		{Prefix: netip.MustParsePrefix("10.244.3.0/24"), NextHop: netip.MustParseAddr("10.0.1.3")},
		{Prefix: netip.MustParsePrefix("10.244.1.0/25"), NextHop: netip.MustParseAddr("10.0.0.2")},   // into our own pod CIDR
		{Prefix: netip.MustParsePrefix("172.16.0.0/16"), NextHop: netip.MustParseAddr("10.0.0.254")}, // an external router
		{Prefix: netip.MustParsePrefix("10.244.9.0/24"), NextHop: netip.MustParseAddr("10.0.0.1")},   // via ourselves
	}
	for _, tc := range []struct {
		overlay string
		want    string
	}{
		{"never", `route 10.244.2.0/24 via 10.0.0.2
route 10.244.3.0/24 via 10.0.1.3
route 172.16.0.0/16 via 10.0.0.254
`},
		{"cross-subnet", `tunnel krt-0a000103 ipip local 10.0.0.1 remote 10.0.1.3
route 10.244.2.0/24 via 10.0.0.2
route 10.244.3.0/24 dev krt-0a000103
route 172.16.0.0/16 via 10.0.0.254
`},
		{"always", `tunnel krt-0a000002 ipip local 10.0.0.1 remote 10.0.0.2
tunnel krt-0a000103 ipip local 10.0.0.1 remote 10.0.1.3
route 10.244.2.0/24 dev krt-0a000002
route 10.244.3.0/24 dev krt-0a000103
route 172.16.0.0/16 via 10.0.0.254
`},
	} {
		t.Run("overlay "+tc.overlay, func(t *testing.T) {
			if got := desiredKernel(overlaySettings{Mode: tc.overlay}, self, nodes, learned, local).Dump(); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func dualStack(name, ip4, ip6 string, cidrs ...string) nodeInfo {
	n := info(name, ip4, cidrs...)
	n.AddressV6 = netip.MustParseAddr(ip6)
	return n
}

func TestDesiredPeersDualStack(t *testing.T) {
	cfg := config.Default().Routing
	a := dualStack("a", "10.0.0.1", "fd00::1")
	b := dualStack("b", "10.0.0.2", "fd00::2")
	v4only := info("c", "10.0.0.3")
	v6only := nodeInfo{Name: "d", AddressV6: netip.MustParseAddr("fd00::4")}
	for _, tc := range []struct {
		name  string
		self  nodeInfo
		nodes []nodeInfo
		want  []string
	}{
		{"dual-stack nodes hold one session per family", a, []nodeInfo{a, b}, []string{"10.0.0.2 node=b", "fd00::2 node=b"}},
		{"a single-stack node gets the session of its family only", a, []nodeInfo{a, v4only, v6only}, []string{"10.0.0.3 node=c", "fd00::4 node=d"}},
		{"an IPv4-only node cannot reach an IPv6-only one", v4only, []nodeInfo{v4only, v6only, b}, []string{"10.0.0.2 node=b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := peerSummary(desiredPeers(cfg, tc.self, tc.nodes))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("an external IPv6 peer from the config keeps its prefix limit", func(t *testing.T) {
		withPeer := cfg
		withPeer.Peers = []config.Peer{{Address: config.Addr{Addr: netip.MustParseAddr("2001:db8::1")}, ASN: 65000, MaxPrefixes: 50}}
		ps := desiredPeers(withPeer, a, []nodeInfo{a})
		if len(ps) != 1 || ps[0].MaxPrefixes != 50 || !ps[0].External() {
			t.Errorf("got %+v", ps)
		}
	})
}

func TestDesiredKernelDualStack(t *testing.T) {
	self := dualStack("a", "10.0.0.1", "fd00::1", "10.244.1.0/24", "fd00:244:1::/64")
	b := dualStack("b", "10.0.0.2", "fd00::2", "10.244.2.0/24", "fd00:244:2::/64")
	learned := []LearnedRoute{
		{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: netip.MustParseAddr("10.0.0.2")},
		{Prefix: netip.MustParsePrefix("fd00:244:2::/64"), NextHop: netip.MustParseAddr("fd00::2")},
		{Prefix: netip.MustParsePrefix("fd00:244:1::/80"), NextHop: netip.MustParseAddr("fd00::2")},  // into our own pod CIDR
		{Prefix: netip.MustParsePrefix("fd00:244:9::/64"), NextHop: netip.MustParseAddr("fd00::1")},  // via ourselves
		{Prefix: netip.MustParsePrefix("fd00:244:8::/64"), NextHop: netip.MustParseAddr("10.0.0.2")}, // next hop of the other family
	}
	v6Tunnel := route.TunnelName(netip.MustParseAddr("fd00::2"))
	for _, tc := range []struct {
		overlay string
		local   []netip.Prefix
		want    string
	}{
		{"always", pfx("10.0.0.0/24", "fd00::/64"), `tunnel krt-0a000002 ipip local 10.0.0.1 remote 10.0.0.2
tunnel ` + v6Tunnel + ` ip6ip6 local fd00::1 remote fd00::2
route 10.244.2.0/24 dev krt-0a000002
route fd00:244:2::/64 dev ` + v6Tunnel + `
`},
		// Same IPv4 subnet, IPv6 subnets apart: only IPv6 is tunnelled.
		{"cross-subnet", pfx("10.0.0.0/24", "fd00:1::/64"), `tunnel ` + v6Tunnel + ` ip6ip6 local fd00::1 remote fd00::2
route 10.244.2.0/24 via 10.0.0.2
route fd00:244:2::/64 dev ` + v6Tunnel + `
`},
		{"cross-subnet", pfx("10.0.0.0/24", "fd00::/64"), `route 10.244.2.0/24 via 10.0.0.2
route fd00:244:2::/64 via fd00::2
`},
	} {
		if got := desiredKernel(overlaySettings{Mode: tc.overlay}, self, []nodeInfo{self, b}, learned, tc.local).Dump(); got != tc.want {
			t.Errorf("overlay %s, local %v: got\n%s\nwant\n%s", tc.overlay, tc.local, got, tc.want)
		}
	}
}

// FOU keeps the tunnels of IPIP and opens a receive port per family; VXLAN makes one
// device per family, a peer per node and onlink routes via the node. Routes that need
// no tunnel are the same for every encapsulation.
func TestDesiredKernelEncapsulations(t *testing.T) {
	self := dualStack("a", "10.0.0.1", "fd00::1", "10.244.1.0/24", "fd00:244:1::/64")
	b := dualStack("b", "10.0.0.2", "fd00::2", "10.244.2.0/24", "fd00:244:2::/64")
	c := dualStack("c", "10.0.1.3", "fd00:1::3", "10.244.3.0/24", "fd00:244:3::/64")
	learned := []LearnedRoute{
		{Prefix: netip.MustParsePrefix("10.244.2.0/24"), NextHop: netip.MustParseAddr("10.0.0.2")},
		{Prefix: netip.MustParsePrefix("fd00:244:2::/64"), NextHop: netip.MustParseAddr("fd00::2")},
		{Prefix: netip.MustParsePrefix("10.244.3.0/24"), NextHop: netip.MustParseAddr("10.0.1.3")},
		{Prefix: netip.MustParsePrefix("fd00:244:3::/64"), NextHop: netip.MustParseAddr("fd00:1::3")},
	}
	local := pfx("10.0.0.0/24", "fd00::/64")
	v6Tunnel := route.TunnelName(netip.MustParseAddr("fd00:1::3"))
	vxlanPeer := func(node string) route.VXLANPeer {
		addr := netip.MustParseAddr(node)
		return route.VXLANPeer{Device: route.VXLANName(true), Node: addr, MAC: route.VXLANMAC(addr)}
	}
	for _, tc := range []struct {
		overlay overlaySettings
		want    string
	}{
		{overlaySettings{Mode: "cross-subnet", Encap: route.EncapFOU, Port: 5555}, `fou port 5555 ipproto 4 (IPv4)
fou port 5555 ipproto 41 (IPv6)
tunnel krt-0a000103 ipip local 10.0.0.1 remote 10.0.1.3 encap fou dport 5555
tunnel ` + v6Tunnel + ` ip6ip6 local fd00::1 remote fd00:1::3 encap fou dport 5555
route 10.244.2.0/24 via 10.0.0.2
route 10.244.3.0/24 dev krt-0a000103
route fd00:244:2::/64 via fd00::2
route fd00:244:3::/64 dev ` + v6Tunnel + `
`},
		{overlaySettings{Mode: "cross-subnet", Encap: route.EncapVXLAN, Port: 4789, VNI: 7}, `tunnel krt-vxlan vxlan id 7 local 10.0.0.1 dstport 4789
tunnel krt-vxlan6 vxlan id 7 local fd00::1 dstport 4789
peer 10.0.1.3 lladdr 0e:6b:0a:00:01:03 dst 10.0.1.3 dev krt-vxlan
peer ` + vxlanPeer("fd00:1::3").String() + `
route 10.244.2.0/24 via 10.0.0.2
route 10.244.3.0/24 via 10.0.1.3 dev krt-vxlan onlink
route fd00:244:2::/64 via fd00::2
route fd00:244:3::/64 via ` + vxlanPeer("fd00:1::3").Gateway().String() + ` dev krt-vxlan6
`},
		{overlaySettings{Mode: "always", Encap: route.EncapVXLAN, Port: 4789, VNI: 1}, `tunnel krt-vxlan vxlan id 1 local 10.0.0.1 dstport 4789
tunnel krt-vxlan6 vxlan id 1 local fd00::1 dstport 4789
peer 10.0.0.2 lladdr 0e:6b:0a:00:00:02 dst 10.0.0.2 dev krt-vxlan
peer 10.0.1.3 lladdr 0e:6b:0a:00:01:03 dst 10.0.1.3 dev krt-vxlan
peer ` + vxlanPeer("fd00::2").String() + `
peer ` + vxlanPeer("fd00:1::3").String() + `
route 10.244.2.0/24 via 10.0.0.2 dev krt-vxlan onlink
route 10.244.3.0/24 via 10.0.1.3 dev krt-vxlan onlink
route fd00:244:2::/64 via ` + vxlanPeer("fd00::2").Gateway().String() + ` dev krt-vxlan6
route fd00:244:3::/64 via ` + vxlanPeer("fd00:1::3").Gateway().String() + ` dev krt-vxlan6
`},
	} {
		if got := desiredKernel(tc.overlay, self, []nodeInfo{self, b, c}, learned, local).Dump(); got != tc.want {
			t.Errorf("overlay %+v: got\n%s\nwant\n%s", tc.overlay, got, tc.want)
		}
	}
}

// Every node derives another's VXLAN MAC from its address: unicast, locally
// administered, and different for different nodes. An IPv6 peer's gateway is the
// EUI-64 link-local address of its MAC.
func TestVXLANMACs(t *testing.T) {
	p := route.VXLANPeer{Node: netip.MustParseAddr("fd00::2"), MAC: "0e:11:22:33:44:55"}
	if got, want := p.Gateway(), netip.MustParseAddr("fe80::c11:22ff:fe33:4455"); got != want {
		t.Errorf("gateway of %s = %s, want %s", p.MAC, got, want)
	}
	seen := map[string]string{}
	for _, a := range []string{"10.0.0.2", "10.0.0.3", "fd00::2", "fd00::3", "2001:db8::2"} {
		mac, err := net.ParseMAC(route.VXLANMAC(netip.MustParseAddr(a)))
		if err != nil {
			t.Fatal(err)
		}
		if mac[0]&0x01 != 0 || mac[0]&0x02 == 0 {
			t.Errorf("%s: MAC %s is not unicast and locally administered", a, mac)
		}
		if other, ok := seen[mac.String()]; ok {
			t.Errorf("%s and %s share the MAC %s", a, other, mac)
		}
		seen[mac.String()] = a
	}
}

func TestTunnelNamesFitAndDiffer(t *testing.T) {
	seen := map[string]netip.Addr{}
	for _, a := range []string{"10.0.0.2", "10.0.0.3", "fd00::2", "fd00::3", "2001:db8:ffff::2", "::ffff:10.0.0.2"} {
		addr := netip.MustParseAddr(a)
		name := route.TunnelName(addr)
		if len(name) > 15 || !strings.HasPrefix(name, route.TunnelNamePrefix) {
			t.Errorf("%s: name %q does not fit an interface name or lacks our prefix", a, name)
		}
		if other, dup := seen[name]; dup {
			t.Errorf("%s and %s share tunnel name %q", a, other, name)
		}
		seen[name] = addr
	}
}

func TestDesiredAdvertisementsDualStack(t *testing.T) {
	self := dualStack("a", "10.0.0.1", "fd00::1", "10.244.1.0/24", "fd00:244:1::/64")
	other := dualStack("b", "10.0.0.2", "fd00::2", "10.244.2.0/24", "fd00:244:2::/64")
	cfg := config.Default().Routing
	cfg.AdvertiseClusterIPs = true
	web := svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil, func(s *corev1.Service) {
		s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
	})
	log, _ := captureLog()
	adv := desiredAdvertisements(cfg, self, []nodeInfo{self, other}, []*corev1.Service{web}, nil, log)
	for what, tc := range map[string]struct{ got, want []netip.Prefix }{
		"prefixes":    {adv.Prefixes, pfx("10.96.0.10/32", "10.244.1.0/24", "fd00:96::10/128", "fd00:244:1::/64")},
		"to nodes":    {adv.ToNodes, pfx("10.244.1.0/24", "10.244.2.0/24", "fd00:244:1::/64", "fd00:244:2::/64")},
		"to external": {adv.ToExternal, pfx("10.96.0.10/32", "10.244.1.0/24", "fd00:96::10/128", "fd00:244:1::/64")},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s = %v, want %v", what, tc.got, tc.want)
		}
	}
}
