// Package route is the routing controller's view of the kernel: IPv4 and IPv6 routes
// to other nodes' pod CIDRs and IPIP tunnels to other nodes. Everything it lists, changes or deletes
// carries our mark (route protocol Protocol, tunnel alias prefix TunnelAliasPrefix), so
// routes and links that other software created are never touched.
package route

import (
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
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

// Route sends a prefix to a gateway, or into a tunnel device.
type Route struct {
	// Dst is the destination prefix (another node's pod CIDR).
	Dst netip.Prefix
	// Gateway is the next hop on a directly connected network; unset for tunnel routes.
	Gateway netip.Addr
	// Device is the tunnel interface the route points into; empty for gateway routes.
	Device string
}

func (r Route) String() string {
	if r.Device != "" {
		return fmt.Sprintf("%s dev %s", r.Dst, r.Device)
	}
	return fmt.Sprintf("%s via %s", r.Dst, r.Gateway)
}

// Tunnel is a tunnel to one remote node: IPIP for IPv4 addresses, ip6ip6 for IPv6.
type Tunnel struct {
	// Name is the interface name (TunnelName of Remote).
	Name string
	// Local is our node address the tunnel's outer packets come from.
	Local netip.Addr
	// Remote is the other node's address.
	Remote netip.Addr
}

func (t Tunnel) String() string {
	mode := "ipip"
	if t.Remote.Is6() {
		mode = "ip6ip6"
	}
	return fmt.Sprintf("%s %s local %s remote %s", t.Name, mode, t.Local, t.Remote)
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

// Interface is what the routing controller needs from the kernel.
type Interface interface {
	// Routes lists the IPv4 and IPv6 routes in the main table that carry our protocol id.
	Routes() ([]Route, error)
	// ReplaceRoute adds r or replaces the route to r.Dst, marking it as ours.
	ReplaceRoute(r Route) error
	// DeleteRoute removes our route to r.Dst.
	DeleteRoute(r Route) error
	// Tunnels lists the IPIP tunnels we created.
	Tunnels() ([]Tunnel, error)
	// EnsureTunnel creates the tunnel, or recreates it when its endpoints differ, and
	// sets it up.
	EnsureTunnel(t Tunnel) error
	// DeleteTunnel removes one of our tunnels by name.
	DeleteTunnel(name string) error
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

// Dump renders routes and tunnels one per line, sorted, for golden tests and status.
func Dump(routes []Route, tunnels []Tunnel) string {
	rs := slices.Clone(routes)
	SortRoutes(rs)
	ts := slices.Clone(tunnels)
	slices.SortFunc(ts, func(a, b Tunnel) int { return strings.Compare(a.Name, b.Name) })
	var b strings.Builder
	for _, t := range ts {
		fmt.Fprintf(&b, "tunnel %s\n", t)
	}
	for _, r := range rs {
		fmt.Fprintf(&b, "route %s\n", r)
	}
	return b.String()
}
