// Package ipfamily is the one spelling of "IPv4 or IPv6" across kube-routerd.
package ipfamily

import "net/netip"

// Family is an IP family, numbered as in "IPv4" and "IPv6".
type Family uint8

// The IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Both are the families in the order kube-routerd handles them.
var Both = []Family{IPv4, IPv6}

// Of returns the family of a; an IPv4-mapped IPv6 address counts as IPv4.
func Of(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// OfPrefix returns the family of p.
func OfPrefix(p netip.Prefix) Family { return Of(p.Addr()) }

// Has reports whether a is of this family.
func (f Family) Has(a netip.Addr) bool { return Of(a) == f }

// String returns "IPv4" or "IPv6".
func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Bits is the length of an address of this family.
func (f Family) Bits() int {
	if f == IPv6 {
		return 128
	}
	return 32
}
