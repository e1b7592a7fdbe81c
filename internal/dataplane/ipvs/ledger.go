package ipvs

import (
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Ledger records which virtual services kube-routerd created. It lives in the kernel
// (ipsets), so it survives kill -9 and restarts, and it vanishes together with the IPVS
// table on reboot. Callers add a key before creating the service and remove it after
// deleting it, so a crash in between leaves at most a stale record, never an orphan.
// The same sets list every VIP:port we serve, for firewall rules.
type Ledger interface {
	// Keys lists every recorded virtual service.
	Keys() ([]Key, error)
	// AddAll records keys, many per kernel round trip; one error per key.
	AddAll(keys []Key) []error
	Remove(k Key) error
	// Destroy removes the ledger itself (cleanup).
	Destroy() error
}

// Names of the ledger ipsets (hash:ip,port), one per address family.
const (
	LedgerSetV4 = "kube-router-svc-ports"
	LedgerSetV6 = "kube-router-svc-ports6"
)

// LedgerSet returns the name of the ledger set that holds keys of a's family.
func LedgerSet(a netip.Addr) string {
	if a.Is4() {
		return LedgerSetV4
	}
	return LedgerSetV6
}

// LedgerEntry returns k as an entry of a hash:ip,port set ("10.96.0.1,tcp:80").
func LedgerEntry(k Key) string {
	return k.Addr.String() + "," + strings.ToLower(k.Proto.String()) + ":" + strconv.Itoa(int(k.Port))
}

// IPSetLedger keeps the ledger in two hash:ip,port ipsets.
type IPSetLedger struct {
	Sets ipset.Interface

	once    sync.Once
	initErr error
}

func (l *IPSetLedger) ensure() error {
	l.once.Do(func() {
		for _, s := range []ipset.Set{
			{Name: LedgerSetV4, Type: ipset.HashIPPort, Family: ipfamily.IPv4},
			{Name: LedgerSetV6, Type: ipset.HashIPPort, Family: ipfamily.IPv6},
		} {
			if err := l.Sets.Create(s); err != nil {
				l.initErr = err
				return
			}
		}
	})
	return l.initErr
}

func parseLedgerEntry(e string) (Key, bool) {
	ip, protoPort, ok := strings.Cut(e, ",")
	proto, port, ok2 := strings.Cut(protoPort, ":")
	addr, err := netip.ParseAddr(ip)
	n, err2 := strconv.ParseUint(port, 10, 16)
	if !ok || !ok2 || err != nil || err2 != nil {
		return Key{}, false
	}
	for _, p := range []Protocol{TCP, UDP, SCTP} {
		if strings.EqualFold(p.String(), proto) {
			return Key{Addr: addr.Unmap(), Proto: p, Port: uint16(n)}, true
		}
	}
	return Key{}, false
}

// Keys implements Ledger.
func (l *IPSetLedger) Keys() ([]Key, error) {
	if err := l.ensure(); err != nil {
		return nil, err
	}
	var keys []Key
	for _, name := range []string{LedgerSetV4, LedgerSetV6} {
		s, err := l.Sets.List(name)
		if err != nil {
			return nil, err
		}
		for _, e := range s.Entries {
			if k, ok := parseLedgerEntry(e); ok {
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

// AddAll implements Ledger.
func (l *IPSetLedger) AddAll(keys []Key) []error {
	errs := make([]error, len(keys))
	if err := l.ensure(); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	// One batch per set; errors go back to their keys.
	byFamily := map[string][]int{}
	for i, k := range keys {
		set := LedgerSet(k.Addr)
		byFamily[set] = append(byFamily[set], i)
	}
	for set, idx := range byFamily {
		entries := make([]string, len(idx))
		for j, i := range idx {
			entries[j] = LedgerEntry(keys[i])
		}
		for j, err := range l.Sets.AddEntries(set, entries) {
			errs[idx[j]] = err
		}
	}
	return errs
}

// Remove implements Ledger.
func (l *IPSetLedger) Remove(k Key) error {
	if err := l.ensure(); err != nil {
		return err
	}
	return l.Sets.Del(LedgerSet(k.Addr), LedgerEntry(k))
}

// Destroy implements Ledger. The kernel refuses while an iptables rule uses a set, so
// the rules go first.
func (l *IPSetLedger) Destroy() error {
	for _, name := range []string{LedgerSetV4, LedgerSetV6} {
		if err := l.Sets.Destroy(name); err != nil {
			return err
		}
	}
	return nil
}
