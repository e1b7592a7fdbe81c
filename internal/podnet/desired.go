// Package podnet gives the node's own pods a working network besides their routes:
// the CNI configuration the container runtime hands to the standard bridge plugin,
// the pods' MTU, and masquerading of pod traffic that leaves the cluster.
package podnet

import (
	"encoding/json"
	"net/netip"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// networkName is the "name" of the CNI network kube-routerd writes. A conflist at the
// configured path with another name is someone else's and is left alone.
const networkName = "kube-routerd"

// Options are the settings the desired state depends on.
type Options struct {
	Config config.PodNetwork
	// ClusterCIDRs is service_proxy.cluster_cidrs: destinations never masqueraded to.
	ClusterCIDRs []netip.Prefix
	// MayTunnel says the routing overlay can put pod traffic into tunnels, whose
	// headers (those of Encap) the pods' MTU must leave room for.
	MayTunnel bool
	Encap     route.Encap
}

// desired is what the node should have, as plain data.
type desired struct {
	// CNI is the conflist to write; nil when writing is off or the node has no pod
	// CIDR yet.
	CNI []byte
	// MTU is the pods' MTU in CNI.
	MTU int
	// Egress holds the masquerade inputs per family (only families with a local pod
	// CIDR); nil when masquerading is off.
	Egress []egressFamily
}

// egressFamily is what pod egress masquerading needs for one IP family: traffic from
// Sources to anything outside ClusterDestinations leaves with the node's address.
type egressFamily struct {
	Family  ipfamily.Family
	Sources []netip.Prefix
	// ClusterDestinations are every node's pod CIDRs and addresses, the cluster CIDRs
	// and the service CIDRs of this family, as hash:net entries, sorted and unique.
	ClusterDestinations []string
}

// podMTU is the MTU pods get: the configured one, or the node's link MTU less the
// largest tunnel header the overlay may add for the families the pods use.
func podMTU(opts Options, linkMTU int, podCIDRs []netip.Prefix) int {
	if opts.Config.MTU != 0 {
		return opts.Config.MTU
	}
	if !opts.MayTunnel {
		return linkMTU
	}
	overhead := 0
	for _, p := range podCIDRs {
		overhead = max(overhead, opts.Encap.Overhead(p.Addr().Is6()))
	}
	return linkMTU - overhead
}

// compute returns the desired state of this node (self) in a cluster of nodes
// (self included), with the node's link MTU.
func compute(opts Options, self k8s.NodeAddresses, nodes []k8s.NodeAddresses, linkMTU int) desired {
	d := desired{MTU: podMTU(opts, linkMTU, self.PodCIDRs)}
	if opts.Config.WriteCNIConfig && len(self.PodCIDRs) > 0 {
		d.CNI = Conflist(opts.Config.Bridge, d.MTU, self.PodCIDRs)
	}
	if opts.Config.MasqueradeEgress {
		d.Egress = egress(opts, self, nodes)
	}
	return d
}

func egress(opts Options, self k8s.NodeAddresses, nodes []k8s.NodeAddresses) []egressFamily {
	var out []egressFamily
	for _, f := range ipfamily.Both {
		ofFamily := func(p netip.Prefix) bool { return ipfamily.OfPrefix(p) == f }
		var sources []netip.Prefix
		for _, p := range self.PodCIDRs {
			if ofFamily(p) {
				sources = append(sources, p)
			}
		}
		if len(sources) == 0 {
			continue
		}
		var dst []string
		add := func(p netip.Prefix) {
			if p.IsValid() && ofFamily(p) {
				dst = append(dst, p.Masked().String())
			}
		}
		for _, n := range nodes {
			for _, p := range n.PodCIDRs {
				add(p)
			}
			for _, a := range []netip.Addr{n.IPv4, n.IPv6} {
				if a.IsValid() {
					add(netip.PrefixFrom(a, a.BitLen()))
				}
			}
		}
		for _, p := range opts.ClusterCIDRs {
			add(p)
		}
		for _, p := range opts.Config.ServiceCIDRs {
			add(p.Prefix)
		}
		slices.Sort(dst)
		out = append(out, egressFamily{Family: f, Sources: sources, ClusterDestinations: slices.Compact(dst)})
	}
	return out
}

// Conflist renders the CNI configuration: the bridge plugin on bridge, acting as the
// pods' gateway, with hairpin mode so a pod reaches itself through a Service;
// host-local IPAM with one range per pod CIDR; portmap for hostPort.
func Conflist(bridge string, mtu int, podCIDRs []netip.Prefix) []byte {
	ranges := make([][]map[string]string, 0, len(podCIDRs))
	for _, p := range podCIDRs {
		ranges = append(ranges, []map[string]string{{"subnet": p.String()}})
	}
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       networkName,
		"plugins": []any{
			map[string]any{
				"type":             "bridge",
				"bridge":           bridge,
				"isDefaultGateway": true,
				"hairpinMode":      true,
				"mtu":              mtu,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": ranges,
				},
			},
			map[string]any{
				"type":         "portmap",
				"snat":         true,
				"capabilities": map[string]bool{"portMappings": true},
			},
		},
	}
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		panic(err) // maps of strings, numbers and bools always marshal
	}
	return append(out, '\n')
}
