package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink is the Interface of the network namespace the calling process runs in.
type Netlink struct{}

var _ Interface = Netlink{}

// Routes implements Interface.
func (Netlink) Routes() ([]Route, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: Protocol}
	var nrs []netlink.Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		found, err := netlink.RouteListFiltered(family, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return nil, fmt.Errorf("listing routes of protocol %d: %w", Protocol, err)
		}
		nrs = append(nrs, found...)
	}
	names := map[int]string{}
	out := make([]Route, 0, len(nrs))
	for _, nr := range nrs {
		if nr.Dst == nil {
			continue // we never install default routes
		}
		dst, ok := prefixOf(nr.Dst)
		if !ok {
			continue
		}
		r := Route{Dst: dst}
		gw, hasGateway := netip.AddrFromSlice(nr.Gw)
		if hasGateway {
			r.Gateway = gw.Unmap()
		}
		// A gateway route names its device only when it is onlink or link-local
		// (into a VXLAN device): otherwise the kernel chose the device, not we.
		if nr.LinkIndex > 0 && (!hasGateway || nr.Flags&int(netlink.FLAG_ONLINK) != 0 || r.Gateway.IsLinkLocalUnicast()) {
			name, ok := names[nr.LinkIndex]
			if !ok {
				if l, err := netlink.LinkByIndex(nr.LinkIndex); err == nil {
					name = l.Attrs().Name
				}
				names[nr.LinkIndex] = name
			}
			r.Device = name
		}
		out = append(out, r)
	}
	return out, nil
}

// ReplaceRoute implements Interface.
func (Netlink) ReplaceRoute(r Route) error {
	nr := &netlink.Route{Dst: ipNet(r.Dst), Table: unix.RT_TABLE_MAIN, Protocol: Protocol}
	if r.Device != "" {
		l, err := netlink.LinkByName(r.Device)
		if err != nil {
			return fmt.Errorf("route %s: finding device: %w", r, err)
		}
		nr.LinkIndex = l.Attrs().Index
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.Gateway.IsValid() {
		nr.Gw = r.Gateway.AsSlice()
		if r.Device != "" {
			// The gateway is a VXLAN peer, reachable through the device however the
			// device is addressed (an IPv6 link-local one always is).
			nr.Scope = netlink.SCOPE_UNIVERSE
			if r.Gateway.Is4() {
				nr.Flags = int(netlink.FLAG_ONLINK)
			}
		}
	}
	if err := netlink.RouteReplace(nr); err != nil {
		// The kernel says ENETUNREACH (IPv4) or EHOSTUNREACH (IPv6) for such a gateway.
		if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
			return fmt.Errorf("replacing route %s: %w (%w)", r, ErrNextHopUnreachable, err)
		}
		return fmt.Errorf("replacing route %s: %w", r, err)
	}
	return nil
}

// DeleteRoute implements Interface. The protocol id in the request makes the kernel
// delete only a route of ours.
func (Netlink) DeleteRoute(r Route) error {
	nr := &netlink.Route{Dst: ipNet(r.Dst), Table: unix.RT_TABLE_MAIN, Protocol: Protocol}
	if err := netlink.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("deleting route %s: %w", r, err)
	}
	return nil
}

// Tunnels implements Interface.
func (Netlink) Tunnels() ([]Tunnel, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []Tunnel
	for _, l := range links {
		if t, ok := ourTunnel(l); ok {
			out = append(out, t)
		}
	}
	return out, nil
}

