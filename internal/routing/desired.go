// Package routing is the routing controller: it runs a BGP speaker inside the daemon,
// peers with the other nodes (iBGP full mesh or route reflectors) and with external
// routers, announces this node's pod CIDRs and chosen Service IPs, and installs the
// pod CIDRs learned from other nodes as kernel routes (through IPIP or ip6ip6 tunnels
// when the overlay asks for it).
package routing

import (
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// Service annotations that override the advertise_* settings for one Service
// ("true" or "false").
const (
	annotationAdvertiseClusterIP      = "kube-router.io/service.advertise.clusterip"
	annotationAdvertiseExternalIP     = "kube-router.io/service.advertise.externalip"
	annotationAdvertiseLoadBalancerIP = "kube-router.io/service.advertise.loadbalancerip"
)

// nodeInfo is what the routing controller needs from one Node object.
type nodeInfo struct {
	Name string
	// Address is the node's IPv4 InternalIP: endpoint of the IPv4 BGP sessions and
	// next hop of its IPv4 pod CIDRs.
	Address netip.Addr
	// AddressV6 is the node's IPv6 InternalIP, the same for IPv6.
	AddressV6 netip.Addr
	// PodCIDRs are the node's pod networks of both families.
	PodCIDRs []netip.Prefix
	// RRServer and RRClient hold a route reflector cluster id when the node has that role.
	RRServer string
	RRClient string
	// Peers are the node's own external peers from its annotations.
	Peers []Peer
	// ASN is the node's AS number: its annotation's, or routing.asn.
	ASN uint32
	// Prepend, Communities: what the node adds to routes it sends to external peers.
	Prepend     asPrepend
	Communities []string
	// ImportReject are ranges no peer may announce routes into.
	ImportReject []netip.Prefix
	// ListenAddresses are the addresses the node's speaker listens on; empty for the
	// wildcard of each family the node has.
	ListenAddresses []netip.Addr
}

// AddressFor returns the node's address of the same IP family as a: the session
// endpoint and next hop for that family.
func (n nodeInfo) AddressFor(a netip.Addr) netip.Addr {
	if a.Is4() {
		return n.Address
	}
	return n.AddressV6
}

// HasAddress reports whether a is one of the node's addresses.
func (n nodeInfo) HasAddress(a netip.Addr) bool {
	return a.IsValid() && (a == n.Address || a == n.AddressV6)
}

// Peer is one BGP neighbour of this node's speaker.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	// LocalASN is our AS number on the session: the node's own.
	LocalASN uint32
	// Node names the peer when it is another node of the cluster; empty for routers.
	Node         string
	Password     string
	HoldTime     time.Duration
	Multihop     uint8
	LocalAddress netip.Addr
	Port         uint16
	// RRClient marks the peer as our route reflector client in cluster RRClusterID.
	RRClient    bool
	RRClusterID string
	// MaxPrefixes tears the session down when the peer announces more prefixes; 0
	// means no limit.
	MaxPrefixes uint32
	// Passive waits for the peer to connect instead of dialling too.
	Passive bool
	// BFD runs a BFD session with the peer, whose going down resets the BGP session.
	BFD bool
}

// External reports whether the peer is a router outside the cluster.
func (p Peer) External() bool { return p.Node == "" }

// OtherASNode reports whether the peer is a node of another AS (an eBGP session
// inside the cluster).
func (p Peer) OtherASNode() bool { return p.Node != "" && p.LocalASN != 0 && p.ASN != p.LocalASN }

