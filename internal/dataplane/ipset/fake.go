package ipset

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Fake is an in-memory Interface for tests. It checks entries like the kernel would
// (type and family) and can print its state with Dump.
type Fake struct {
	mu   sync.Mutex
	sets map[string]*fakeSet
	// Ops counts mutating calls (Create, Destroy, Flush, Add, Del, Swap), so tests can
	// check that a sync touched only what changed.
	Ops int
}

type fakeSet struct {
	Set
	entries map[string]struct{}
}

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{sets: map[string]*fakeSet{}} }

var _ Interface = (*Fake)(nil)

// Create implements Interface.
func (f *Fake) Create(s Set) error {
	if err := CheckName(s.Name); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Ops++
	if old, ok := f.sets[s.Name]; ok {
		if old.Set != s {
			return fmt.Errorf("creating ipset %s: exists with type %s %s", s.Name, old.Type, kernelFamilyName(old.Family))
		}
		return nil
	}
	f.sets[s.Name] = &fakeSet{Set: s, entries: map[string]struct{}{}}
	return nil
}

// Destroy implements Interface.
func (f *Fake) Destroy(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Ops++
	delete(f.sets, name)
	return nil
}

// Flush implements Interface.
func (f *Fake) Flush(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Ops++
	s, ok := f.sets[name]
	if !ok {
		return fmt.Errorf("flushing ipset %s: no such set", name)
	}
	s.entries = map[string]struct{}{}
	return nil
}

// Add implements Interface.
func (f *Fake) Add(name, entry string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Ops++
	s, canon, err := f.lookup(name, entry)
	if err != nil {
		return fmt.Errorf("adding %s to ipset %s: %w", entry, name, err)
	}
	s.entries[canon] = struct{}{}
	return nil
}

// AddEntries implements Interface.
func (f *Fake) AddEntries(name string, entries []string) []error {
	errs := make([]error, len(entries))
	for i, e := range entries {
		errs[i] = f.Add(name, e)
	}
	return errs
}

// Del implements Interface.
func (f *Fake) Del(name, entry string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Ops++
	s, canon, err := f.lookup(name, entry)
	if err != nil {
		return fmt.Errorf("deleting %s from ipset %s: %w", entry, name, err)
	}
	delete(s.entries, canon)
	return nil
}

// DelEntries implements Interface.
func (f *Fake) DelEntries(name string, entries []string) []error {
	errs := make([]error, len(entries))
	for i, e := range entries {
		errs[i] = f.Del(name, e)
	}
	return errs
}

func (f *Fake) lookup(name, entry string) (*fakeSet, string, error) {
	s, ok := f.sets[name]
	if !ok {
		return nil, "", fmt.Errorf("no such set")
	}
	canon, err := Canonical(s.Type, entry)
	if err != nil {
		return nil, "", err
	}
	isV6 := strings.Contains(strings.SplitN(canon, ",", 2)[0], ":")
	if isV6 != (s.Family == ipfamily.IPv6) {
		return nil, "", fmt.Errorf("address family does not match set family %s", kernelFamilyName(s.Family))
	}
	return s, canon, nil
}

// Swap implements Interface.
func (f *Fake) Swap(a, b string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Ops++
	sa, okA := f.sets[a]
	sb, okB := f.sets[b]
	if !okA || !okB {
		return fmt.Errorf("swapping ipsets %s and %s: no such set", a, b)
	}
	sa.Type, sb.Type = sb.Type, sa.Type
	sa.Family, sb.Family = sb.Family, sa.Family
	sa.entries, sb.entries = sb.entries, sa.entries
	return nil
}

// List implements Interface.
func (f *Fake) List(name string) (SetEntries, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sets[name]
	if !ok {
		return SetEntries{}, fmt.Errorf("listing ipset %s: %w", name, ErrNoSuchSet)
	}
	return SetEntries{Set: s.Set, Entries: sortedEntries(s.entries)}, nil
}

// ListAll implements Interface.
func (f *Fake) ListAll(keep func(Set) bool) ([]SetEntries, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := f.names()
	out := make([]SetEntries, 0, len(names))
	for _, n := range names {
		s := f.sets[n]
		if keep != nil && !keep(s.Set) {
			continue
		}
		out = append(out, SetEntries{Set: s.Set, Entries: sortedEntries(s.entries)})
	}
	return out, nil
}

// Names implements Interface.
func (f *Fake) Names() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.names(), nil
}

// names returns the sets' names, sorted; f.mu is held.
func (f *Fake) names() []string {
	names := make([]string, 0, len(f.sets))
	for n := range f.sets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Dump prints every set and its entries, sorted, one entry per line:
//
//	set NAME TYPE FAMILY
//	  ENTRY
func (f *Fake) Dump() string {
	all, _ := f.ListAll(nil)
	var b strings.Builder
	for _, s := range all {
		fmt.Fprintf(&b, "set %s %s %s\n", s.Name, s.Type, kernelFamilyName(s.Family))
		for _, e := range s.Entries {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	return b.String()
}
