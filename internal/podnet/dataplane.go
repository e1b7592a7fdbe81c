package podnet

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"
)

// Dataplane is what the controller reads and sets in the node's kernel: one iptables
// per IP family served, the IP sets, the sysctls and the links' MTUs.
type Dataplane struct {
	IPTables []iptables.Interface
	IPSets   ipset.Interface
	Sysctls  sysctl.Interface
	// LinkMTU returns the MTU of the interface that holds addr.
	LinkMTU func(addr netip.Addr) (int, error)
}

// KernelDataplane is the real Dataplane of network namespace ns (netns.None(): the
// daemon's own).
func KernelDataplane(ns netns.NsHandle) (Dataplane, error) {
	tables, sets, err := netfilter.KernelTables(ns)
	if err != nil {
		return Dataplane{}, err
	}
	dp := Dataplane{IPTables: tables, IPSets: sets}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return Dataplane{}, fmt.Errorf("netlink handle: %w", err)
	}
	dp.Sysctls = sysctl.Proc{NS: ns}
	dp.LinkMTU = func(a netip.Addr) (int, error) { return linkMTU(nl, a) }
	return dp, nil
}

// linkMTU finds the interface holding addr and returns its MTU.
func linkMTU(nl *netlink.Handle, addr netip.Addr) (int, error) {
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := nl.AddrList(nil, family)
	if err != nil {
		return 0, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			link, err := nl.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, fmt.Errorf("reading the link of %s: %w", addr, err)
			}
			return link.Attrs().MTU, nil
		}
	}
	return 0, fmt.Errorf("no interface holds %s", addr)
}