// desiredPeers returns this node's BGP neighbours, sorted by address: the other nodes
// (full mesh, or the route reflector topology from annotations) and the external peers
// of the config and of our node's annotations (which win for the same address).
// Every session speaks our node's AS number; a node of another AS is an eBGP peer,
// allowed more than one hop so nodes in other subnets still reach each other.
// Nodes peer once per IP family both have an address of: each session carries its
// own family, so a broken IPv6 path shows as a down session instead of silently
// black-holing routes learned over IPv4. Of two nodes only the one with the lower
// address dials: when both dial, each refuses the other's connection while it idles
// after a failed attempt, and a restarted node can take minutes to get back in.
func desiredPeers(cfg config.Routing, self nodeInfo, nodes []nodeInfo) []Peer {
	byAddr := map[netip.Addr]Peer{}
	for _, n := range nodes {
		if n.Name == self.Name || !meshes(cfg.NodeMesh, self, n) {
			continue
		}
		for _, addr := range []netip.Addr{n.Address, n.AddressV6} {
			if !addr.IsValid() || !self.AddressFor(addr).IsValid() || self.HasAddress(addr) {
				continue
			}
			p := Peer{
				Address: addr, ASN: n.ASN, LocalASN: self.ASN, Node: n.Name, HoldTime: cfg.HoldTime.Duration, Port: uint16(cfg.ListenPort),
				Passive: self.AddressFor(addr).Compare(addr) > 0,
			}
			if p.OtherASNode() {
				p.Multihop = 255
			}
			if self.RRServer != "" && n.RRClient != "" {
				p.RRClient, p.RRClusterID = true, self.RRServer
			}
			byAddr[p.Address] = p
		}
	}
	external := slices.Clone(self.Peers)
	for _, c := range cfg.Peers {
		external = append(external, Peer{
			Address: c.Address.Addr, ASN: uint32(c.ASN), Password: c.Password,
			HoldTime: c.HoldTime.Duration, Multihop: uint8(c.Multihop),
			LocalAddress: c.LocalAddress.Addr, Port: uint16(c.Port), MaxPrefixes: uint32(c.MaxPrefixes), BFD: c.BFD,
		})
	}
	for _, p := range external {
		if _, taken := byAddr[p.Address]; taken || self.HasAddress(p.Address) {
			continue
		}
		if p.HoldTime == 0 {
			p.HoldTime = cfg.HoldTime.Duration
		}
		p.LocalASN = self.ASN
		byAddr[p.Address] = p
	}
	out := make([]Peer, 0, len(byAddr))
	for _, p := range byAddr {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Peer) int { return a.Address.Compare(b.Address) })
	return out
}

// meshes decides whether self and other hold an iBGP session. Route reflector servers
// peer with everyone; clients only with servers; other nodes with each other when the
// full mesh is on. The rule is symmetric, so both ends agree.
func meshes(nodeMesh bool, self, other nodeInfo) bool {
	switch {
	case self.RRServer != "" || other.RRServer != "":
		return true
	case self.RRClient != "" || other.RRClient != "":
		return false
	default:
		return nodeMesh
	}
}

// advertisements is what this node announces and what its policies let through.
type advertisements struct {
	// Prefixes are all routes we originate: our pod CIDRs and Service IPs (/32, /128).
	Prefixes []netip.Prefix
	// ToNodes are the prefixes node peers may receive: every node's pod CIDRs (route
	// reflectors pass on the other nodes').
	ToNodes []netip.Prefix
	// ToOtherASNodes are the prefixes nodes of another AS may receive: our own pod
	// CIDRs. Each node announces its own; one relayed by us would draw a detour.
	ToOtherASNodes []netip.Prefix
	// ToExternal are the prefixes external peers may receive.
	ToExternal []netip.Prefix
	// Protected are ranges external peers may not announce into.
	Protected []netip.Prefix
	// ImportReject are ranges no peer, node or router, may announce into.
	ImportReject []netip.Prefix
	// Communities ("ASN:value") and Prepend are added to routes sent to external peers.
	Communities []string
	Prepend     asPrepend
}

// serviceEndpoints says, per "namespace/name", whether a Service has a ready endpoint
// on this node.
type serviceEndpoints map[string]bool

// localEndpoints indexes EndpointSlices by Service, recording which have a ready
// endpoint on nodeName.
func localEndpoints(slices []*k8s.EndpointSlice, nodeName string) serviceEndpoints {
	out := serviceEndpoints{}
	for _, s := range slices {
		if s.ServiceName == "" {
			continue
		}
		key := s.Namespace + "/" + s.ServiceName
		for _, ep := range s.Endpoints {
			if ep.NodeName != nil && *ep.NodeName == nodeName && ep.Ready {
				out[key] = true
			}
		}
		if _, ok := out[key]; !ok {
			out[key] = false
		}
	}
	return out
}

