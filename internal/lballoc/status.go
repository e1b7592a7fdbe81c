package lballoc

import (
	"maps"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Details is what `kube-routerd status` shows of the allocator. A node standing by
// shows the allocation of its last term, if it had one.
type Details struct {
	// Lease is namespace/name of the Lease; Leader its last observed holder.
	Lease   string `json:"lease"`
	Leader  string `json:"leader,omitempty"`
	Leading bool   `json:"leading"`
	// Pools are each family's pools with their address counts.
	Pools []PoolDetails `json:"pools,omitempty"`
	// Services maps namespace/name to the addresses it was given.
	Services map[string][]string `json:"services,omitempty"`
	// Held are pool addresses held by Services the allocator does not answer.
	Held     map[string]string `json:"held,omitempty"`
	Problems []Problem         `json:"problems,omitempty"`
}

// PoolDetails are one family's pools.
type PoolDetails struct {
	Family string   `json:"family"`
	Pools  []string `json:"pools"`
	Size   float64  `json:"size"`
	Used   int      `json:"used"`
}

// Details implements daemon.StatusReporter.
func (c *Controller) Details() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.details
	d.Services = maps.Clone(d.Services)
	d.Held = maps.Clone(d.Held)
	d.Pools = slices.Clone(d.Pools)
	d.Problems = slices.Clone(d.Problems)
	return d
}

func (c *Controller) setLeader(identity string) {
	c.mu.Lock()
	c.details.Leader = identity
	c.mu.Unlock()
}

func (c *Controller) setLeading(leading bool) {
	c.mu.Lock()
	c.details.Leading = leading
	c.mu.Unlock()
}

func (c *Controller) setAllocation(a Allocation) {
	services := make(map[string][]string, len(a.Status))
	for key, ips := range a.Status {
		if len(ips) == 0 {
			continue
		}
		for _, ip := range ips {
			services[key] = append(services[key], ip.String())
		}
	}
	held := make(map[string]string, len(a.Held))
	for ip, key := range a.Held {
		held[ip.String()] = key
	}
	var pools []PoolDetails
	for _, f := range ipfamily.Both {
		if len(c.params.Pools[f]) == 0 {
			continue
		}
		pd := PoolDetails{Family: f.String(), Size: a.Size[f], Used: a.Used[f]}
		for _, p := range c.params.Pools[f] {
			pd.Pools = append(pd.Pools, p.String())
		}
		pools = append(pools, pd)
	}
	c.mu.Lock()
	c.details.Services, c.details.Held, c.details.Pools, c.details.Problems = services, held, pools, a.Problems
	c.mu.Unlock()
}