// ourTunnel returns l as a Tunnel if it is a tunnel of ours.
func ourTunnel(l netlink.Link) (Tunnel, bool) {
	if !strings.HasPrefix(l.Attrs().Alias, TunnelAliasPrefix) {
		return Tunnel{}, false
	}
	var local, remote net.IP
	var encapType, dport uint16
	switch t := l.(type) {
	case *netlink.Iptun:
		local, remote, encapType, dport = t.Local.To4(), t.Remote.To4(), t.EncapType, t.EncapDport
	case *netlink.Ip6tnl:
		local, remote, encapType, dport = t.Local.To16(), t.Remote.To16(), t.EncapType, t.EncapDport
		if t.Flags&ip6TnlIgnoreEncapLimit == 0 {
			encapType = ^uint16(0) // made before we dropped the encapsulation limit option
		}
	case *netlink.Vxlan:
		src, _ := netip.AddrFromSlice(t.SrcAddr)
		return Tunnel{Name: l.Attrs().Name, Encap: EncapVXLAN, Local: src.Unmap(), Port: uint16(t.Port), VNI: uint32(t.VxlanId)}, true
	default:
		return Tunnel{}, false
	}
	l4, _ := netip.AddrFromSlice(local)
	r4, _ := netip.AddrFromSlice(remote)
	t := Tunnel{Name: l.Attrs().Name, Local: l4, Remote: r4}
	switch netlink.TunnelEncapType(encapType) {
	case netlink.None:
	case netlink.FOU:
		t.Encap, t.Port = EncapFOU, dport
	default:
		t.Encap = Encap(255) // an encapsulation we never create: recreate the tunnel
	}
	return t, true
}

// EnsureTunnel implements Interface.
func (n Netlink) EnsureTunnel(t Tunnel) error {
	if l, err := netlink.LinkByName(t.Name); err == nil {
		have, ok := ourTunnel(l)
		if !ok {
			return fmt.Errorf("tunnel %s: an interface of that name exists and is not ours", t.Name)
		}
		if have == t {
			return netlink.LinkSetUp(l)
		}
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("tunnel %s: removing outdated link: %w", t.Name, err)
		}
	}
	link, err := newTunnelLink(t)
	if err != nil {
		return err
	}
	if err := netlink.LinkAdd(link); err != nil {
		return fmt.Errorf("creating tunnel %s: %w", t, err)
	}
	alias := TunnelAliasPrefix + t.Remote.String()
	if t.Encap == EncapVXLAN {
		alias = TunnelAliasPrefix + "vxlan"
	}
	if err := netlink.LinkSetAlias(link, alias); err != nil {
		_ = netlink.LinkDel(link)
		return fmt.Errorf("marking tunnel %s as ours: %w", t.Name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting tunnel %s up: %w", t.Name, err)
	}
	return nil
}

// newTunnelLink is the link EnsureTunnel creates for t.
func newTunnelLink(t Tunnel) (netlink.Link, error) {
	attrs := netlink.LinkAttrs{Name: t.Name}
	switch t.Encap {
	case EncapIPIP, EncapFOU:
	case EncapVXLAN:
		mac, err := net.ParseMAC(VXLANMAC(t.Local))
		if err != nil {
			return nil, err
		}
		attrs.HardwareAddr = mac
		v := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: int(t.VNI), SrcAddr: t.Local.AsSlice(), Port: int(t.Port),
			// Peers are written, never learned from what arrives.
			Learning: false}
		// Bound to the interface of our address, the device takes its MTU less the
		// VXLAN headers.
		if idx, err := linkOfAddress(t.Local); err == nil {
			v.VtepDevIndex = idx
		}
		return v, nil
	default:
		return nil, fmt.Errorf("tunnel %s: unknown encapsulation %s", t.Name, t.Encap)
	}
	if t.Encap == EncapFOU {
		if err := loadModules(t.Local.Is6()); err != nil {
			return nil, fmt.Errorf("tunnel %s: %w", t.Name, err)
		}
	}
	if t.Remote.Is6() {
		tun := &netlink.Ip6tnl{LinkAttrs: attrs, Local: t.Local.AsSlice(), Remote: t.Remote.AsSlice(), Proto: unix.IPPROTO_IPV6,
			// No encapsulation limit option: the outer header is the 40 bytes the pods'
			// MTU leaves room for.
			Flags: ip6TnlIgnoreEncapLimit}
		if t.Encap == EncapFOU {
			// IPv6 UDP needs its checksum: the receiver drops a zero one.
			tun.EncapType, tun.EncapDport, tun.EncapFlags = uint16(netlink.FOU), t.Port, uint16(netlink.CSum6)
		}
		return tun, nil
	}
	tun := &netlink.Iptun{LinkAttrs: attrs, Local: t.Local.AsSlice(), Remote: t.Remote.AsSlice(), PMtuDisc: 1}
	if t.Encap == EncapFOU {
		tun.EncapType, tun.EncapDport, tun.EncapFlags = uint16(netlink.FOU), t.Port, uint16(netlink.CSum)
	}
	return tun, nil
}