// desiredAdvertisements computes what we announce: our pod CIDRs always (the mesh needs
// them; external peers only with advertise_pod_cidr), and the Service IPs the config
// or the Service's annotations select, with the communities of the config and of our
// node, and our node's prepending and import rejects. A Service with externalTrafficPolicy Local is
// announced only while it has a ready endpoint on this node, so routers never send
// its traffic to a node that would drop it.
func desiredAdvertisements(cfg config.Routing, self nodeInfo, nodes []nodeInfo, services []*corev1.Service, local serviceEndpoints, log *slog.Logger) advertisements {
	a := advertisements{ImportReject: slices.Clone(self.ImportReject), Prepend: self.Prepend}
	for _, c := range cfg.Communities {
		if n, err := config.ParseCommunity(c); err == nil {
			a.Communities = append(a.Communities, config.FormatCommunity(n))
		}
	}
	a.Communities = slices.Compact(slices.Sorted(slices.Values(append(a.Communities, self.Communities...))))
	a.Prefixes = append(a.Prefixes, self.PodCIDRs...)
	a.ToOtherASNodes = append(a.ToOtherASNodes, self.PodCIDRs...)
	if cfg.AdvertisePodCIDR {
		a.ToExternal = append(a.ToExternal, self.PodCIDRs...)
	}
	for _, n := range nodes {
		a.ToNodes = append(a.ToNodes, n.PodCIDRs...)
		a.Protected = append(a.Protected, n.PodCIDRs...)
	}
	for _, p := range cfg.ProtectedCIDRs {
		a.Protected = append(a.Protected, p.Prefix)
	}
	for _, svc := range services {
		for _, ip := range serviceIPs(cfg, svc, local, log) {
			p := netip.PrefixFrom(ip, ip.BitLen())
			a.Prefixes = append(a.Prefixes, p)
			a.ToExternal = append(a.ToExternal, p)
			a.Protected = append(a.Protected, p)
		}
	}
	for _, l := range []*[]netip.Prefix{&a.Prefixes, &a.ToNodes, &a.ToOtherASNodes, &a.ToExternal, &a.Protected, &a.ImportReject} {
		*l = sortedUnique(*l)
	}
	return a
}

func serviceIPs(cfg config.Routing, svc *corev1.Service, local serviceEndpoints, log *slog.Logger) []netip.Addr {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	name := svc.Namespace + "/" + svc.Name
	want := func(annotation string, def bool) bool {
		v, ok := svc.Annotations[annotation]
		if !ok {
			return def
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			log.Warn("ignoring invalid advertise annotation", "service", name, "annotation", annotation, "value", v)
			return def
		}
		return b
	}
	var raw []string
	if want(annotationAdvertiseClusterIP, cfg.AdvertiseClusterIPs) && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		raw = append(raw, svc.Spec.ClusterIPs...)
		if len(svc.Spec.ClusterIPs) == 0 && svc.Spec.ClusterIP != "" {
			raw = append(raw, svc.Spec.ClusterIP)
		}
	}
	// allowed drops what the service proxy refuses to program: announcing it would
	// draw traffic this node does not serve, to any address a Service author picks.
	allowed := func(ip string, ok func(config.ServiceIPRanges, netip.Addr) bool) bool {
		a, err := netip.ParseAddr(ip)
		return cfg.ServiceIPRanges == nil || err != nil || ok(*cfg.ServiceIPRanges, a)
	}
	if want(annotationAdvertiseExternalIP, cfg.AdvertiseExternalIPs) {
		for _, ip := range svc.Spec.ExternalIPs {
			if allowed(ip, config.ServiceIPRanges.AllowsExternal) {
				raw = append(raw, ip)
			}
		}
	}
	if want(annotationAdvertiseLoadBalancerIP, cfg.AdvertiseLoadBalancerIPs) && svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if allowed(in.IP, config.ServiceIPRanges.AllowsLoadBalancer) {
				raw = append(raw, in.IP)
			}
		}
	}
	if len(raw) == 0 {
		return nil
	}
	if svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && !local[name] {
		return nil
	}
	var out []netip.Addr
	for _, s := range raw {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			if s != "" {
				log.Warn("ignoring invalid service IP", "service", name, "ip", s)
			}
			continue
		}
		if !ip.Is4In6() {
			out = append(out, ip)
		}
	}
	return out
}

