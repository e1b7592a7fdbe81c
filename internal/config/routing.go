package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Routing configures the BGP routing controller.
type Routing struct {
	Enabled bool `toml:"enabled"`
	// ServiceIPRanges, when set, are the service proxy's external_ip_ranges and
	// loadbalancer_ip_ranges: an address the proxy refuses to program is not
	// advertised either. Set from [service_proxy] when the proxy runs, never read
	// from [routing].
	ServiceIPRanges *ServiceIPRanges `toml:"-"`
	// ASN is the cluster's AS number, used for the iBGP mesh between nodes.
	ASN int64 `toml:"asn"`
	// RouterID overrides the BGP router id; empty means the node's InternalIP (IPv4).
	RouterID Addr `toml:"router_id"`
	// ListenPort is the BGP port the speaker listens on.
	ListenPort int `toml:"listen_port"`
	// Overlay chooses when pod traffic to another node is tunnelled (IPIP, ip6ip6):
	// "always", "cross-subnet" (only to nodes outside our subnet) or "never".
	Overlay string `toml:"overlay"`
	// HoldTime is the BGP hold time offered to peers.
	HoldTime Duration `toml:"hold_time"`
	// GracefulRestart keeps peers' routes to us while the daemon restarts.
	GracefulRestart bool `toml:"graceful_restart"`
	// GracefulRestartTime is how long peers keep our routes after we go away.
	GracefulRestartTime Duration `toml:"graceful_restart_time"`
	// NodeMesh peers every node with every other node (iBGP full mesh).
	NodeMesh bool `toml:"node_mesh"`
	// SyncPeriod is the interval of the full resync that repairs drift.
	SyncPeriod Duration `toml:"sync_period"`
	// MinSyncInterval is the shortest time between two syncs; events in between coalesce.
	MinSyncInterval Duration `toml:"min_sync_interval"`
	// What we announce to external peers.
	AdvertisePodCIDR         bool `toml:"advertise_pod_cidr"`
	AdvertiseClusterIPs      bool `toml:"advertise_cluster_ips"`
	AdvertiseExternalIPs     bool `toml:"advertise_external_ips"`
	AdvertiseLoadBalancerIPs bool `toml:"advertise_loadbalancer_ips"`
	// Communities ("65000:100") are attached to every route sent to external peers.
	Communities []string `toml:"communities"`
	// ProtectedCIDRs are ranges (service CIDRs, the cluster pod range) that external
	// peers may not announce routes into; node pod CIDRs and advertised Service IPs are
	// always protected.
	ProtectedCIDRs []Prefix `toml:"protected_cidrs"`
	// Peers are external BGP routers every node peers with.
	Peers []Peer `toml:"peers"`
}

// Peer is one external BGP neighbour.
type Peer struct {
	Address      Addr     `toml:"address"`
	ASN          int64    `toml:"asn"`
	Password     string   `toml:"password"`
	HoldTime     Duration `toml:"hold_time"`
	Multihop     int      `toml:"multihop"` // eBGP TTL; 0 means directly connected
	LocalAddress Addr     `toml:"local_address"`
	Port         int      `toml:"port"`
	// MaxPrefixes tears the session down when the peer announces more prefixes than
	// this (a leak or a misconfigured router); 0 means no limit.
	MaxPrefixes int64 `toml:"max_prefixes"`
}

func defaultRouting() Routing {
	return Routing{
		Enabled:             true,
		ASN:                 64512,
		ListenPort:          179,
		Overlay:             "cross-subnet",
		HoldTime:            Duration{90 * time.Second},
		GracefulRestart:     true,
		GracefulRestartTime: Duration{90 * time.Second},
		NodeMesh:            true,
		SyncPeriod:          Duration{5 * time.Minute},
		MinSyncInterval:     Duration{100 * time.Millisecond},
		AdvertisePodCIDR:    true,
		// Empty, not nil: a file that writes "communities = []" then equals the default.
		Communities:    []string{},
		ProtectedCIDRs: []Prefix{},
	}
}

