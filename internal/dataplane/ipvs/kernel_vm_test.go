//go:build vm

package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestKernelAppliesBatchesAndReadsTheTable sends more changes than fit one batch,
// with one that must fail in the middle, and reads the result back through both the
// /proc table and netlink.
func TestKernelAppliesBatchesAndReadsTheTable(t *testing.T) {
	testenv.RequireVM(t)
	ns := netns.NewNS(t, "node", "ipvs")
	k, err := NewKernelAt(ns.Path())
	if err != nil {
		testenv.Unavailable(t, "IPVS: %v", err)
	}
	t.Cleanup(k.Close)

	const services = 60 // x 10 destinations: 660 changes, three batches
	var changes []Change
	want := map[Key][]Destination{}
	for i := range services {
		addr := netip.AddrFrom4([4]byte{10, 96, 0, byte(i + 1)})
		if i%2 == 1 {
			addr = netip.MustParseAddr(fmt.Sprintf("fd00:96::%x", i+1))
		}
		svc := Service{Key: Key{Addr: addr, Proto: []Protocol{TCP, UDP, SCTP}[i%3], Port: uint16(80 + i)}, Scheduler: "rr"}
		if i%5 == 0 {
			svc.Flags, svc.Timeout = FlagPersistent, 300
		}
		changes = append(changes, Change{Op: OpAddService, Service: svc})
		want[svc.Key] = []Destination{}
		for j := range 10 {
			d := Destination{DestKey: DestKey{Addr: netip.AddrFrom4([4]byte{10, 1, byte(i), byte(j + 1)}), Port: 8080}, Weight: j % 3}
			if addr.Is6() {
				d.Addr = netip.MustParseAddr(fmt.Sprintf("fd00:1::%x:%x", i, j+1))
			}
			changes = append(changes, Change{Op: OpAddDestination, Service: svc, Dest: d})
			want[svc.Key] = append(want[svc.Key], d)
		}
	}
	// The same service again, in the second batch: only that change fails.
	dup := 300
	changes = slices.Insert(changes, dup, Change{Op: OpAddService, Service: changes[0].Service})

	errs := k.Apply(changes)
	for i, err := range errs {
		switch {
		case i == dup && !errors.Is(err, ErrExists):
			t.Errorf("change %d (%s): got %v, want %v", i, changes[i], err, ErrExists)
		case i != dup && err != nil:
			t.Errorf("change %d (%s): %v", i, changes[i], err)
		}
	}

	list, err := k.Services()
	if err != nil {
		t.Fatal(err)
	}
	table := checkTable(t, k, list, want)
	for key := range want {
		got := table[key]
		viaNetlink, err := k.Destinations(key)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(viaNetlink, func(a, b Destination) int { return CompareDestKeys(a.DestKey, b.DestKey) })
		if !slices.Equal(viaNetlink, got) {
			t.Errorf("%s: netlink has %v, /proc table %v", key, viaNetlink, got)
		}
	}
	for _, s := range list {
		if i := slices.IndexFunc(changes, func(c Change) bool { return c.Op == OpAddService && c.Service.Key == s.Key }); i < 0 || changes[i].Service != s {
			t.Errorf("kernel has %s, not what was added", s)
		}
	}

	// Updates and deletions, including one of something already gone.
	first := changes[0].Service
	firstDest := changes[1].Dest
	updated := first
	updated.Scheduler = "wlc"
	errs = k.Apply([]Change{
		{Op: OpUpdateService, Service: updated},
		{Op: OpUpdateDestination, Service: first, Dest: Destination{DestKey: firstDest.DestKey, Weight: 7}},
		{Op: OpDeleteDestination, Service: first, Dest: changes[2].Dest},
		{Op: OpDeleteDestination, Service: first, Dest: changes[2].Dest},
		{Op: OpDeleteService, Service: changes[11].Service},
	})
	for i, err := range errs {
		if (i == 3) != errors.Is(err, ErrNotFound) || i != 3 && err != nil {
			t.Errorf("update %d: %v", i, err)
		}
	}
	got, ok, err := k.Service(first.Key)
	if err != nil || !ok || got != updated {
		t.Errorf("after the update the service is %v (%v, %v), want %v", got, ok, err, updated)
	}
	if list, err = k.Services(); err != nil {
		t.Fatal(err)
	}
	table, err = k.AllDestinations(list)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := table[changes[11].Service.Key]; ok {
		t.Errorf("deleted service %s is still listed", changes[11].Service.Key)
	}
	if n := len(table[first.Key]); n != 9 {
		t.Errorf("%s has %d destinations, want 9", first.Key, n)
	}
	for _, d := range table[first.Key] {
		if d.DestKey == firstDest.DestKey && d.Weight != 7 {
			t.Errorf("destination %s has weight %d, want 7", d.DestKey, d.Weight)
		}
	}
}

// TestTableListsEveryServiceBesideOtherNamespaces reads a node's table while another
// network namespace holds IPVS services too: the kernel keeps one service hash for all
// namespaces, and its /proc table, read a page at a time, skips some of ours then (a
// restart's full sync once re-added destinations that existed).
func TestTableListsEveryServiceBesideOtherNamespaces(t *testing.T) {
	testenv.RequireVM(t)
	kernels := make([]*Kernel, 2)
	for i := range kernels {
		ns := netns.NewNS(t, "node", fmt.Sprintf("ipvs%d", i))
		k, err := NewKernelAt(ns.Path())
		if err != nil {
			testenv.Unavailable(t, "IPVS: %v", err)
		}
		t.Cleanup(k.Close)
		kernels[i] = k
	}
	const services = 300
	want := map[Key][]Destination{}
	for i := range services {
		for n, k := range kernels {
			svc := Service{Key: Key{Addr: netip.AddrFrom4([4]byte{10, 96, byte(n), byte(i)}), Proto: TCP, Port: uint16(80 + i)}, Scheduler: "rr"}
			changes := []Change{{Op: OpAddService, Service: svc}}
			var dests []Destination
			for j := range 4 {
				d := Destination{DestKey: DestKey{Addr: netip.AddrFrom4([4]byte{10, 1, byte(i), byte(j + 1)}), Port: 8080}, Weight: 1}
				changes = append(changes, Change{Op: OpAddDestination, Service: svc, Dest: d})
				dests = append(dests, d)
			}
			if err := errors.Join(k.Apply(changes)...); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				want[svc.Key] = dests
			}
		}
	}
	list, err := kernels[0].Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != services {
		t.Fatalf("netlink lists %d services, want %d", len(list), services)
	}
	raw, err := kernels[0].readTable()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the /proc table alone lists %d of the %d services", len(raw), services)
	checkTable(t, kernels[0], list, want)
}

// checkTable reads the destinations of the listed services and checks that they are
// want's (in the order of CompareDestKeys), service by service; it returns them sorted.
func checkTable(t *testing.T, k *Kernel, list []Service, want map[Key][]Destination) map[Key][]Destination {
	t.Helper()
	table, err := k.AllDestinations(list)
	if err != nil {
		t.Fatal(err)
	}
	if len(table) != len(want) {
		t.Fatalf("the table lists %d services, want %d", len(table), len(want))
	}
	for key, dests := range want {
		got := table[key]
		slices.SortFunc(got, func(a, b Destination) int { return CompareDestKeys(a.DestKey, b.DestKey) })
		if !slices.Equal(got, dests) {
			t.Errorf("%s: the table has %v, want %v", key, got, dests)
		}
	}
	return table
}
