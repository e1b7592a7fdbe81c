package netpol

import (
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Details is what `kube-routerd status` shows about the policy controller.
type Details struct {
	Policies  int                                 `json:"policies"`
	Pods      int                                 `json:"isolatedPods"`
	Rules     int                                 `json:"rules"`
	Sets      int                                 `json:"sets"`
	Entries   int                                 `json:"setEntries"`
	Problems  map[string][]string                 `json:"problems,omitempty"`
	LastApply map[ipfamily.Family]netfilter.Stats `json:"lastApplyByFamily,omitempty"`
}

// Details implements daemon.StatusReporter.
func (c *Controller) Details() any {
	c.detailsMu.Lock()
	defer c.detailsMu.Unlock()
	return c.details
}