func (c Routing) validate(v *validator) {
	if !ValidASN(c.ASN) {
		v.add("routing.asn", fmt.Sprintf("invalid AS number %d (want 1-4294967294)", c.ASN))
	}
	if c.RouterID.IsValid() && !c.RouterID.Is4() {
		v.add("routing.router_id", fmt.Sprintf("router id %s must be an IPv4 address", c.RouterID))
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		v.add("routing.listen_port", fmt.Sprintf("invalid port %d: must be 1-65535", c.ListenPort))
	}
	switch c.Overlay {
	case "always", "cross-subnet", "never":
	default:
		v.add("routing.overlay", fmt.Sprintf("unknown overlay mode %q (want always, cross-subnet or never)", c.Overlay))
	}
	checkHoldTime(v, "routing.hold_time", c.HoldTime)
	if c.SyncPeriod.Duration < time.Second {
		v.add("routing.sync_period", "must be at least 1s")
	}
	if c.MinSyncInterval.Duration > c.SyncPeriod.Duration {
		v.add("routing.min_sync_interval", "must not exceed sync_period")
	}
	if c.GracefulRestart && (c.GracefulRestartTime.Duration < time.Second || c.GracefulRestartTime.Duration > 4095*time.Second) {
		v.add("routing.graceful_restart_time", "must be 1s-4095s")
	}
	for i, comm := range c.Communities {
		if _, err := ParseCommunity(comm); err != nil {
			v.add(fmt.Sprintf("routing.communities[%d]", i), err.Error())
		}
	}
	for i, p := range c.Peers {
		key := fmt.Sprintf("routing.peers[%d]", i)
		if !p.Address.IsValid() {
			v.add(key+".address", "is required")
		}
		if !ValidASN(p.ASN) {
			v.add(key+".asn", fmt.Sprintf("invalid AS number %d (want 1-4294967294)", p.ASN))
		}
		if p.HoldTime.Duration != 0 {
			checkHoldTime(v, key+".hold_time", p.HoldTime)
		}
		if p.Multihop < 0 || p.Multihop > 255 {
			v.add(key+".multihop", fmt.Sprintf("invalid TTL %d (want 0-255)", p.Multihop))
		}
		if p.Port != 0 && (p.Port < 1 || p.Port > 65535) {
			v.add(key+".port", fmt.Sprintf("invalid port %d: must be 1-65535", p.Port))
		}
		if p.MaxPrefixes < 0 || p.MaxPrefixes > 1<<32-1 {
			v.add(key+".max_prefixes", fmt.Sprintf("invalid prefix limit %d (want 0-4294967295, 0 for none)", p.MaxPrefixes))
		}
		if p.LocalAddress.IsValid() && p.Address.IsValid() && p.LocalAddress.Is4() != p.Address.Is4() {
			v.add(key+".local_address", "must be of the same IP family as address")
		}
	}
}

// checkHoldTime enforces RFC 4271: zero (no keepalives) or at least 3 seconds.
func checkHoldTime(v *validator, key string, d Duration) {
	if d.Duration != 0 && d.Duration < 3*time.Second {
		v.add(key, fmt.Sprintf("hold time %s must be 0 or at least 3s", d.Duration))
	}
	if d.Duration > 65535*time.Second {
		v.add(key, fmt.Sprintf("hold time %s exceeds 65535s", d.Duration))
	}
}

// ParseCommunity parses a standard BGP community written "ASN:value" (each 0-65535).
func ParseCommunity(s string) (uint32, error) {
	hi, lo, ok := strings.Cut(s, ":")
	a, errA := strconv.ParseUint(hi, 10, 16)
	b, errB := strconv.ParseUint(lo, 10, 16)
	if !ok || errA != nil || errB != nil {
		return 0, fmt.Errorf("invalid community %q (want ASN:value, each 0-65535)", s)
	}
	return uint32(a)<<16 | uint32(b), nil
}
