// Package route is the routing controller's view of the kernel: IPv4 and IPv6 routes
// to other nodes' pod CIDRs and the tunnels to other nodes (IPIP, FOU, VXLAN).
// Everything it lists, changes or deletes carries our mark (route protocol Protocol,
// tunnel alias prefix TunnelAliasPrefix; VXLAN peers live on our own device), so
// routes and links that other software created are never touched. FOU receive ports
// carry no mark: only the configured port is ever opened or closed.
package route

import (
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// ErrNextHopUnreachable is returned for a route whose gateway is not on a network this
// host is attached to: the kernel refuses it, and retrying cannot help until the
// topology or the overlay setting changes.
var ErrNextHopUnreachable = errors.New("next hop is not on a connected network")

// Protocol is the rtnetlink route protocol id that marks kube-routerd's routes
// (`ip route show proto 144`). It is outside the ids iproute2 names in rt_protos, so
// BIRD, FRR, the DHCP client and the kernel never use it.
const Protocol = 144

// TunnelNamePrefix starts the name of every tunnel interface we create. Interface
// names are limited to 15 bytes, too short for "kube-router-", so ownership is proven
// by the alias below, not by the name.
const TunnelNamePrefix = "krt-"

// TunnelAliasPrefix starts the interface alias of every tunnel we create.
const TunnelAliasPrefix = "kube-router-tunnel "

// Route sends a prefix to a gateway, into a tunnel device, or (VXLAN) to a gateway
// behind a tunnel device.
type Route struct {
	// Dst is the destination prefix (another node's pod CIDR).
	Dst netip.Prefix
	// Gateway is the next hop on a directly connected network; for a route into a
	// VXLAN device it is the Gateway of a VXLANPeer, which that device's neighbour
	// entry resolves. Unset for IPIP and FOU tunnel routes.
	Gateway netip.Addr
	// Device is the tunnel interface the route points into; empty for gateway routes.
	Device string
}

func (r Route) String() string {
	switch {
	case r.Device != "" && r.Gateway.Is6():
		return fmt.Sprintf("%s via %s dev %s", r.Dst, r.Gateway, r.Device)
	case r.Device != "" && r.Gateway.IsValid():
		return fmt.Sprintf("%s via %s dev %s onlink", r.Dst, r.Gateway, r.Device)
	case r.Device != "":
		return fmt.Sprintf("%s dev %s", r.Dst, r.Device)
	}
	return fmt.Sprintf("%s via %s", r.Dst, r.Gateway)
}

// Encap is how pod traffic travels in a tunnel between two nodes.
type Encap uint8

const (
	// EncapIPIP is IPIP for IPv4 and ip6ip6 for IPv6 (IP protocols 4 and 41), one
	// tunnel device per remote node.
	EncapIPIP Encap = iota
	// EncapFOU is the same tunnels inside UDP (foo-over-udp), for networks that drop
	// IP protocols 4 and 41 but pass UDP. Each node decapsulates on a FOUPort.
	EncapFOU
	// EncapVXLAN is one VXLAN device per IP family for every remote node, each node
	// a VXLANPeer of it.
	EncapVXLAN
)

// ParseEncap reads the routing.overlay_encap setting.
func ParseEncap(s string) (Encap, error) {
	for _, e := range []Encap{EncapIPIP, EncapFOU, EncapVXLAN} {
		if e.String() == s {
			return e, nil
		}
	}
	return 0, fmt.Errorf("unknown encapsulation %q (want ipip, fou or vxlan)", s)
}

func (e Encap) String() string {
	switch e {
	case EncapIPIP:
		return "ipip"
	case EncapFOU:
		return "fou"
	case EncapVXLAN:
		return "vxlan"
	}
	return fmt.Sprintf("encap(%d)", uint8(e))
}

// Overhead is the bytes the encapsulation adds to each packet between nodes of the
// family (the outer headers), which the pods' MTU must leave room for.
func (e Encap) Overhead(v6 bool) int {
	ip := 20
	if v6 {
		ip = 40
	}
	switch e {
	case EncapFOU:
		return ip + 8 // outer IP, UDP
	case EncapVXLAN:
		return ip + 8 + 8 + 14 // outer IP, UDP, VXLAN, inner Ethernet
	}
	return ip
}

// Tunnel is one of our tunnel devices: for IPIP and FOU a point-to-point tunnel to
// one remote node, for VXLAN the family's one device to every remote node.
type Tunnel struct {
	// Name is the interface name (TunnelName of Remote, or VXLANName).
	Name  string
	Encap Encap
	// Local is our node address the tunnel's outer packets come from.
	Local netip.Addr
	// Remote is the other node's address; unset for VXLAN.
	Remote netip.Addr
	// Port is the outer UDP destination port of FOU and VXLAN.
	Port uint16
	// VNI is the VXLAN network identifier.
	VNI uint32
}

func (t Tunnel) String() string {
	switch t.Encap {
	case EncapVXLAN:
		return fmt.Sprintf("%s vxlan id %d local %s dstport %d", t.Name, t.VNI, t.Local, t.Port)
	case EncapFOU:
		return fmt.Sprintf("%s %s local %s remote %s encap fou dport %d", t.Name, t.mode(), t.Local, t.Remote, t.Port)
	}
	return fmt.Sprintf("%s %s local %s remote %s", t.Name, t.mode(), t.Local, t.Remote)
}

func (t Tunnel) mode() string {
	if t.Local.Is6() {
		return "ip6ip6"
	}
	return "ipip"
}

// TunnelName is the interface name of the tunnel to remote. For IPv4 it is the prefix
// and the address in hex, e.g. "krt-0a000102" for 10.0.1.2 (unique per remote). An
// IPv6 address does not fit the 15 bytes of an interface name, so it is the prefix and
// 44 bits of a hash of the address, e.g. "krt-3f09a1c2e4b"; the lengths differ, so the
// two kinds never share a name.
func TunnelName(remote netip.Addr) string {
	if remote.Is4() {
		b := remote.As4()
		return fmt.Sprintf("%s%02x%02x%02x%02x", TunnelNamePrefix, b[0], b[1], b[2], b[3])
	}
	h := fnv.New64a()
	b := remote.As16()
	h.Write(b[:])
	return fmt.Sprintf("%s%011x", TunnelNamePrefix, h.Sum64()>>20)
}

// VXLANName is the name of the family's VXLAN device; its length differs from both
// kinds of TunnelName.
func VXLANName(v6 bool) string {
	if v6 {
		return TunnelNamePrefix + "vxlan6"
	}
	return TunnelNamePrefix + "vxlan"
}

// VXLANMAC is the MAC address of the VXLAN device of the node with this address.
// Every node derives the others' from their addresses, so no node has to publish its
// own: locally administered and unicast, the IPv4 address in the last four bytes
// (0e:6b:0a:00:01:02 for 10.0.1.2), 46 bits of a hash of an IPv6 address.
func VXLANMAC(node netip.Addr) string {
	var mac [6]byte
	if node.Is4() {
		b := node.As4()
		mac = [6]byte{0x0e, 0x6b, b[0], b[1], b[2], b[3]}
	} else {
		h := fnv.New64a()
		b := node.As16()
		h.Write(b[:])
		sum := h.Sum64()
		for i := range mac {
			mac[i] = byte(sum >> (8 * i))
		}
		mac[0] = mac[0]&^0x01 | 0x02
	}
	return net.HardwareAddr(mac[:]).String()
}

// VXLANPeer is another node as our VXLAN device knows it: a forwarding entry that
// sends frames for its MAC to its node address, and a permanent neighbour entry (its
// Gateway to that MAC) that the routes to its pods resolve their gateway with.
type VXLANPeer struct {
	Device string
	Node   netip.Addr
	MAC    string
}

// Gateway is the address the routes to the peer's pods go via. For IPv4 it is the
// node's address (an onlink gateway). The kernel refuses an IPv6 onlink gateway that
// a route through another interface covers, as the node's address is, so for IPv6 it
// is the link-local address of the peer's MAC (EUI-64), which needs no onlink.
func (p VXLANPeer) Gateway() netip.Addr {
	if p.Node.Is4() {
		return p.Node
	}
	mac, err := net.ParseMAC(p.MAC)
	if p.MAC == "" || err != nil || len(mac) != 6 {
		mac, _ = net.ParseMAC(VXLANMAC(p.Node))
	}
	return netip.AddrFrom16([16]byte{0: 0xfe, 1: 0x80, 8: mac[0] ^ 0x02, 9: mac[1], 10: mac[2], 11: 0xff, 12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5]})
}

