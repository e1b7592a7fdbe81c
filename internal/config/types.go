package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written in TOML as a Go duration string ("30s", "5m").
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string; negative durations are rejected.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. \"30s\", \"5m\")", text)
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: must not be negative", text)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration back in Go syntax, for check-config output.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Prefix is an IP network written in CIDR notation ("10.244.0.0/16").
type Prefix struct{ netip.Prefix }

// UnmarshalText parses CIDR notation and rejects host bits set ("10.0.0.1/8").
func (p *Prefix) UnmarshalText(text []byte) error {
	v, err := netip.ParsePrefix(string(text))
	if err != nil {
		return fmt.Errorf("invalid CIDR %q", text)
	}
	if v.Masked() != v {
		return fmt.Errorf("invalid CIDR %q: host bits set (did you mean %s?)", text, v.Masked())
	}
	p.Prefix = v
	return nil
}

// MarshalText writes the prefix in CIDR notation.
func (p Prefix) MarshalText() ([]byte, error) {
	if !p.IsValid() {
		return []byte(""), nil
	}
	return []byte(p.String()), nil
}

// Addr is a single IP address; the empty string means "not set".
type Addr struct{ netip.Addr }

// UnmarshalText parses an IPv4 or IPv6 address.
func (a *Addr) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		a.Addr = netip.Addr{}
		return nil
	}
	v, err := netip.ParseAddr(string(text))
	if err != nil {
		return fmt.Errorf("invalid IP address %q", text)
	}
	a.Addr = v
	return nil
}

// MarshalText writes the address, or "" when unset.
func (a Addr) MarshalText() ([]byte, error) {
	if !a.IsValid() {
		return []byte(""), nil
	}
	return []byte(a.String()), nil
}

// HostPort is a listen address "host:port"; an empty string disables the listener.
type HostPort string

// Validate checks that the value is empty or a host:port with a numeric port 1-65535.
func (h HostPort) Validate() error {
	if h == "" {
		return nil
	}
	host, port, err := splitHostPort(string(h))
	if err != nil {
		return err
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			return fmt.Errorf("invalid listen address %q: host must be an IP address", string(h))
		}
	}
	if _, err := ParsePort(port); err != nil {
		return fmt.Errorf("invalid listen address %q: %v", string(h), err)
	}
	return nil
}

// IsLoopback reports whether the host is an IP address of 127.0.0.0/8 or ::1 (not a
// name, not empty: an empty host listens on every address).
func (h HostPort) IsLoopback() bool {
	host, _, err := splitHostPort(string(h))
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func splitHostPort(s string) (string, string, error) {
	i := strings.LastIndex(s, ":")
	if i < 0 {
		return "", "", fmt.Errorf("invalid listen address %q: want host:port", s)
	}
	host := strings.TrimSuffix(strings.TrimPrefix(s[:i], "["), "]")
	return host, s[i+1:], nil
}

// ParsePort parses a TCP/UDP port number in 1-65535.
func ParsePort(s string) (uint16, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("invalid port %q: must be 1-65535", s)
	}
	return uint16(n), nil
}

// ValidASN reports whether n is a usable 4-byte AS number (1-4294967294; 0 and
// 4294967295 are reserved by RFC 7607 and RFC 7300).
func ValidASN(n int64) bool { return n >= 1 && n <= 4294967294 }
