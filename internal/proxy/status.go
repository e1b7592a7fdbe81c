package proxy

import (
	"net/netip"

	"github.com/kube-routerd/kube-routerd/internal/config"
)

// Details is what `kube-routerd status` shows for the service proxy.
type Details struct {
	Services          int          `json:"services"`
	VirtualServices   int          `json:"virtualServices"`
	Destinations      int          `json:"destinations"`
	Draining          int          `json:"draining"`
	NodePortAddresses []netip.Addr `json:"nodePortAddresses"`
	LastSyncWrites    int          `json:"lastSyncWrites"`
	// RefusedAddresses lists by Service ("namespace/name") the external and
	// load-balancer IPs outside the configured ranges, which are not programmed.
	RefusedAddresses map[string][]string `json:"refusedAddresses,omitempty"`
	// DSRPods lists by local endpoint address the DSR virtual addresses its pod's
	// tunnel holds.
	DSRPods map[string][]string `json:"dsrPods,omitempty"`
	// DSRMissingPods are local DSR endpoints with no pod network namespace found.
	DSRMissingPods []string `json:"dsrMissingPods,omitempty"`
	// IPVSTimeouts are the kernel's at the last full sync, configured or not.
	IPVSTimeouts TimeoutDetails `json:"ipvsTimeouts"`
	// HealthCheckNodePorts are the externalTrafficPolicy Local Services' probes.
	HealthCheckNodePorts []HealthCheckPort `json:"healthCheckNodePorts,omitempty"`
}

// TimeoutDetails are IPVS's connection timeouts as `kube-routerd status` shows them.
type TimeoutDetails struct {
	TCP    config.Duration `json:"tcp"`
	TCPFin config.Duration `json:"tcpFin"`
	UDP    config.Duration `json:"udp"`
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
	refused := c.refusedDetails()
	c.detailsLock.Lock()
	c.details = Details{
		Services:          len(c.desired.byService),
		VirtualServices:   c.desired.services,
		Destinations:      c.desired.endpoints,
		Draining:          len(c.rec.draining),
		NodePortAddresses: node.NodePortAddrs,
		LastSyncWrites:    c.writes(),
		RefusedAddresses:  refused,
		IPVSTimeouts: TimeoutDetails{TCP: config.Duration{Duration: c.rec.kernelTimeouts.TCP},
			TCPFin: config.Duration{Duration: c.rec.kernelTimeouts.TCPFin}, UDP: config.Duration{Duration: c.rec.kernelTimeouts.UDP}},
	}
	c.details.HealthCheckNodePorts = c.hcs.details()
	c.details.DSRPods, c.details.DSRMissingPods = c.rec.dsr.details()
	c.detailsLock.Unlock()
}