func (p VXLANPeer) String() string {
	return fmt.Sprintf("%s lladdr %s dst %s dev %s", p.Gateway(), p.MAC, p.Node, p.Device)
}

// FOUPort is a UDP port on which the kernel decapsulates FOU packets of one family
// (inner IP protocol 4 for IPv4, 41 for IPv6) and hands them to the tunnels.
type FOUPort struct {
	V6   bool
	Port uint16
}

func (p FOUPort) String() string {
	if p.V6 {
		return fmt.Sprintf("fou port %d ipproto 41 (IPv6)", p.Port)
	}
	return fmt.Sprintf("fou port %d ipproto 4 (IPv4)", p.Port)
}

// Interface is what the routing controller needs from the kernel.
type Interface interface {
	// Routes lists the IPv4 and IPv6 routes in the main table that carry our protocol id.
	Routes() ([]Route, error)
	// ReplaceRoute adds r or replaces the route to r.Dst, marking it as ours.
	ReplaceRoute(r Route) error
	// DeleteRoute removes our route to r.Dst.
	DeleteRoute(r Route) error
	// Tunnels lists the tunnels we created, of every encapsulation.
	Tunnels() ([]Tunnel, error)
	// EnsureTunnel creates the tunnel, or recreates it when its endpoints differ, and
	// sets it up.
	EnsureTunnel(t Tunnel) error
	// DeleteTunnel removes one of our tunnels by name.
	DeleteTunnel(name string) error
	// VXLANPeers lists the peers of our VXLAN devices.
	VXLANPeers() ([]VXLANPeer, error)
	// ReplaceVXLANPeer adds the peer's neighbour and forwarding entries, or replaces
	// the ones for its address.
	ReplaceVXLANPeer(p VXLANPeer) error
	// DeleteVXLANPeer removes the peer's entries.
	DeleteVXLANPeer(p VXLANPeer) error
	// FOUPorts lists the FOU receive ports of both families (ours or not: the kernel
	// does not say whose a port is).
	FOUPorts() ([]FOUPort, error)
	// AddFOUPort opens a FOU receive port.
	AddFOUPort(p FOUPort) error
	// DeleteFOUPort closes a FOU receive port.
	DeleteFOUPort(p FOUPort) error
	// LocalPrefixes lists the networks of this host's global addresses of both
	// families (10.0.0.5/24 gives 10.0.0.0/24); a peer inside one of them is directly
	// reachable.
	LocalPrefixes() ([]netip.Prefix, error)
}