func sortedUnique(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, comparePrefix)
	return slices.Compact(ps)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// LearnedRoute is a best path our speaker learned from a peer.
type LearnedRoute struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
}

// overlaySettings say when and how pod traffic to another node is tunnelled.
type overlaySettings struct {
	// Mode is routing.overlay: "always", "cross-subnet" or "never".
	Mode  string
	Encap route.Encap
	// Port is the UDP port of FOU and VXLAN.
	Port uint16
	VNI  uint32
}

// desiredKernel turns learned routes into kernel routes and the tunnels they need.
// Routes into our own pod CIDRs, via ourselves or with a next hop of the other IP
// family are skipped. A route whose next hop is another node goes through a tunnel to
// it (from our address of that family) when overlay.Mode is "always", or
// "cross-subnet" and the node is outside localPrefixes; every other route goes via
// its next hop. IPIP and FOU make one tunnel per node (FOU also a receive port per
// family); VXLAN one device per family, each node a peer of it.
func desiredKernel(overlay overlaySettings, self nodeInfo, nodes []nodeInfo, learned []LearnedRoute, localPrefixes []netip.Prefix) route.State {
	isNode := map[netip.Addr]bool{}
	for _, n := range nodes {
		if n.Name == self.Name {
			continue
		}
		for _, a := range []netip.Addr{n.Address, n.AddressV6} {
			if a.IsValid() {
				isNode[a] = true
			}
		}
	}
	routes := map[netip.Prefix]route.Route{}
	tunnels := map[string]route.Tunnel{}
	peers := map[route.VXLANPeer]bool{}
	fouPorts := map[route.FOUPort]bool{}
	for _, l := range learned {
		if !l.NextHop.IsValid() || l.NextHop.Is4() != l.Prefix.Addr().Is4() || self.HasAddress(l.NextHop) || overlapsAny(l.Prefix, self.PodCIDRs) {
			continue
		}
		onLink := slices.ContainsFunc(localPrefixes, func(p netip.Prefix) bool { return p.Contains(l.NextHop) })
		local := self.Address
		if l.NextHop.Is6() {
			local = self.AddressV6
		}
		tunnel := isNode[l.NextHop] && local.IsValid() &&
			(overlay.Mode == "always" || (overlay.Mode == "cross-subnet" && !onLink))
		if !tunnel {
			routes[l.Prefix] = route.Route{Dst: l.Prefix, Gateway: l.NextHop}
			continue
		}
		switch overlay.Encap {
		case route.EncapVXLAN:
			t := route.Tunnel{Name: route.VXLANName(l.NextHop.Is6()), Encap: route.EncapVXLAN, Local: local, Port: overlay.Port, VNI: overlay.VNI}
			tunnels[t.Name] = t
			peer := route.VXLANPeer{Device: t.Name, Node: l.NextHop, MAC: route.VXLANMAC(l.NextHop)}
			peers[peer] = true
			routes[l.Prefix] = route.Route{Dst: l.Prefix, Gateway: peer.Gateway(), Device: t.Name}
		default:
			t := route.Tunnel{Name: route.TunnelName(l.NextHop), Encap: overlay.Encap, Local: local, Remote: l.NextHop}
			if overlay.Encap == route.EncapFOU {
				t.Port = overlay.Port
				fouPorts[route.FOUPort{V6: l.NextHop.Is6(), Port: overlay.Port}] = true
			}
			tunnels[t.Name] = t
			routes[l.Prefix] = route.Route{Dst: l.Prefix, Device: t.Name}
		}
	}
	var st route.State
	for _, r := range routes {
		st.Routes = append(st.Routes, r)
	}
	for _, t := range tunnels {
		st.Tunnels = append(st.Tunnels, t)
	}
	for p := range peers {
		st.Peers = append(st.Peers, p)
	}
	for p := range fouPorts {
		st.FOUPorts = append(st.FOUPorts, p)
	}
	st.Sort()
	return st
}

func overlapsAny(p netip.Prefix, set []netip.Prefix) bool {
	return slices.ContainsFunc(set, p.Overlaps)
}
