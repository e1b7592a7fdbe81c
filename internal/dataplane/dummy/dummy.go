// Package dummy manages the dummy interface (kube-dummy-if) that holds the service
// VIPs, so the kernel treats traffic to them as local and IPVS can take it. The
// interface belongs to kube-routerd entirely: every address on it is ours.
package dummy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/nlbatch"
)

// Interface is what the service proxy needs from the VIP interface.
type Interface interface {
	// Ensure creates the interface if it is missing and sets it up.
	Ensure() error
	// Addrs lists the addresses on the interface (IPv6 link-local ones excluded).
	Addrs() ([]netip.Addr, error)
	// AddAddrs puts addresses on the interface, many per kernel round trip, and
	// returns one error per address.
	AddAddrs(addrs []netip.Addr) []error
	DelAddr(a netip.Addr) error
	// Delete removes the interface and with it every VIP (cleanup).
	Delete() error
}

// Link is the real dummy interface, managed over rtnetlink.
type Link struct {
	Name string
	// Netlink selects the network namespace; nil means the calling thread's.
	Netlink *netlink.Handle
	// NS is the same namespace, for the batch socket of AddAddrs: set it, to
	// netns.None() for the calling thread's.
	NS netns.NsHandle
	// batch sends address changes in batches; opened on first use.
	batch *nlbatch.Sender

	// ensured is the interface as Ensure last found or made it. Address changes use
	// its index instead of looking the name up each time: at 10,000 VIPs the lookups
	// cost as much as the changes. A failed change forgets it, in case the interface
	// was replaced by hand.
	ensured netlink.Link
}

func (l *Link) nl() *netlink.Handle {
	if l.Netlink != nil {
		return l.Netlink
	}
	return &netlink.Handle{}
}

var _ Interface = (*Link)(nil)

func (l *Link) link() (netlink.Link, error) {
	if l.ensured != nil {
		return l.ensured, nil
	}
	link, err := l.nl().LinkByName(l.Name)
	if err != nil {
		return nil, fmt.Errorf("looking up interface %s: %w", l.Name, err)
	}
	return link, nil
}

// Ensure implements Interface.
func (l *Link) Ensure() error {
	link, err := l.nl().LinkByName(l.Name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			return fmt.Errorf("looking up interface %s: %w", l.Name, err)
		}
		d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: l.Name}}
		if err := l.nl().LinkAdd(d); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("creating dummy interface %s: %w", l.Name, err)
		}
		if link, err = l.nl().LinkByName(l.Name); err != nil {
			return fmt.Errorf("looking up interface %s: %w", l.Name, err)
		}
	}
	if link.Type() != "dummy" {
		return fmt.Errorf("interface %s exists but is a %s, not a dummy", l.Name, link.Type())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := l.nl().LinkSetUp(link); err != nil {
			return fmt.Errorf("setting %s up: %w", l.Name, err)
		}
	}
	l.ensured = link
	return nil
}

// Addrs implements Interface.
func (l *Link) Addrs() ([]netip.Addr, error) {
	link, err := l.link()
	if err != nil {
		return nil, err
	}
	list, err := l.nl().AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing addresses of %s: %w", l.Name, err)
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap().IsLinkLocalUnicast() {
			continue
		}
		out = append(out, ip.Unmap())
	}
	return out, nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	bits := a.BitLen()
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, bits)}}
}