// SortRoutes orders routes by destination, for stable dumps and diffs.
func SortRoutes(rs []Route) {
	slices.SortFunc(rs, func(a, b Route) int {
		if c := a.Dst.Addr().Compare(b.Dst.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Dst.Bits(), b.Dst.Bits())
	})
}

// State is the routing controller's part of the kernel, as plain data.
type State struct {
	Routes   []Route
	Tunnels  []Tunnel
	Peers    []VXLANPeer
	FOUPorts []FOUPort
}

// Sort orders every list, for stable dumps and comparisons.
func (s *State) Sort() {
	SortRoutes(s.Routes)
	slices.SortFunc(s.Tunnels, func(a, b Tunnel) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(s.Peers, func(a, b VXLANPeer) int {
		return cmp.Or(strings.Compare(a.Device, b.Device), a.Node.Compare(b.Node))
	})
	slices.SortFunc(s.FOUPorts, func(a, b FOUPort) int {
		return cmp.Or(compareBool(a.V6, b.V6), cmp.Compare(a.Port, b.Port))
	})
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

// Dump renders the state one object per line, sorted, for golden tests and status.
func (s State) Dump() string {
	c := State{Routes: slices.Clone(s.Routes), Tunnels: slices.Clone(s.Tunnels), Peers: slices.Clone(s.Peers), FOUPorts: slices.Clone(s.FOUPorts)}
	c.Sort()
	var b strings.Builder
	for _, p := range c.FOUPorts {
		fmt.Fprintf(&b, "%s\n", p)
	}
	for _, t := range c.Tunnels {
		fmt.Fprintf(&b, "tunnel %s\n", t)
	}
	for _, p := range c.Peers {
		fmt.Fprintf(&b, "peer %s\n", p)
	}
	for _, r := range c.Routes {
		fmt.Fprintf(&b, "route %s\n", r)
	}
	return b.String()
}
