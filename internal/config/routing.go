package config

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
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
	// OverlayEncap is how tunnelled traffic travels: "ipip" (IPIP and ip6ip6), "fou"
	// (the same inside UDP) or "vxlan".
	OverlayEncap string `toml:"overlay_encap"`
	// OverlayEncapPort is the UDP port of FOU or VXLAN; 0 means 5555 for FOU
	// (kube-router's) and 4789 for VXLAN (IANA's).
	OverlayEncapPort int `toml:"overlay_encap_port"`
	// VXLANVNI is the VXLAN network identifier of the overlay.
	VXLANVNI int `toml:"vxlan_vni"`
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
	// Communities ("65000:100", a 32-bit number or a well-known name such as
	// "no-export") are attached to every route sent to external peers.
	Communities []string `toml:"communities"`
	// ProtectedCIDRs are ranges (service CIDRs, the cluster pod range) that external
	// peers may not announce routes into; node pod CIDRs and advertised Service IPs are
	// always protected.
	ProtectedCIDRs []Prefix `toml:"protected_cidrs"`
	// Peers are external BGP routers every node peers with.
	Peers []Peer `toml:"peers"`
	// BFDMinTxInterval, BFDMinRxInterval and BFDMultiplier are the BFD timers of peers
	// with bfd = true: a link is dead after multiplier intervals without a packet.
	BFDMinTxInterval Duration `toml:"bfd_min_tx_interval"`
	BFDMinRxInterval Duration `toml:"bfd_min_rx_interval"`
	BFDMultiplier    int      `toml:"bfd_multiplier"`
}

// Peer is one external BGP neighbour.
type Peer struct {
	Address  Addr   `toml:"address"`
	ASN      int64  `toml:"asn"`
	Password string `toml:"password"`
	// PasswordFile holds the password instead of Password (a trailing newline is
	// dropped); it may be readable by its owner only.
	PasswordFile string   `toml:"password_file"`
	HoldTime     Duration `toml:"hold_time"`
	Multihop     int      `toml:"multihop"` // eBGP TTL; 0 means directly connected
	LocalAddress Addr     `toml:"local_address"`
	Port         int      `toml:"port"`
	// MaxPrefixes tears the session down when the peer announces more prefixes than
	// this (a leak or a misconfigured router); 0 means no limit.
	MaxPrefixes int64 `toml:"max_prefixes"`
	// BFD runs single-hop BFD (RFC 5880, 5881) with the peer and resets the BGP
	// session as soon as BFD finds the link dead.
	BFD bool `toml:"bfd"`
}

func defaultRouting() Routing {
	return Routing{
		Enabled:             true,
		ASN:                 64512,
		ListenPort:          179,
		Overlay:             "cross-subnet",
		OverlayEncap:        "ipip",
		VXLANVNI:            1,
		HoldTime:            Duration{90 * time.Second},
		GracefulRestart:     true,
		GracefulRestartTime: Duration{90 * time.Second},
		NodeMesh:            true,
		SyncPeriod:          Duration{5 * time.Minute},
		MinSyncInterval:     Duration{100 * time.Millisecond},
		AdvertisePodCIDR:    true,
		// Empty, not nil: a file that writes "communities = []" then equals the default.
		Communities:      []string{},
		ProtectedCIDRs:   []Prefix{},
		BFDMinTxInterval: Duration{300 * time.Millisecond},
		BFDMinRxInterval: Duration{300 * time.Millisecond},
		BFDMultiplier:    3,
	}
}

// EncapPort is the UDP port of the overlay's encapsulation: the configured one, or
// the encapsulation's own (none for IPIP).
func (c Routing) EncapPort() uint16 {
	if c.OverlayEncapPort != 0 {
		return uint16(c.OverlayEncapPort)
	}
	switch c.OverlayEncap {
	case "fou":
		return DefaultFOUPort
	case "vxlan":
		return DefaultVXLANPort
	}
	return 0
}

// FOUPort is the port FOU uses, or would use, with this configuration.
func (c Routing) FOUPort() uint16 {
	if c.OverlayEncapPort != 0 {
		return uint16(c.OverlayEncapPort)
	}
	return DefaultFOUPort
}