// AddAddrs implements Interface. At 10,000 VIPs one request per address spent most
// of its time in per-request overhead.
func (l *Link) AddAddrs(addrs []netip.Addr) []error {
	errs := make([]error, len(addrs))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	link, err := l.link()
	if err != nil {
		return fail(err)
	}
	if l.batch == nil {
		sock, err := nl.GetNetlinkSocketAt(l.NS, netns.None(), unix.NETLINK_ROUTE)
		if err != nil {
			return fail(fmt.Errorf("opening rtnetlink: %w", err))
		}
		if l.batch, err = nlbatch.New(sock); err != nil {
			sock.Close()
			return fail(err)
		}
	}
	reqs := make([]nlbatch.Request, len(addrs))
	for i, a := range addrs {
		reqs[i] = nlbatch.Request{Type: unix.RTM_NEWADDR, Flags: unix.NLM_F_CREATE | unix.NLM_F_REPLACE,
			Body: newAddrBody(link.Attrs().Index, a)}
	}
	for i, err := range l.batch.Send(reqs) {
		if err != nil {
			l.ensured = nil
			errs[i] = fmt.Errorf("adding %s to %s: %w", addrs[i], l.Name, err)
		}
	}
	return errs
}

// newAddrBody encodes a as a host address (/32 or /128) on interface index, as the
// body of an RTM_NEWADDR request.
func newAddrBody(index int, a netip.Addr) []byte {
	family, flags := uint8(unix.AF_INET), uint32(0)
	if a.Is6() {
		// A VIP is unique by construction; duplicate address detection would only
		// delay it being usable.
		family, flags = unix.AF_INET6, unix.IFA_F_NODAD
	}
	b := []byte{family, uint8(a.BitLen()), uint8(flags), unix.RT_SCOPE_UNIVERSE}
	b = binary.NativeEndian.AppendUint32(b, uint32(index))
	b = nlbatch.AppendAttr(b, unix.IFA_LOCAL, a.AsSlice())
	b = nlbatch.AppendAttr(b, unix.IFA_ADDRESS, a.AsSlice())
	return nlbatch.AppendAttr(b, unix.IFA_FLAGS, binary.NativeEndian.AppendUint32(nil, flags))
}

// DelAddr implements Interface.
func (l *Link) DelAddr(a netip.Addr) error {
	link, err := l.link()
	if err != nil {
		return err
	}
	if err := l.nl().AddrDel(link, hostAddr(a)); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		l.ensured = nil
		return fmt.Errorf("removing %s from %s: %w", a, l.Name, err)
	}
	return nil
}

// Delete implements Interface.
func (l *Link) Delete() error {
	l.ensured = nil
	if l.batch != nil {
		l.batch.Close()
		l.batch = nil
	}
	link, err := l.nl().LinkByName(l.Name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("looking up interface %s: %w", l.Name, err)
	}
	if err := l.nl().LinkDel(link); err != nil {
		return fmt.Errorf("deleting interface %s: %w", l.Name, err)
	}
	return nil
}

// Fake is an in-memory dummy interface for tests.
type Fake struct {
	mu     sync.Mutex
	exists bool
	addrs  map[netip.Addr]bool
	// Changes counts the addresses added and removed.
	Changes int
}

var _ Interface = (*Fake)(nil)

// NewFake returns a fake interface that does not exist yet.
func NewFake() *Fake { return &Fake{addrs: map[netip.Addr]bool{}} }

// Ensure implements Interface.
func (f *Fake) Ensure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exists = true
	return nil
}

// Addrs implements Interface.
func (f *Fake) Addrs() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.exists {
		return nil, errors.New("fake dummy interface does not exist")
	}
	out := make([]netip.Addr, 0, len(f.addrs))
	for a := range f.addrs {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// AddAddrs implements Interface.
func (f *Fake) AddAddrs(addrs []netip.Addr) []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	errs := make([]error, len(addrs))
	for i, a := range addrs {
		switch {
		case !f.exists:
			errs[i] = errors.New("fake dummy interface does not exist")
		case !f.addrs[a]:
			f.addrs[a] = true
			f.Changes++
		}
	}
	return errs
}

// DelAddr implements Interface.
func (f *Fake) DelAddr(a netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.addrs[a] {
		delete(f.addrs, a)
		f.Changes++
	}
	return nil
}

// Delete implements Interface.
func (f *Fake) Delete() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exists = false
	clear(f.addrs)
	return nil
}
