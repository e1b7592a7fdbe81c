//go:build integration

package ipset

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestNetlinkInNetns(t *testing.T) {
	s := inNewNS(t, tnetns.NewNS(t, "ipset", t.Name()))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	sets := []SetEntries{
		{Set: Set{Name: "KUBE-ROUTER-IP", Type: HashIP, Family: ipfamily.IPv4}, Entries: []string{"10.0.0.1", "10.0.0.2"}},
		{Set: Set{Name: "KUBE-ROUTER-NET6", Type: HashNet, Family: ipfamily.IPv6}, Entries: []string{"fd00::/64", "fd01::1/128"}},
		{Set: Set{Name: "KUBE-ROUTER-IPPORT", Type: HashIPPort, Family: ipfamily.IPv4}, Entries: []string{"10.0.0.1,sctp:9", "10.0.0.1,tcp:80", "10.0.0.1,udp:53"}},
	}
	for _, set := range sets {
		must(s.Create(set.Set))
		must(s.Create(set.Set))
		for _, e := range set.Entries {
			must(s.Add(set.Name, e))
			must(s.Add(set.Name, e))
		}
		got, err := s.List(set.Name)
		must(err)
		if !slices.Equal(got.Entries, set.Entries) || got.Set != set.Set {
			t.Errorf("List(%s) = %+v; want %+v", set.Name, got, set)
		}
	}
	must(s.Del("KUBE-ROUTER-IP", "10.0.0.2"))
	must(s.Del("KUBE-ROUTER-IP", "10.0.0.2"))
	// Large sets arrive in several netlink messages.
	must(s.Create(Set{Name: "KUBE-ROUTER-BIG", Type: HashIP, Family: ipfamily.IPv4}))
	var big []string
	for i := range 5000 {
		big = append(big, fmt.Sprintf("10.1.%d.%d", i/256, i%256))
	}
	for _, err := range s.AddEntries("KUBE-ROUTER-BIG", big) {
		must(err)
	}
	must(s.Swap("KUBE-ROUTER-IP", "KUBE-ROUTER-BIG"))
	all, err := s.ListAll(nil)
	must(err)
	counts := map[string]int{}
	for _, set := range all {
		counts[set.Name] = len(set.Entries)
	}
	if counts["KUBE-ROUTER-IP"] != 5000 || counts["KUBE-ROUTER-BIG"] != 1 {
		t.Errorf("after swap: %v", counts)
	}
	names, err := s.Names()
	must(err)
	var listed []string
	for _, set := range all {
		listed = append(listed, set.Name)
	}
	if !slices.Equal(names, listed) {
		t.Errorf("Names() = %v; want %v, as ListAll", names, listed)
	}
	for _, set := range all {
		must(s.Destroy(set.Name))
	}
	must(s.Destroy("KUBE-ROUTER-IP"))
	// The host namespace must not have seen any of it.
	host, err := New()
	must(err)
	defer host.Close()
	hostSets, err := host.Names()
	must(err)
	for _, set := range hostSets {
		if set == "KUBE-ROUTER-BIG" {
			t.Fatal("set leaked into the host namespace")
		}
	}
}

