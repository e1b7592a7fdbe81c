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
	peers    map[VXLANPeer]bool
	fouPorts map[FOUPort]bool
	prefixes []netip.Prefix
	// Calls counts mutating calls, to check that a sync with nothing to do does nothing.
	Calls int
}

var _ Interface = (*Fake)(nil)

// NewFake returns a fake kernel whose host addresses lie in localPrefixes.
func NewFake(localPrefixes ...netip.Prefix) *Fake {
	return &Fake{routes: map[netip.Prefix]Route{}, tunnels: map[string]Tunnel{}, peers: map[VXLANPeer]bool{},
		fouPorts: map[FOUPort]bool{}, prefixes: localPrefixes}
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
	if r.Gateway.IsValid() && r.Device == "" && len(f.prefixes) > 0 && !slices.ContainsFunc(f.prefixes, func(p netip.Prefix) bool { return p.Contains(r.Gateway) }) {
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
	for p := range f.peers {
		if p.Device == name {
			delete(f.peers, p)
		}
	}
	return nil
}

// VXLANPeers implements Interface.
func (f *Fake) VXLANPeers() ([]VXLANPeer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]VXLANPeer, 0, len(f.peers))
	for p := range f.peers {
		out = append(out, p)
	}
	return out, nil
}

// ReplaceVXLANPeer implements Interface.
func (f *Fake) ReplaceVXLANPeer(p VXLANPeer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	if t, ok := f.tunnels[p.Device]; !ok || t.Encap != EncapVXLAN {
		return fmt.Errorf("VXLAN peer %s: no VXLAN device %s", p, p.Device)
	}
	for q := range f.peers {
		if q.Device == p.Device && q.Node == p.Node {
			delete(f.peers, q)
		}
	}
	f.peers[p] = true
	return nil
}

// DeleteVXLANPeer implements Interface.
func (f *Fake) DeleteVXLANPeer(p VXLANPeer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	delete(f.peers, p)
	return nil
}

// FOUPorts implements Interface.
func (f *Fake) FOUPorts() ([]FOUPort, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]FOUPort, 0, len(f.fouPorts))
	for p := range f.fouPorts {
		out = append(out, p)
	}
	return out, nil
}

// AddFOUPort implements Interface.
func (f *Fake) AddFOUPort(p FOUPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	f.fouPorts[p] = true
	return nil
}

// DeleteFOUPort implements Interface.
func (f *Fake) DeleteFOUPort(p FOUPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	delete(f.fouPorts, p)
	return nil
}

// LocalPrefixes implements Interface.
func (f *Fake) LocalPrefixes() ([]netip.Prefix, error) { return f.prefixes, nil }

// State is everything the fake holds.
func (f *Fake) State() State {
	var s State
	s.Routes, _ = f.Routes()
	s.Tunnels, _ = f.Tunnels()
	s.Peers, _ = f.VXLANPeers()
	s.FOUPorts, _ = f.FOUPorts()
	return s
}

// Dump renders the fake's state as text.
func (f *Fake) Dump() string { return f.State().Dump() }