// Default UDP ports of the overlay encapsulations: kube-router's for FOU, IANA's for
// VXLAN.
const (
	DefaultFOUPort   = 5555
	DefaultVXLANPort = 4789
)

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
	switch c.OverlayEncap {
	case "ipip", "fou", "vxlan":
	default:
		v.add("routing.overlay_encap", fmt.Sprintf("unknown encapsulation %q (want ipip, fou or vxlan)", c.OverlayEncap))
	}
	if c.OverlayEncapPort != 0 && (c.OverlayEncapPort < 1024 || c.OverlayEncapPort > 65535) {
		v.add("routing.overlay_encap_port", fmt.Sprintf("invalid port %d: must be 1024-65535, or 0 for the encapsulation's own", c.OverlayEncapPort))
	}
	if c.VXLANVNI < 1 || c.VXLANVNI > 1<<24-1 {
		v.add("routing.vxlan_vni", fmt.Sprintf("invalid VNI %d: must be 1-16777215", c.VXLANVNI))
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
	for _, d := range []struct {
		key string
		val Duration
	}{{"routing.bfd_min_tx_interval", c.BFDMinTxInterval}, {"routing.bfd_min_rx_interval", c.BFDMinRxInterval}} {
		if d.val.Duration < 10*time.Millisecond || d.val.Duration > 10*time.Second {
			v.add(d.key, fmt.Sprintf("BFD interval %s must be 10ms-10s", d.val.Duration))
		}
	}
	if c.BFDMultiplier < 1 || c.BFDMultiplier > 255 {
		v.add("routing.bfd_multiplier", fmt.Sprintf("invalid BFD detect multiplier %d (want 1-255)", c.BFDMultiplier))
	}
	for i, p := range c.Peers {
		key := fmt.Sprintf("routing.peers[%d]", i)
		if p.BFD && p.Multihop > 0 {
			v.add(key+".bfd", "BFD runs with directly connected peers only; unset multihop or bfd")
		}
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
		if p.PasswordFile != "" {
			if p.Password != "" {
				v.add(key+".password_file", "set either password or password_file, not both")
			} else if _, err := ReadSecretFile(p.PasswordFile); err != nil {
				v.add(key+".password_file", err.Error())
			}
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

// ParseCommunity parses a standard BGP community written "ASN:value" (each 0-65535),
// as one 32-bit number, or as a well-known name ("no-export", "no-advertise", ...).
func ParseCommunity(s string) (uint32, error) {
	if wk, ok := bgp.WellKnownCommunityValueMap[strings.ToLower(s)]; ok {
		return uint32(wk), nil
	}
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	hi, lo, ok := strings.Cut(s, ":")
	a, errA := strconv.ParseUint(hi, 10, 16)
	b, errB := strconv.ParseUint(lo, 10, 16)
	if !ok || errA != nil || errB != nil {
		return 0, fmt.Errorf("invalid community %q (want ASN:value with each 0-65535, a 32-bit number or a well-known name such as no-export)", s)
	}
	return uint32(a)<<16 | uint32(b), nil
}

// FormatCommunity writes a community as "ASN:value", the form every BGP tool reads.
func FormatCommunity(c uint32) string { return fmt.Sprintf("%d:%d", c>>16, c&0xffff) }

// ReadSecretFile returns the content of a file holding a secret, without its trailing
// newline. A file that its group or others may read or write is refused: the secret
// would no longer be one.
func ReadSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading secret file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("reading secret file: %w", err)
	}
	if mode := st.Mode(); !mode.IsRegular() {
		return "", fmt.Errorf("secret file %s is not a regular file", path)
	} else if mode.Perm()&0o077 != 0 {
		return "", fmt.Errorf("secret file %s has mode %04o: its group and others may access it; chmod 600 it", path, mode.Perm())
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return "", fmt.Errorf("reading secret file: %w", err)
	}
	return strings.TrimRight(string(data), "\r\n"), nil
}
