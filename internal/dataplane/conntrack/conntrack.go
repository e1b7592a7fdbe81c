// Package conntrack deletes stale connection-tracking entries. UDP has no connection
// end, so after a UDP endpoint goes away its conntrack entry would keep steering a
// client's packets to the dead endpoint until it times out.
package conntrack

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
)

// Flow selects UDP flows a client opened to a service address and port which the
// kernel translated to one endpoint address.
type Flow struct {
	ServiceAddr netip.Addr
	ServicePort uint16
	Endpoint    netip.Addr
}

func (f Flow) String() string {
	return fmt.Sprintf("udp %s -> %s", netip.AddrPortFrom(f.ServiceAddr, f.ServicePort), f.Endpoint)
}

// Interface deletes conntrack entries.
type Interface interface {
	// DeleteUDP removes the UDP entries matching f and returns how many it removed.
	DeleteUDP(f Flow) (uint, error)
}

// Kernel deletes entries from the kernel's conntrack table over netlink.
type Kernel struct {
	// Netlink selects the network namespace; nil means the calling thread's.
	Netlink *netlink.Handle
}

// DeleteUDP implements Interface.
func (k Kernel) DeleteUDP(f Flow) (uint, error) {
	h := k.Netlink
	if h == nil {
		h = &netlink.Handle{}
	}
	filter := &netlink.ConntrackFilter{}
	family := netlink.InetFamily(syscall.AF_INET)
	if f.ServiceAddr.Is6() {
		family = syscall.AF_INET6
	}
	if err := filter.AddProtocol(syscall.IPPROTO_UDP); err != nil {
		return 0, err
	}
	if err := filter.AddIP(netlink.ConntrackOrigDstIP, net.IP(f.ServiceAddr.AsSlice())); err != nil {
		return 0, err
	}
	if err := filter.AddPort(netlink.ConntrackOrigDstPort, f.ServicePort); err != nil {
		return 0, err
	}
	if err := filter.AddIP(netlink.ConntrackReplySrcIP, net.IP(f.Endpoint.AsSlice())); err != nil {
		return 0, err
	}
	n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, family, filter)
	if err != nil {
		return n, fmt.Errorf("deleting conntrack entries %s: %w", f, err)
	}
	return n, nil
}

// Fake records the deletions it was asked for.
type Fake struct {
	mu      sync.Mutex
	deleted []Flow
}

// DeleteUDP implements Interface.
func (f *Fake) DeleteUDP(fl Flow) (uint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deleted = append(f.deleted, fl)
	return 0, nil
}

// Deleted returns the flows deleted so far.
func (f *Fake) Deleted() []Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Flow(nil), f.deleted...)
}
