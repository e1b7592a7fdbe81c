package proxy

import "net/netip"

// Details is what `kube-routerd status` shows for the service proxy.
type Details struct {
	Services          int          `json:"services"`
	VirtualServices   int          `json:"virtualServices"`
	Destinations      int          `json:"destinations"`
	Draining          int          `json:"draining"`
	NodePortAddresses []netip.Addr `json:"nodePortAddresses"`
	LastSyncWrites    int          `json:"lastSyncWrites"`
}

// Details implements daemon.StatusReporter.
func (c *Controller) Details() any {
	c.detailsLock.Lock()
	defer c.detailsLock.Unlock()
	return c.details
}

func (c *Controller) publish(node Node) {
	c.metrics.services.Set(float64(c.desired.services))
	c.metrics.endpoints.Set(float64(c.desired.endpoints))
	c.metrics.draining.Set(float64(len(c.rec.draining)))
	c.detailsLock.Lock()
	c.details = Details{
		Services:          len(c.desired.byService),
		VirtualServices:   c.desired.services,
		Destinations:      c.desired.endpoints,
		Draining:          len(c.rec.draining),
		NodePortAddresses: node.NodePortAddrs,
		LastSyncWrites:    c.writes(),
	}
	c.detailsLock.Unlock()
}
