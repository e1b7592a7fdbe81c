// Package ipset is kube-routerd's thin adapter over the kernel's IP sets (netlink,
// no ipset binary), with an in-memory Fake for tests.
//
// Entries are strings in one canonical form, so that what a caller computes compares
// equal to what List reports:
//
//	hash:ip       "10.0.0.1", "fd00::1"
//	hash:net      "10.0.0.0/24", "10.0.0.1/32" (always with a prefix length)
//	hash:ip,port  "10.0.0.1,tcp:80" (protocol tcp, udp or sctp)
//
// Use Canonical to normalise an entry written any other way.
package ipset

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Type is an ipset type name as the kernel knows it.
type Type string

// The set types kube-routerd uses.
const (
	HashIP     Type = "hash:ip"
	HashNet    Type = "hash:net"
	HashIPPort Type = "hash:ip,port"
)

// kernelFamilyName is how the ipset tool names a set's family ("inet", "inet6").
func kernelFamilyName(f ipfamily.Family) string {
	if f == ipfamily.IPv6 {
		return "inet6"
	}
	return "inet"
}

// ErrNoSuchSet is what List returns (wrapped) for a set that does not exist.
var ErrNoSuchSet = errors.New("no such set")

// MaxNameLen is the longest set name the kernel accepts (IPSET_MAXNAMELEN - 1).
const MaxNameLen = 31

// Set describes one set without its entries.
type Set struct {
	Name   string
	Type   Type
	Family ipfamily.Family
}

// SetEntries is a set with its entries in canonical form, sorted.
type SetEntries struct {
	Set
	Entries []string
}

// Interface is what controllers need from the kernel's IP sets. Implementations are
// bound to one network namespace. Errors name the set and entry involved.
type Interface interface {
	// Create makes an empty set; it is not an error if a set of that name, type and
	// family already exists.
	Create(s Set) error
	// Destroy removes a set; it is not an error if the set does not exist. The kernel
	// refuses while an iptables rule references the set.
	Destroy(name string) error
	// Flush removes every entry of a set.
	Flush(name string) error
	// Add inserts an entry; adding an entry that is present is not an error.
	Add(name, entry string) error
	// AddEntries inserts entries as Add does, many per kernel round trip, and returns
	// one error per entry.
	AddEntries(name string, entries []string) []error
	// Del removes an entry; removing an absent entry is not an error.
	Del(name, entry string) error
	// DelEntries removes entries as Del does, many per kernel round trip, and returns
	// one error per entry.
	DelEntries(name string, entries []string) []error
	// Swap exchanges the contents (and types) of two existing sets atomically.
	Swap(a, b string) error
	// List returns a set with its entries.
	List(name string) (SetEntries, error)
	// ListAll returns every set in the namespace that keep accepts (nil: every set)
	// with its entries, sorted by name; the entries of sets keep rejects are not read.
	ListAll(keep func(Set) bool) ([]SetEntries, error)
	// Names returns the name of every set in the namespace, sorted, without reading
	// any entries: the kernel sends only the names.
	Names() ([]string, error)
}

// Canonical returns entry in the canonical form for a set of type t.
func Canonical(t Type, entry string) (string, error) {
	switch t {
	case HashIP:
		a, err := netip.ParseAddr(entry)
		if err != nil {
			return "", fmt.Errorf("ipset %s entry %q: %w", t, entry, err)
		}
		return a.Unmap().String(), nil
	case HashNet:
		if !strings.Contains(entry, "/") {
			a, err := netip.ParseAddr(entry)
			if err != nil {
				return "", fmt.Errorf("ipset %s entry %q: %w", t, entry, err)
			}
			a = a.Unmap()
			return netip.PrefixFrom(a, a.BitLen()).String(), nil
		}
		p, err := netip.ParsePrefix(entry)
		if err != nil {
			return "", fmt.Errorf("ipset %s entry %q: %w", t, entry, err)
		}
		return p.Masked().String(), nil
	case HashIPPort:
		addr, proto, port, err := parseIPPort(entry)
		if err != nil {
			return "", fmt.Errorf("ipset %s entry %q: %w", t, entry, err)
		}
		return formatIPPort(addr, proto, port), nil
	}
	return "", fmt.Errorf("ipset type %q is not supported", t)
}

// protocolNumbers maps the protocols hash:ip,port entries may name to IP protocol numbers.
var protocolNumbers = map[string]uint8{"tcp": 6, "udp": 17, "sctp": 132}

func protocolName(n uint8) string {
	for name, v := range protocolNumbers {
		if v == n {
			return name
		}
	}
	return strconv.Itoa(int(n))
}

func parseIPPort(entry string) (netip.Addr, string, uint16, error) {
	ipPart, protoPort, ok := strings.Cut(entry, ",")
	if !ok {
		return netip.Addr{}, "", 0, fmt.Errorf("want ip,proto:port")
	}
	addr, err := netip.ParseAddr(ipPart)
	if err != nil {
		return netip.Addr{}, "", 0, err
	}
	proto, portStr, ok := strings.Cut(protoPort, ":")
	if !ok {
		proto, portStr = "tcp", protoPort
	}
	proto = strings.ToLower(proto)
	if _, known := protocolNumbers[proto]; !known {
		return netip.Addr{}, "", 0, fmt.Errorf("unsupported protocol %q", proto)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return netip.Addr{}, "", 0, fmt.Errorf("invalid port %q", portStr)
	}
	return addr.Unmap(), proto, uint16(port), nil
}

func formatIPPort(addr netip.Addr, proto string, port uint16) string {
	return addr.String() + "," + proto + ":" + strconv.Itoa(int(port))
}

// CheckName reports whether name is usable as a set name.
func CheckName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("ipset name %q must be 1-%d characters", name, MaxNameLen)
	}
	return nil
}

func sortedEntries(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for e := range m {
		out = append(out, e)
	}
	sort.Strings(out)
	return out
}
