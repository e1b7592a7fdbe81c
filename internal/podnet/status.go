package podnet

import "github.com/kube-routerd/kube-routerd/internal/k8s"

// Details is what `kube-routerd status` shows of the pod network.
type Details struct {
	CNIFile  string   `json:"cniFile"`
	CNIState CNIState `json:"cniState"`
	// Shadowed lists CNI config files that sort before ours, so the container
	// runtime uses them instead.
	Shadowed []string `json:"shadowed,omitempty"`
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	MTU      int      `json:"mtu"`
	LinkMTU  int      `json:"linkMTU"`
	// Egress lists the families whose pod traffic leaving the cluster is masqueraded,
	// with the number of cluster destinations exempt from it.
	Egress []EgressDetails `json:"egress,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// EgressDetails is pod egress masquerading of one family.
type EgressDetails struct {
	Family              string   `json:"family"`
	Sources             []string `json:"sources"`
	ClusterDestinations int      `json:"clusterDestinations"`
}

// Details implements daemon.StatusReporter.
func (c *Controller) Details() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.details
}

func (c *Controller) setDetails(want desired, self k8s.NodeAddresses, err error) {
	d := Details{CNIFile: c.cni.Path, CNIState: c.lastCNI, MTU: want.MTU, LinkMTU: c.linkMTU}
	if c.lastCNI == CNIWritten {
		if shadowed, serr := c.cni.Shadowing(); serr == nil {
			d.Shadowed = shadowed
		}
	}
	for _, p := range self.PodCIDRs {
		d.PodCIDRs = append(d.PodCIDRs, p.String())
	}
	for _, f := range want.Egress {
		e := EgressDetails{Family: f.Family.String(), ClusterDestinations: len(f.ClusterDestinations)}
		for _, s := range f.Sources {
			e.Sources = append(e.Sources, s.String())
		}
		d.Egress = append(d.Egress, e)
	}
	if err != nil {
		d.Error = err.Error()
	}
	c.mu.Lock()
	c.details = d
	c.mu.Unlock()
}
