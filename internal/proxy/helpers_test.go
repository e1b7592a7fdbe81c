package proxy

import (
	"net/netip"

	"k8s.io/apimachinery/pkg/util/intstr"
)

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func intstrName(s string) intstr.IntOrString { return intstr.FromString(s) }
