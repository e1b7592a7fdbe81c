package route

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Fake is an in-memory Interface. Foreign routes and links can be planted to check that
// nothing of theirs is touched. Safe for concurrent use.
type Fake struct {
	mu       sync.Mutex
	routes   map[netip.Prefix]Route
	tunnels  map[string]Tunnel
	prefixes []netip.Prefix
	// Calls counts mutating calls, to check that a sync with nothing to do does nothing.
	Calls int
}

var _ Interface = (*Fake)(nil)

// NewFake returns a fake kernel whose host addresses lie in localPrefixes.
func NewFake(localPrefixes ...netip.Prefix) *Fake {
	return &Fake{routes: map[netip.Prefix]Route{}, tunnels: map[string]Tunnel{}, prefixes: localPrefixes}
}

// Routes implements Interface.
func (f *Fake) Routes() ([]Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Route, 0, len(f.routes))
	for _, r := range f.routes {
		out = append(out, r)
	}
	SortRoutes(out)
	return out, nil
}

// ReplaceRoute implements Interface.
func (f *Fake) ReplaceRoute(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	if r.Device != "" {
		if _, ok := f.tunnels[r.Device]; !ok {
			return fmt.Errorf("replacing route %s: no device %s", r, r.Device)
		}
	}
	if r.Gateway.IsValid() && len(f.prefixes) > 0 && !slices.ContainsFunc(f.prefixes, func(p netip.Prefix) bool { return p.Contains(r.Gateway) }) {
		return fmt.Errorf("replacing route %s: %w", r, ErrNextHopUnreachable)
	}
	f.routes[r.Dst] = r
	return nil
}

// DeleteRoute implements Interface.
func (f *Fake) DeleteRoute(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	delete(f.routes, r.Dst)
	return nil
}

// Tunnels implements Interface.
func (f *Fake) Tunnels() ([]Tunnel, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Tunnel, 0, len(f.tunnels))
	for _, t := range f.tunnels {
		out = append(out, t)
	}
	return out, nil
}

// EnsureTunnel implements Interface.
func (f *Fake) EnsureTunnel(t Tunnel) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	f.tunnels[t.Name] = t
	return nil
}

// DeleteTunnel implements Interface. Like the kernel, it drops the routes into it.
func (f *Fake) DeleteTunnel(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	delete(f.tunnels, name)
	for dst, r := range f.routes {
		if r.Device == name {
			delete(f.routes, dst)
		}
	}
	return nil
}

// LocalPrefixes implements Interface.
func (f *Fake) LocalPrefixes() ([]netip.Prefix, error) { return f.prefixes, nil }

// Dump renders the fake's routes and tunnels as text.
func (f *Fake) Dump() string {
	rs, _ := f.Routes()
	ts, _ := f.Tunnels()
	return Dump(rs, ts)
}