// TestListAllReadsOnlyKeptSets lists a namespace that holds, beside our sets of both
// families, a set of a type we never make (as firewalld or an operator may leave):
// its entries are not decoded, so it cannot fail the read of ours.
func TestListAllReadsOnlyKeptSets(t *testing.T) {
	ns := tnetns.NewNS(t, "ipset", t.Name())
	s := inNewNS(t, ns)
	ns.Run(t, "ipset", "create", "OTHER-PORTS", "bitmap:port", "range", "1-1024")
	ns.Run(t, "ipset", "add", "OTHER-PORTS", "22")
	ours := []SetEntries{
		{Set: Set{Name: "KUBE-ROUTER-A", Type: HashIP, Family: ipfamily.IPv4}, Entries: []string{"10.0.0.1", "10.0.0.2"}},
		{Set: Set{Name: "KUBE-ROUTER-B", Type: HashNet, Family: ipfamily.IPv6}, Entries: []string{"fd00::/64"}},
		{Set: Set{Name: "KUBE-ROUTER-C", Type: HashIPPort, Family: ipfamily.IPv4}, Entries: []string{"10.0.0.1,tcp:80"}},
	}
	for _, set := range ours {
		if err := s.Create(set.Set); err != nil {
			t.Fatal(err)
		}
		for _, err := range s.AddEntries(set.Name, set.Entries) {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	ipv4 := func(set Set) bool { return strings.HasPrefix(set.Name, "KUBE-ROUTER-") && set.Family == ipfamily.IPv4 }
	got, err := s.ListAll(ipv4)
	if err != nil {
		t.Fatal(err)
	}
	if want := []SetEntries{ours[0], ours[2]}; !reflect.DeepEqual(got, want) {
		t.Errorf("ListAll(our IPv4 sets) = %+v; want %+v", got, want)
	}
	if _, err := s.ListAll(nil); err == nil {
		t.Error("ListAll(nil) decoded a bitmap:port set's entries as addresses")
	}
	if _, err := s.List("KUBE-ROUTER-MISSING"); !errors.Is(err, ErrNoSuchSet) {
		t.Errorf("List of a missing set: %v; want ErrNoSuchSet", err)
	}
}

// TestAddEntriesReportsEachEntry adds entries of every set type we use in batches,
// with repeats, one entry that does not parse and one of the wrong family: only those
// two fail, and the set holds all the others.
func TestAddEntriesReportsEachEntry(t *testing.T) {
	s := inNewNS(t, tnetns.NewNS(t, "ipset", t.Name()))
	cases := []struct {
		set  Set
		make func(i int) string
	}{
		{Set{Name: "KUBE-ROUTER-IP", Type: HashIP, Family: ipfamily.IPv4}, func(i int) string { return fmt.Sprintf("10.2.%d.%d", i/250, i%250+1) }},
		{Set{Name: "KUBE-ROUTER-NET6", Type: HashNet, Family: ipfamily.IPv6}, func(i int) string { return fmt.Sprintf("fd00:%x::/64", i) }},
		{Set{Name: "KUBE-ROUTER-IPPORT", Type: HashIPPort, Family: ipfamily.IPv4}, func(i int) string {
			return fmt.Sprintf("10.3.0.%d,%s:%d", i%200+1, []string{"tcp", "udp", "sctp"}[i%3], 1000+i)
		}},
		{Set{Name: "KUBE-ROUTER-IPPORT6", Type: HashIPPort, Family: ipfamily.IPv6}, func(i int) string { return fmt.Sprintf("fd00::%x,tcp:%d", i+1, 80+i%7) }},
	}
	for _, c := range cases {
		if err := s.Create(c.set); err != nil {
			t.Fatal(err)
		}
		var entries []string
		for i := range 600 {
			entries = append(entries, c.make(i))
		}
		want, err := s.List(c.set.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			canon, err := Canonical(c.set.Type, e)
			if err != nil {
				t.Fatal(err)
			}
			want.Entries = append(want.Entries, canon)
		}
		slices.Sort(want.Entries)
		want.Entries = slices.Compact(want.Entries)
		wrongFamily := "10.9.9.9"
		if c.set.Family == ipfamily.IPv4 {
			wrongFamily = "fd00::99"
		}
		if c.set.Type == HashIPPort {
			wrongFamily += ",tcp:1"
		}
		bad, wrong := 100, 400
		entries = slices.Insert(entries, wrong, wrongFamily)
		entries = slices.Insert(entries, bad, "not an address")
		entries = append(entries, entries[:50]...) // repeats are not errors
		wrong++
		for i, err := range s.AddEntries(c.set.Name, entries) {
			if (i == bad || i == wrong) != (err != nil) {
				t.Errorf("%s, entry %d (%q): error %v", c.set.Name, i, entries[i], err)
			}
		}
		got, err := s.List(c.set.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Entries, want.Entries) {
			t.Errorf("%s holds %d entries, want %d", c.set.Name, len(got.Entries), len(want.Entries))
		}
	}
}

// TestEntriesGoManyPerRequest adds and deletes 2,000 entries: a few requests carry
// them all. The kernel refused multi-entry requests without a line number, and the
// entries silently went one request each.
func TestEntriesGoManyPerRequest(t *testing.T) {
	s := inNewNS(t, tnetns.NewNS(t, "ipset", t.Name()))
	set := Set{Name: "KUBE-ROUTER-MANY", Type: HashIPPort, Family: ipfamily.IPv4}
	if err := s.Create(set); err != nil {
		t.Fatal(err)
	}
	entries := make([]string, 2000)
	for i := range entries {
		entries[i] = fmt.Sprintf("10.4.%d.%d,tcp:%d", i/250, i%250+1, 80+i%2)
	}
	for _, change := range []struct {
		do   func(string, []string) []error
		want int
	}{{s.AddEntries, len(entries)}, {s.DelEntries, 0}} {
		before := s.requests
		if err := errors.Join(change.do(set.Name, entries)...); err != nil {
			t.Fatal(err)
		}
		if sent := s.requests - before; sent > 10 {
			t.Errorf("%d entries took %d requests", len(entries), sent)
		}
		got, err := s.List(set.Name)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Entries) != change.want {
			t.Errorf("the set holds %d entries, want %d", len(got.Entries), change.want)
		}
	}
}
