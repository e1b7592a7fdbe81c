package config

import (
	"fmt"
	"net/netip"
	"time"
)

// ServiceProxy configures the IPVS service proxy.
type ServiceProxy struct {
	Enabled bool `toml:"enabled"`
	// SyncPeriod is the interval of the full resync that repairs drift.
	SyncPeriod Duration `toml:"sync_period"`
	// MinSyncInterval is the shortest time between two syncs; events in between coalesce.
	MinSyncInterval Duration `toml:"min_sync_interval"`
	// Scheduler is the default IPVS scheduler (rr, wrr, lc, wlc, dh, sh, mh, ...).
	Scheduler string `toml:"scheduler"`
	// MasqueradeAll SNATs all traffic to services, losing the client source IP.
	MasqueradeAll bool `toml:"masquerade_all"`
	// ClusterCIDRs are the pod networks of the cluster; traffic from elsewhere to a
	// service is masqueraded (unless externalTrafficPolicy: Local keeps the source).
	// Empty, every connection to a service is masqueraded.
	ClusterCIDRs []Prefix `toml:"cluster_cidrs"`
	// NodePortAddresses limits NodePorts to the Node object's InternalIP/ExternalIP
	// addresses inside these CIDRs; empty means all of them.
	NodePortAddresses []Prefix `toml:"nodeport_addresses"`
	// DummyInterface holds the service VIPs so the kernel accepts traffic to them.
	DummyInterface string `toml:"dummy_interface"`
	// GracefulTerminationTimeout bounds how long a terminating endpoint is drained.
	GracefulTerminationTimeout Duration `toml:"graceful_termination_timeout"`
	// IPVSTCPTimeout, IPVSTCPFinTimeout and IPVSUDPTimeout are how long IPVS keeps an
	// idle TCP connection, a TCP connection after its FIN and a UDP flow; 0 leaves
	// the kernel's value (900s, 120s and 300s unless something changed them).
	IPVSTCPTimeout    Duration `toml:"ipvs_tcp_timeout"`
	IPVSTCPFinTimeout Duration `toml:"ipvs_tcpfin_timeout"`
	IPVSUDPTimeout    Duration `toml:"ipvs_udp_timeout"`
	// ExternalIPRanges are the CIDRs a Service's spec.externalIPs may come from; the
	// others are not programmed. Empty allows none: any Service author could
	// otherwise capture traffic to any address (CVE-2020-8554).
	ExternalIPRanges []Prefix `toml:"external_ip_ranges"`
	// LoadBalancerIPRanges, when not empty, are the CIDRs load-balancer ingress IPs
	// may come from; empty allows every one.
	LoadBalancerIPRanges []Prefix `toml:"loadbalancer_ip_ranges"`
	// HealthzListen is host:port of the node's proxy health endpoint (kube-proxy's
	// healthz), which load balancers probe for externalTrafficPolicy Cluster
	// Services; empty disables it.
	HealthzListen HostPort `toml:"healthz_listen"`
}

// ServiceIPRanges are where Services' external and load-balancer IPs may be.
type ServiceIPRanges struct {
	External, LoadBalancer []Prefix
}

// AllowsExternal reports whether an externalIP at a may be programmed (none when no
// range is configured).
func (r ServiceIPRanges) AllowsExternal(a netip.Addr) bool { return inAnyPrefix(r.External, a) }

// AllowsLoadBalancer reports whether a load-balancer ingress IP at a may be programmed
// (every one when no range is configured).
func (r ServiceIPRanges) AllowsLoadBalancer(a netip.Addr) bool {
	return len(r.LoadBalancer) == 0 || inAnyPrefix(r.LoadBalancer, a)
}

func inAnyPrefix(ps []Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// IPRanges returns the configured external and load-balancer IP ranges.
func (c ServiceProxy) IPRanges() ServiceIPRanges {
	return ServiceIPRanges{External: c.ExternalIPRanges, LoadBalancer: c.LoadBalancerIPRanges}
}

// MaxIPVSTimeout is the longest IPVS timeout every kernel accepts: the kernel keeps
// it as an int count of jiffies, INT_MAX/HZ seconds at the highest HZ (1000).
const MaxIPVSTimeout = 2147483 * time.Second

func defaultServiceProxy() ServiceProxy {
	return ServiceProxy{
		Enabled:                    true,
		SyncPeriod:                 Duration{5 * time.Minute},
		MinSyncInterval:            Duration{100 * time.Millisecond},
		Scheduler:                  "rr",
		DummyInterface:             "kube-dummy-if",
		GracefulTerminationTimeout: Duration{30 * time.Second},
		// kube-proxy's default, where cloud load balancers look.
		HealthzListen: "0.0.0.0:10256",
	}
}

// IPVSSchedulers are the scheduler names the Linux kernel knows.
var IPVSSchedulers = map[string]bool{
	"rr": true, "wrr": true, "lc": true, "wlc": true, "lblc": true, "lblcr": true,
	"dh": true, "sh": true, "sed": true, "nq": true, "fo": true, "ovf": true, "mh": true,
}

func (c ServiceProxy) validate(v *validator) {
	if !IPVSSchedulers[c.Scheduler] {
		v.add("service_proxy.scheduler", fmt.Sprintf("unknown IPVS scheduler %q", c.Scheduler))
	}
	if c.SyncPeriod.Duration < time.Second {
		v.add("service_proxy.sync_period", "must be at least 1s")
	}
	if c.MinSyncInterval.Duration > c.SyncPeriod.Duration {
		v.add("service_proxy.min_sync_interval", "must not exceed sync_period")
	}
	if c.GracefulTerminationTimeout.Duration < 0 {
		v.add("service_proxy.graceful_termination_timeout", "must not be negative")
	}
	for _, t := range []struct {
		key string
		d   time.Duration
	}{
		{"service_proxy.ipvs_tcp_timeout", c.IPVSTCPTimeout.Duration},
		{"service_proxy.ipvs_tcpfin_timeout", c.IPVSTCPFinTimeout.Duration},
		{"service_proxy.ipvs_udp_timeout", c.IPVSUDPTimeout.Duration},
	} {
		switch {
		case t.d < 0:
			v.add(t.key, "must not be negative")
		case t.d > MaxIPVSTimeout:
			v.add(t.key, fmt.Sprintf("%s is too long: the kernel takes at most %s", t.d, MaxIPVSTimeout))
		case t.d%time.Second != 0:
			v.add(t.key, fmt.Sprintf("%s is not a whole number of seconds, which is all IPVS keeps", t.d))
		}
	}
	if err := c.HealthzListen.Validate(); err != nil {
		v.add("service_proxy.healthz_listen", err.Error())
	}
	if c.DummyInterface == "" || len(c.DummyInterface) > 15 {
		v.add("service_proxy.dummy_interface", fmt.Sprintf("invalid interface name %q (1-15 characters)", c.DummyInterface))
	}
}
