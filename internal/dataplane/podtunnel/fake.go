package podtunnel

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
)

// Fake is an in-memory Interface: pods are added by address, and their tunnels hold
// what Set gave them.
type Fake struct {
	mu      sync.Mutex
	pods    map[netip.Addr]bool
	tunnels map[netip.Addr][]netip.Addr
	// Writes counts the Set calls that changed something.
	Writes int
}

// NewFake returns a Fake with pods at the given addresses.
func NewFake(pods ...netip.Addr) *Fake {
	f := &Fake{pods: map[netip.Addr]bool{}, tunnels: map[netip.Addr][]netip.Addr{}}
	for _, p := range pods {
		f.pods[p] = true
	}
	return f
}

// AddPod makes a pod at addr findable.
func (f *Fake) AddPod(addr netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pods[addr] = true
}

// List implements Interface.
func (f *Fake) List() (map[netip.Addr][]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[netip.Addr][]netip.Addr, len(f.tunnels))
	for p, v := range f.tunnels {
		out[p] = slices.Clone(v)
	}
	return out, nil
}

// Set implements Interface.
func (f *Fake) Set(pod netip.Addr, vips []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.pods[pod] {
		return fmt.Errorf("pod %s: %w", pod, ErrNoPod)
	}
	cur, had := f.tunnels[pod]
	switch {
	case len(vips) == 0 && had:
		delete(f.tunnels, pod)
	case len(vips) > 0 && !slices.Equal(cur, vips):
		f.tunnels[pod] = slices.Clone(vips)
	default:
		return nil
	}
	f.Writes++
	return nil
}

// Dump returns each pod's tunnel addresses as sorted text, one pod per line.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out string
	for _, p := range slices.SortedFunc(maps.Keys(f.tunnels), netip.Addr.Compare) {
		out += fmt.Sprintf("%s: %v\n", p, f.tunnels[p])
	}
	return out
}
