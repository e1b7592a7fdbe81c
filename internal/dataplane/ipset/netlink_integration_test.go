//go:build integration

package ipset

import (
	"fmt"
	"slices"
	"testing"

	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestNetlinkInNetns(t *testing.T) {
	ns := tnetns.NewNS(t, "ipset", t.Name()).Handle
	s, err := NewAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	sets := []SetEntries{
		{Set: Set{Name: "KUBE-ROUTER-IP", Type: HashIP, Family: IPv4}, Entries: []string{"10.0.0.1", "10.0.0.2"}},
		{Set: Set{Name: "KUBE-ROUTER-NET6", Type: HashNet, Family: IPv6}, Entries: []string{"fd00::/64", "fd01::1/128"}},
		{Set: Set{Name: "KUBE-ROUTER-IPPORT", Type: HashIPPort, Family: IPv4}, Entries: []string{"10.0.0.1,sctp:9", "10.0.0.1,tcp:80", "10.0.0.1,udp:53"}},
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
	must(s.Create(Set{Name: "KUBE-ROUTER-BIG", Type: HashIP, Family: IPv4}))
	for i := range 5000 {
		must(s.Add("KUBE-ROUTER-BIG", fmt.Sprintf("10.1.%d.%d", i/256, i%256)))
	}
	must(s.Swap("KUBE-ROUTER-IP", "KUBE-ROUTER-BIG"))
	all, err := s.ListAll()
	must(err)
	counts := map[string]int{}
	for _, set := range all {
		counts[set.Name] = len(set.Entries)
	}
	if counts["KUBE-ROUTER-IP"] != 5000 || counts["KUBE-ROUTER-BIG"] != 1 {
		t.Errorf("after swap: %v", counts)
	}
	for _, set := range all {
		must(s.Destroy(set.Name))
	}
	must(s.Destroy("KUBE-ROUTER-IP"))
	// The host namespace must not have seen any of it.
	host, err := New()
	must(err)
	defer host.Close()
	hostSets, err := host.ListAll()
	must(err)
	for _, set := range hostSets {
		if set.Name == "KUBE-ROUTER-BIG" {
			t.Fatal("set leaked into the host namespace")
		}
	}
}