// ip6TnlIgnoreEncapLimit is IP6_TNL_F_IGN_ENCAP_LIMIT of linux/ip6_tunnel.h.
const ip6TnlIgnoreEncapLimit = 0x1

// linkOfAddress is the index of the interface holding addr.
func linkOfAddress(addr netip.Addr) (int, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, err
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			return a.LinkIndex, nil
		}
	}
	return 0, fmt.Errorf("no interface holds %s", addr)
}

// loadModules loads the kernel's FOU encapsulation for the family, which it does not
// load on its own when a tunnel asks for it.
func loadModules(v6 bool) error {
	mod := "fou"
	if v6 {
		mod = "fou6"
	}
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if modulesLoaded[mod] {
		return nil
	}
	if out, err := exec.Command("modprobe", mod).CombinedOutput(); err != nil {
		return fmt.Errorf("FOU needs the kernel module %s: modprobe %s: %w: %s", mod, mod, err, strings.TrimSpace(string(out)))
	}
	modulesLoaded[mod] = true
	return nil
}

var (
	modulesMu     sync.Mutex
	modulesLoaded = map[string]bool{}
)

// DeleteTunnel implements Interface.
func (Netlink) DeleteTunnel(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding tunnel %s: %w", name, err)
	}
	if !strings.HasPrefix(l.Attrs().Alias, TunnelAliasPrefix) {
		return fmt.Errorf("refusing to delete %s: not a tunnel of ours", name)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("deleting tunnel %s: %w", name, err)
	}
	return nil
}

// vxlanDevices are our VXLAN devices.
func vxlanDevices() ([]netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if t, ok := ourTunnel(l); ok && t.Encap == EncapVXLAN {
			out = append(out, l)
		}
	}
	return out, nil
}

