package ipvs

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Fake is an in-memory IPVS table for tests. It counts the calls that change state so
// tests can assert that a sync touched only what differed.
type Fake struct {
	mu       sync.Mutex
	services map[Key]*fakeService
	// writes describes each state-changing call since the last ResetWrites.
	writes []string
	// applies counts Apply calls.
	applies  int
	timeouts Timeouts
	stats    map[Key]Stats
}

// SetStats sets the counters Stats reports for a virtual service.
func (f *Fake) SetStats(k Key, st Stats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stats == nil {
		f.stats = map[Key]Stats{}
	}
	f.stats[k] = st
}

// Stats implements Interface: the counters set with SetStats, zero for the other
// virtual services.
func (f *Fake) Stats() (map[Key]Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[Key]Stats, len(f.services))
	for k := range f.services {
		out[k] = f.stats[k]
	}
	return out, nil
}

type fakeService struct {
	svc   Service
	dests map[DestKey]Destination
}

// NewFake returns an empty fake IPVS table.
func NewFake() *Fake {
	return &Fake{services: map[Key]*fakeService{}, timeouts: DefaultTimeouts}
}

// DefaultTimeouts are the timeouts of a fresh kernel (the fake starts with them).
var DefaultTimeouts = Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second}

var _ Interface = (*Fake)(nil)

// Writes returns a description of every state-changing call since the last ResetWrites.
func (f *Fake) Writes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.writes)
}

// ResetWrites forgets the recorded writes.
func (f *Fake) ResetWrites() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = nil
}

// SetConnections sets the connection counters of a destination (as traffic would).
func (f *Fake) SetConnections(k Key, d DestKey, active, inactive int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.services[k]; ok {
		if dst, ok := s.dests[d]; ok {
			dst.ActiveConns, dst.InactiveConns = active, inactive
			s.dests[d] = dst
		}
	}
}

// Services implements Interface.
func (f *Fake) Services() ([]Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Service, 0, len(f.services))
	for _, s := range f.services {
		out = append(out, s.svc)
	}
	return out, nil
}

// Service implements Interface.
func (f *Fake) Service(k Key) (Service, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[k]
	if !ok {
		return Service{}, false, nil
	}
	return s.svc, true, nil
}

// Destinations implements Interface.
func (f *Fake) Destinations(k Key) ([]Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[k]
	if !ok {
		return nil, fmt.Errorf("listing destinations of %s: %w", k, ErrNotFound)
	}
	out := make([]Destination, 0, len(s.dests))
	for _, d := range s.dests {
		out = append(out, d)
	}
	return out, nil
}

// AllDestinations implements Interface.
func (f *Fake) AllDestinations(listed []Service) (map[Key][]Destination, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[Key][]Destination, len(listed))
	for _, l := range listed {
		s, ok := f.services[l.Key]
		if !ok {
			continue
		}
		out[l.Key] = make([]Destination, 0, len(s.dests))
		for _, d := range s.dests {
			out[l.Key] = append(out[l.Key], d)
		}
	}
	return out, nil
}

// AddService implements Interface.
func (f *Fake) AddService(s Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.services[s.Key]; ok {
		return fmt.Errorf("adding %s: %w", s.Key, ErrExists)
	}
	f.services[s.Key] = &fakeService{svc: s, dests: map[DestKey]Destination{}}
	f.writes = append(f.writes, "add service "+s.String())
	return nil
}

// UpdateService implements Interface.
func (f *Fake) UpdateService(s Service) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fs, ok := f.services[s.Key]
	if !ok {
		return fmt.Errorf("updating %s: %w", s.Key, ErrNotFound)
	}
	fs.svc = s
	f.writes = append(f.writes, "update service "+s.String())
	return nil
}

// DeleteService implements Interface.
func (f *Fake) DeleteService(k Key) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.services[k]; !ok {
		return fmt.Errorf("deleting %s: %w", k, ErrNotFound)
	}
	delete(f.services, k)
	f.writes = append(f.writes, "delete service "+k.String())
	return nil
}

// AddDestination implements Interface.
func (f *Fake) AddDestination(k Key, d Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[k]
	if !ok {
		return fmt.Errorf("adding destination to %s: %w", k, ErrNotFound)
	}
	if _, ok := s.dests[d.DestKey]; ok {
		return fmt.Errorf("adding destination %s to %s: %w", d.DestKey, k, ErrExists)
	}
	s.dests[d.DestKey] = Destination{DestKey: d.DestKey, Weight: d.Weight, Forward: d.Forward}
	f.writes = append(f.writes, fmt.Sprintf("add destination %s -> %s weight %d%s", k, d.DestKey, d.Weight, forwardSuffix(d.Forward)))
	return nil
}

