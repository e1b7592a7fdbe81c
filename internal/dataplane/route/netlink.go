package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

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
		if gw, ok := netip.AddrFromSlice(nr.Gw); ok && nr.Gw != nil {
			r.Gateway = gw.Unmap()
		} else if nr.LinkIndex > 0 {
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
	} else {
		nr.Gw = r.Gateway.AsSlice()
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

// ourTunnel returns l as a Tunnel if it is an IPIP or ip6ip6 tunnel of ours.
func ourTunnel(l netlink.Link) (Tunnel, bool) {
	if !strings.HasPrefix(l.Attrs().Alias, TunnelAliasPrefix) {
		return Tunnel{}, false
	}
	var local, remote net.IP
	switch t := l.(type) {
	case *netlink.Iptun:
		local, remote = t.Local.To4(), t.Remote.To4()
	case *netlink.Ip6tnl:
		local, remote = t.Local.To16(), t.Remote.To16()
	default:
		return Tunnel{}, false
	}
	l4, _ := netip.AddrFromSlice(local)
	r4, _ := netip.AddrFromSlice(remote)
	return Tunnel{Name: l.Attrs().Name, Local: l4, Remote: r4}, true
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
	var link netlink.Link = &netlink.Iptun{
		LinkAttrs: netlink.LinkAttrs{Name: t.Name},
		Local:     t.Local.AsSlice(),
		Remote:    t.Remote.AsSlice(),
		PMtuDisc:  1,
	}
	if t.Remote.Is6() {
		link = &netlink.Ip6tnl{
			LinkAttrs: netlink.LinkAttrs{Name: t.Name},
			Local:     t.Local.AsSlice(),
			Remote:    t.Remote.AsSlice(),
			Proto:     unix.IPPROTO_IPV6,
		}
	}
	if err := netlink.LinkAdd(link); err != nil {
		return fmt.Errorf("creating tunnel %s: %w", t, err)
	}
	if err := netlink.LinkSetAlias(link, TunnelAliasPrefix+t.Remote.String()); err != nil {
		_ = netlink.LinkDel(link)
		return fmt.Errorf("marking tunnel %s as ours: %w", t.Name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting tunnel %s up: %w", t.Name, err)
	}
	return nil
}

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
