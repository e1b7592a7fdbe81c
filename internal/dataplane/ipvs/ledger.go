package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
)

// Ledger records which virtual services kube-routerd created. It lives in the kernel
// (ipsets), so it survives kill -9 and restarts, and it vanishes together with the IPVS
// table on reboot. Callers add a key before creating the service and remove it after
// deleting it, so a crash in between leaves at most a stale record, never an orphan.
// The same sets list every VIP:port we serve, for firewall rules.
type Ledger interface {
	// Keys lists every recorded virtual service.
	Keys() ([]Key, error)
	Add(k Key) error
	Remove(k Key) error
	// Destroy removes the ledger itself (cleanup).
	Destroy() error
}

// Names of the ledger ipsets (hash:ip,port), one per address family.
const (
	LedgerSetV4 = "kube-router-svc-ports"
	LedgerSetV6 = "kube-router-svc-ports6"
)

// IPSetLedger keeps the ledger in two hash:ip,port ipsets.
type IPSetLedger struct {
	once    sync.Once
	initErr error
}

func ledgerSet(a netip.Addr) string {
	if a.Is4() {
		return LedgerSetV4
	}
	return LedgerSetV6
}

func (l *IPSetLedger) ensure() error {
	l.once.Do(func() {
		for _, s := range []struct {
			name   string
			family uint8
		}{{LedgerSetV4, syscall.AF_INET}, {LedgerSetV6, syscall.AF_INET6}} {
			err := netlink.IpsetCreate(s.name, "hash:ip,port", netlink.IpsetCreateOptions{Family: s.family})
			if err != nil && !errors.Is(err, syscall.EEXIST) {
				l.initErr = fmt.Errorf("creating ipset %s: %w", s.name, err)
				return
			}
		}
	})
	return l.initErr
}

func ledgerEntry(k Key) *netlink.IPSetEntry {
	proto := uint8(k.Proto)
	port := k.Port
	return &netlink.IPSetEntry{IP: net.IP(k.Addr.AsSlice()), Protocol: &proto, Port: &port}
}

// Keys implements Ledger.
func (l *IPSetLedger) Keys() ([]Key, error) {
	if err := l.ensure(); err != nil {
		return nil, err
	}
	var keys []Key
	for _, name := range []string{LedgerSetV4, LedgerSetV6} {
		res, err := netlink.IpsetList(name)
		if err != nil {
			return nil, fmt.Errorf("listing ipset %s: %w", name, err)
		}
		for _, e := range res.Entries {
			addr, ok := netip.AddrFromSlice(e.IP)
			if !ok || e.Port == nil || e.Protocol == nil {
				continue
			}
			keys = append(keys, Key{Addr: addr.Unmap(), Proto: Protocol(*e.Protocol), Port: *e.Port})
		}
	}
	return keys, nil
}

// Add implements Ledger.
func (l *IPSetLedger) Add(k Key) error {
	if err := l.ensure(); err != nil {
		return err
	}
	e := ledgerEntry(k)
	e.Replace = true // adding twice is not an error
	if err := netlink.IpsetAdd(ledgerSet(k.Addr), e); err != nil {
		return fmt.Errorf("recording %s in ipset %s: %w", k, ledgerSet(k.Addr), err)
	}
	return nil
}

// Remove implements Ledger.
func (l *IPSetLedger) Remove(k Key) error {
	if err := l.ensure(); err != nil {
		return err
	}
	e := ledgerEntry(k)
	e.Replace = true // without NLM_F_EXCL, removing a missing entry is not an error
	if err := netlink.IpsetDel(ledgerSet(k.Addr), e); err != nil {
		return fmt.Errorf("removing %s from ipset %s: %w", k, ledgerSet(k.Addr), err)
	}
	return nil
}

// Destroy implements Ledger.
func (l *IPSetLedger) Destroy() error {
	var errs []error
	for _, name := range []string{LedgerSetV4, LedgerSetV6} {
		if err := netlink.IpsetDestroy(name); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("destroying ipset %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// FakeLedger is an in-memory Ledger for tests.
type FakeLedger struct {
	mu   sync.Mutex
	keys map[Key]bool
}

// NewFakeLedger returns an empty in-memory ledger.
func NewFakeLedger() *FakeLedger { return &FakeLedger{keys: map[Key]bool{}} }

// Keys implements Ledger.
func (l *FakeLedger) Keys() ([]Key, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Key, 0, len(l.keys))
	for k := range l.keys {
		out = append(out, k)
	}
	slices.SortFunc(out, CompareKeys)
	return out, nil
}

// Add implements Ledger.
func (l *FakeLedger) Add(k Key) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys[k] = true
	return nil
}

// Remove implements Ledger.
func (l *FakeLedger) Remove(k Key) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.keys, k)
	return nil
}

// Destroy implements Ledger.
func (l *FakeLedger) Destroy() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.keys)
	return nil
}
