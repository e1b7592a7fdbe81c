package podtunnel

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
)

// Fake is an in-memory Interface: pods are added by address with the MTU of their
// interface, and their tunnels hold what Set gave them.
type Fake struct {
	mu      sync.Mutex
	mtus    map[netip.Addr]int
	tunnels map[netip.Addr][]netip.Addr
	// Writes counts the Set calls that changed something.
	Writes int
}

// NewFake returns a Fake without pods.
func NewFake() *Fake {
	return &Fake{mtus: map[netip.Addr]int{}, tunnels: map[netip.Addr][]netip.Addr{}}
}

// AddPod makes a pod at addr, whose interface has the given MTU, findable.
func (f *Fake) AddPod(addr netip.Addr, mtu int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mtus[addr] = mtu
}

// List implements Interface.
func (f *Fake) List() (map[netip.Addr]Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[netip.Addr]Pod, len(f.tunnels))
	for p, v := range f.tunnels {
		out[p] = Pod{VIPs: slices.Clone(v), MTU: f.mtus[p]}
	}
	return out, nil
}

// Set implements Interface.
func (f *Fake) Set(pod netip.Addr, vips []netip.Addr) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	mtu, ok := f.mtus[pod]
	if !ok {
		return 0, fmt.Errorf("pod %s: %w", pod, ErrNoPod)
	}
	cur, had := f.tunnels[pod]
	switch {
	case len(vips) == 0 && had:
		delete(f.tunnels, pod)
	case len(vips) > 0 && !slices.Equal(cur, vips):
		f.tunnels[pod] = slices.Clone(vips)
	default:
		return mtu, nil
	}
	f.Writes++
	return mtu, nil
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