// VXLANPeers implements Interface: a peer per forwarding entry. One without its
// neighbour entry is listed without its MAC, so that it differs from any wanted one.
func (Netlink) VXLANPeers() ([]VXLANPeer, error) {
	devs, err := vxlanDevices()
	if err != nil {
		return nil, err
	}
	var out []VXLANPeer
	for _, d := range devs {
		idx, name := d.Attrs().Index, d.Attrs().Name
		neighs, err := netlink.NeighList(idx, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("listing neighbours of %s: %w", name, err)
		}
		macOf := map[netip.Addr]string{}
		for _, nb := range neighs {
			// The kernel's own entries (IPv6 neighbour discovery) are not ours.
			if ip, ok := netip.AddrFromSlice(nb.IP); ok && nb.State&netlink.NUD_PERMANENT != 0 {
				macOf[ip.Unmap()] = nb.HardwareAddr.String()
			}
		}
		fdb, err := netlink.NeighList(idx, unix.AF_BRIDGE)
		if err != nil {
			return nil, fmt.Errorf("listing forwarding entries of %s: %w", name, err)
		}
		for _, e := range fdb {
			node, ok := netip.AddrFromSlice(e.IP)
			if !ok || node.IsUnspecified() {
				continue
			}
			p := VXLANPeer{Device: name, Node: node.Unmap(), MAC: e.HardwareAddr.String()}
			if macOf[p.Gateway()] != p.MAC {
				p.MAC = ""
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// peerEntries are the neighbour and forwarding entries of p.
func peerEntries(p VXLANPeer) (neigh, fdb *netlink.Neigh, err error) {
	l, err := netlink.LinkByName(p.Device)
	if err != nil {
		return nil, nil, fmt.Errorf("VXLAN peer %s: finding device: %w", p, err)
	}
	if t, ok := ourTunnel(l); !ok || t.Encap != EncapVXLAN {
		return nil, nil, fmt.Errorf("VXLAN peer %s: %s is not a VXLAN device of ours", p, p.Device)
	}
	mac, err := net.ParseMAC(p.MAC)
	if err != nil {
		return nil, nil, fmt.Errorf("VXLAN peer %s: %w", p, err)
	}
	family := netlink.FAMILY_V4
	if p.Node.Is6() {
		family = netlink.FAMILY_V6
	}
	idx := l.Attrs().Index
	neigh = &netlink.Neigh{LinkIndex: idx, Family: family, State: netlink.NUD_PERMANENT, IP: p.Gateway().AsSlice(), HardwareAddr: mac}
	fdb = &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF, IP: p.Node.AsSlice(), HardwareAddr: mac}
	return neigh, fdb, nil
}

// ReplaceVXLANPeer implements Interface.
func (Netlink) ReplaceVXLANPeer(p VXLANPeer) error {
	neigh, fdb, err := peerEntries(p)
	if err != nil {
		return err
	}
	if err := netlink.NeighSet(fdb); err != nil {
		return fmt.Errorf("VXLAN peer %s: forwarding entry: %w", p, err)
	}
	if err := netlink.NeighSet(neigh); err != nil {
		return fmt.Errorf("VXLAN peer %s: neighbour entry: %w", p, err)
	}
	return nil
}

// DeleteVXLANPeer implements Interface.
func (Netlink) DeleteVXLANPeer(p VXLANPeer) error {
	if p.MAC == "" {
		// Listed without its neighbour entry: the MAC comes from the address.
		p.MAC = VXLANMAC(p.Node)
	}
	neigh, fdb, err := peerEntries(p)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range []*netlink.Neigh{neigh, fdb} {
		if err := netlink.NeighDel(e); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("deleting VXLAN peer %s: %w", p, err)
	}
	return nil
}

// FOUPorts implements Interface: direct FOU ports carrying IPIP (IPv4) or ip6ip6
// (IPv6). A port of another kind at the same number is not listed, so opening ours
// fails and says so.
func (Netlink) FOUPorts() ([]FOUPort, error) {
	if _, err := os.Stat("/sys/module/fou"); err != nil {
		return nil, nil // without the module no port is open (and asking would load it)
	}
	// The kernel's dump holds the ports of both families, whichever is asked for.
	fous, err := netlink.FouList(netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing FOU ports: %w", err)
	}
	var out []FOUPort
	for _, f := range fous {
		p := FOUPort{V6: f.Family == netlink.FAMILY_V6, Port: uint16(f.Port)}
		if f.EncapType == netlink.FOU_ENCAP_DIRECT && f.Protocol == fouProtocol(p.V6) && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// fouProtocol is the IP protocol inside the family's FOU packets: IPIP or ip6ip6.
func fouProtocol(v6 bool) int {
	if v6 {
		return unix.IPPROTO_IPV6
	}
	return unix.IPPROTO_IPIP
}

func fouOf(p FOUPort) netlink.Fou {
	f := netlink.Fou{Family: netlink.FAMILY_V4, Port: int(p.Port), Protocol: fouProtocol(p.V6), EncapType: netlink.FOU_ENCAP_DIRECT}
	if p.V6 {
		f.Family = netlink.FAMILY_V6
	}
	return f
}

// AddFOUPort implements Interface.
func (Netlink) AddFOUPort(p FOUPort) error {
	if err := loadModules(p.V6); err != nil {
		return fmt.Errorf("opening %s: %w", p, err)
	}
	if err := netlink.FouAdd(fouOf(p)); err != nil {
		return fmt.Errorf("opening %s: %w", p, err)
	}
	return nil
}

// DeleteFOUPort implements Interface.
func (Netlink) DeleteFOUPort(p FOUPort) error {
	if err := netlink.FouDel(fouOf(p)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("closing %s: %w", p, err)
	}
	return nil
}

// LocalPrefixes implements Interface.
func (Netlink) LocalPrefixes() ([]netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		if a.Scope != int(netlink.SCOPE_UNIVERSE) {
			continue // loopback and IPv6 link-local networks are no node subnets
		}
		if p, ok := prefixOf(a.IPNet); ok {
			out = append(out, p.Masked())
		}
	}
	return out, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
