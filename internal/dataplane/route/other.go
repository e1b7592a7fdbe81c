package route

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The functions below read and delete routes, rules and links that are not ours, for
// taking a node over from kube-router (internal/takeover decides what is whose). Each
// deletion names one exact object, so the kernel never removes a neighbour of it.

// TableRoute is a route of any table and protocol.
type TableRoute struct {
	Route
	Table    int
	Protocol int
}

func (r TableRoute) String() string {
	s := r.Dst.String()
	if r.Gateway.IsValid() {
		s += " via " + r.Gateway.String()
	}
	if r.Device != "" {
		s += " dev " + r.Device
	}
	return fmt.Sprintf("%s proto %d table %d", s, r.Protocol, r.Table)
}

// IPRule is a policy routing rule: traffic from Src (any when unset) or carrying Mark
// looks up Table.
type IPRule struct {
	Priority int
	Src      netip.Prefix
	Mark     uint32
	Table    int
	// V6 says which family's rule list holds it.
	V6 bool
}

func (r IPRule) String() string {
	s := fmt.Sprintf("priority %d", r.Priority)
	if r.Src.IsValid() {
		s += " from " + r.Src.String()
	} else {
		s += " from all"
	}
	if r.Mark != 0 {
		s += fmt.Sprintf(" fwmark %#x", r.Mark)
	}
	fam := "IPv4"
	if r.V6 {
		fam = "IPv6"
	}
	return fmt.Sprintf("%s ip rule %s lookup %d", fam, s, r.Table)
}

// Link is a network interface by name and kind ("ipip", "ip6tnl", "bridge", ...).
type Link struct {
	Name string
	Kind string
}

// TableRoutes lists the routes of both families in table; protocol 0 means any.
func (Netlink) TableRoutes(table, protocol int) ([]TableRoute, error) {
	filter := &netlink.Route{Table: table, Protocol: netlink.RouteProtocol(protocol)}
	mask := uint64(netlink.RT_FILTER_TABLE)
	if protocol != 0 {
		mask |= netlink.RT_FILTER_PROTOCOL
	}
	nrs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, mask)
	if err != nil {
		return nil, fmt.Errorf("listing routes of table %d: %w", table, err)
	}
	var out []TableRoute
	for _, nr := range nrs {
		r := TableRoute{Table: nr.Table, Protocol: int(nr.Protocol)}
		if nr.Dst != nil {
			r.Dst, _ = prefixOf(nr.Dst)
		} else if nr.Family == unix.AF_INET6 {
			r.Dst = netip.MustParsePrefix("::/0")
		} else {
			r.Dst = netip.MustParsePrefix("0.0.0.0/0")
		}
		if gw, ok := netip.AddrFromSlice(nr.Gw); ok {
			r.Gateway = gw.Unmap()
		}
		if nr.LinkIndex > 0 {
			if l, err := netlink.LinkByIndex(nr.LinkIndex); err == nil {
				r.Device = l.Attrs().Name
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// DeleteTableRoute removes the route to r.Dst of r's table and protocol, of any scope
// and type; an absent one is not an error.
func (Netlink) DeleteTableRoute(r TableRoute) error {
	nr := &netlink.Route{Dst: ipNet(r.Dst), Table: r.Table, Protocol: netlink.RouteProtocol(r.Protocol), Scope: netlink.SCOPE_NOWHERE}
	if err := netlink.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("deleting route %s: %w", r, err)
	}
	return nil
}

// Rules lists the policy routing rules of both families.
func (Netlink) Rules() ([]IPRule, error) {
	var out []IPRule
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := netlink.RuleList(family)
		if err != nil {
			return nil, fmt.Errorf("listing ip rules: %w", err)
		}
		for _, nr := range rules {
			r := IPRule{Priority: nr.Priority, Mark: nr.Mark, Table: nr.Table, V6: family == netlink.FAMILY_V6}
			if nr.Src != nil {
				r.Src, _ = prefixOf(nr.Src)
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// DeleteRule removes the rule with r's priority, source, mark and table.
func (Netlink) DeleteRule(r IPRule) error {
	nr := netlink.NewRule()
	nr.Priority, nr.Table, nr.Mark = r.Priority, r.Table, r.Mark
	nr.Family = netlink.FAMILY_V4
	if r.V6 {
		nr.Family = netlink.FAMILY_V6
	}
	if r.Src.IsValid() {
		nr.Src = ipNet(r.Src)
	}
	if err := netlink.RuleDel(nr); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting %s: %w", r, err)
	}
	return nil
}

// Links lists the interfaces with their kinds.
func (Netlink) Links() ([]Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	out := make([]Link, 0, len(links))
	for _, l := range links {
		out = append(out, Link{Name: l.Attrs().Name, Kind: l.Type()})
	}
	return out, nil
}

// DeleteLink removes the interface l names if it still has l's kind.
func (Netlink) DeleteLink(l Link) error {
	nl, err := netlink.LinkByName(l.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding %s: %w", l.Name, err)
	}
	if nl.Type() != l.Kind {
		return fmt.Errorf("refusing to delete %s: it is a %s, not a %s", l.Name, nl.Type(), l.Kind)
	}
	if err := netlink.LinkDel(nl); err != nil {
		return fmt.Errorf("deleting %s %s: %w", l.Kind, l.Name, err)
	}
	return nil
}
