package config

import (
	"fmt"
	"path/filepath"
	"strings"
)

// PodNetwork configures what a node needs for its own pods besides routes: the CNI
// configuration the container runtime reads, the pods' MTU and masquerading of pod
// traffic that leaves the cluster.
type PodNetwork struct {
	// WriteCNIConfig writes CNIConfigFile from this Node's spec.podCIDRs.
	WriteCNIConfig bool `toml:"write_cni_config"`
	// CNIConfigFile is where the conflist goes; a file there that kube-routerd did not
	// write is never overwritten.
	CNIConfigFile string `toml:"cni_config_file"`
	// Bridge is the Linux bridge the CNI bridge plugin attaches pods to.
	Bridge string `toml:"bridge"`
	// MTU of the pods' interfaces; 0 derives it from the node's link MTU less the
	// tunnel overhead when the routing overlay may tunnel.
	MTU int `toml:"mtu"`
	// MasqueradeEgress SNATs pod traffic to destinations outside the cluster to the
	// node's address.
	MasqueradeEgress bool `toml:"masquerade_egress"`
	// ServiceCIDRs are the cluster's Service ranges; like every node's pod CIDRs,
	// node addresses and service_proxy.cluster_cidrs, they are never masqueraded to.
	ServiceCIDRs []Prefix `toml:"service_cidrs"`
}

func defaultPodNetwork() PodNetwork {
	return PodNetwork{
		WriteCNIConfig:   true,
		CNIConfigFile:    "/etc/cni/net.d/10-kube-routerd.conflist",
		Bridge:           "kube-bridge",
		MasqueradeEgress: true,
	}
}

// Enabled reports whether any pod network duty is switched on.
func (c PodNetwork) Enabled() bool { return c.WriteCNIConfig || c.MasqueradeEgress }

func (c PodNetwork) validate(v *validator) {
	if c.WriteCNIConfig {
		if !filepath.IsAbs(c.CNIConfigFile) || !strings.HasSuffix(c.CNIConfigFile, ".conflist") {
			v.add("pod_network.cni_config_file", fmt.Sprintf("%q must be an absolute path ending in .conflist", c.CNIConfigFile))
		}
	}
	if c.Bridge == "" || len(c.Bridge) > 15 || strings.ContainsAny(c.Bridge, "/ \t:") {
		v.add("pod_network.bridge", fmt.Sprintf("invalid interface name %q (1-15 characters, no '/', ':' or spaces)", c.Bridge))
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		v.add("pod_network.mtu", fmt.Sprintf("invalid MTU %d (want 0 for automatic, or 576-65535)", c.MTU))
	}
}
