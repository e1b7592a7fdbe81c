package k8s

import (
	"log/slog"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
)

// NodeAddresses are the parts of a Node that place it on the network: its first
// InternalIP of each family and its pod CIDRs.
type NodeAddresses struct {
	// IPv4 and IPv6 are the node's first usable InternalIP of each family.
	IPv4, IPv6 netip.Addr
	// PodCIDRs are spec.podCIDRs (or the older spec.podCIDR), masked.
	PodCIDRs []netip.Prefix
}

// ParseNodeAddresses reads a Node's InternalIPs and pod CIDRs. Values that do not
// parse are logged with the node's name and skipped; the rest still count.
func ParseNodeAddresses(n *corev1.Node, log *slog.Logger) NodeAddresses {
	var out NodeAddresses
	log = log.With("node", n.Name)
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		switch {
		case err != nil:
			log.Warn("ignoring invalid InternalIP", "address", a.Address)
		case ip.Is4() && !out.IPv4.IsValid():
			out.IPv4 = ip
		case ip.Is6() && !ip.Is4In6() && ip.IsGlobalUnicast() && !out.IPv6.IsValid():
			out.IPv6 = ip
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			log.Warn("ignoring invalid pod CIDR", "podCIDR", c)
			continue
		}
		if p.Addr().Is4In6() {
			log.Warn("ignoring IPv4-mapped pod CIDR", "podCIDR", c)
			continue
		}
		out.PodCIDRs = append(out.PodCIDRs, p.Masked())
	}
	return out
}