// UpdateDestination implements Interface.
func (f *Fake) UpdateDestination(k Key, d Destination) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[k]
	if !ok {
		return fmt.Errorf("updating destination of %s: %w", k, ErrNotFound)
	}
	old, ok := s.dests[d.DestKey]
	if !ok {
		return fmt.Errorf("updating destination %s of %s: %w", d.DestKey, k, ErrNotFound)
	}
	old.Weight, old.Forward = d.Weight, d.Forward
	s.dests[d.DestKey] = old
	f.writes = append(f.writes, fmt.Sprintf("update destination %s -> %s weight %d%s", k, d.DestKey, d.Weight, forwardSuffix(d.Forward)))
	return nil
}

// DeleteDestination implements Interface.
func (f *Fake) DeleteDestination(k Key, d DestKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.services[k]
	if !ok {
		return fmt.Errorf("deleting destination of %s: %w", k, ErrNotFound)
	}
	if _, ok := s.dests[d]; !ok {
		return fmt.Errorf("deleting destination %s of %s: %w", d, k, ErrNotFound)
	}
	delete(s.dests, d)
	f.writes = append(f.writes, fmt.Sprintf("delete destination %s -> %s", k, d))
	return nil
}

// Timeouts implements Interface.
func (f *Fake) Timeouts() (Timeouts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.timeouts, nil
}

// SetTimeouts implements Interface.
func (f *Fake) SetTimeouts(t Timeouts) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range []struct{ to, from *time.Duration }{
		{&f.timeouts.TCP, &t.TCP}, {&f.timeouts.TCPFin, &t.TCPFin}, {&f.timeouts.UDP, &t.UDP},
	} {
		if *p.from != 0 {
			*p.to = p.from.Truncate(time.Second)
		}
	}
	f.writes = append(f.writes, "set timeouts "+t.String())
	return nil
}

// ApplyCalls counts the calls to Apply: the batches a real kernel would receive.
func (f *Fake) ApplyCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applies
}

// Apply implements Interface, one change at a time.
func (f *Fake) Apply(changes []Change) []error {
	f.mu.Lock()
	f.applies++
	f.mu.Unlock()
	errs := make([]error, len(changes))
	for i, c := range changes {
		switch c.Op {
		case OpAddService:
			errs[i] = f.AddService(c.Service)
		case OpUpdateService:
			errs[i] = f.UpdateService(c.Service)
		case OpDeleteService:
			errs[i] = f.DeleteService(c.Service.Key)
		case OpAddDestination:
			errs[i] = f.AddDestination(c.Service.Key, c.Dest)
		case OpUpdateDestination:
			errs[i] = f.UpdateDestination(c.Service.Key, c.Dest)
		case OpDeleteDestination:
			errs[i] = f.DeleteDestination(c.Service.Key, c.Dest.DestKey)
		default:
			errs[i] = fmt.Errorf("%s: unknown op", c)
		}
	}
	return errs
}

// Dump returns the table as sorted text, one service per line followed by its
// destinations indented, for golden comparisons.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	keys := make([]Key, 0, len(f.services))
	for k := range f.services {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, CompareKeys)
	var b strings.Builder
	for _, k := range keys {
		s := f.services[k]
		b.WriteString(s.svc.String() + "\n")
		dks := make([]DestKey, 0, len(s.dests))
		for dk := range s.dests {
			dks = append(dks, dk)
		}
		slices.SortFunc(dks, CompareDestKeys)
		for _, dk := range dks {
			fmt.Fprintf(&b, "  -> %s weight %d%s\n", dk, s.dests[dk].Weight, forwardSuffix(s.dests[dk].Forward))
		}
	}
	return b.String()
}

// forwardSuffix names a forwarding method other than the usual Masquerade, so
// dumps and write logs of NAT-only tests stay as they were.
func forwardSuffix(f Forward) string {
	if f == Masquerade {
		return ""
	}
	return " " + f.String()
}

// CompareKeys orders keys by address, protocol, port.
func CompareKeys(a, b Key) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if a.Proto != b.Proto {
		return int(a.Proto) - int(b.Proto)
	}
	return int(a.Port) - int(b.Port)
}

// CompareDestKeys orders destinations by address, port.
func CompareDestKeys(a, b DestKey) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}
