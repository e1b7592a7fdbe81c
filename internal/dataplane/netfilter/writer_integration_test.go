//go:build integration

package netfilter

import (
	"log/slog"
	"slices"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestWriterOnTheKernel runs a Writer against iptables-restore and netlink IP sets in
// a namespace: what it writes reads back equal (a restart writes nothing), jumps are
// inserted and deleted in the restore itself, and Cleanup leaves the tables as found.
func TestWriterOnTheKernel(t *testing.T) {
	ns := tnetns.NewNS(t, "nf", t.Name()).Handle
	ipt, err := iptables.NewAt(ipfamily.IPv4, ns)
	if err != nil {
		t.Fatal(err)
	}
	sets, err := ipset.NewAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sets.Close)
	before := map[string]map[string][]string{}
	for _, table := range testOwner.Tables {
		if before[table], err = ipt.SaveChains(table); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := NewWriter(testOwner, ipt, sets, slog.Default()).Apply(testRuleset(), true); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(testOwner, ipt, sets, slog.Default())
	if st, err := w.Apply(testRuleset(), true); err != nil || st.Writes() != 0 {
		t.Fatalf("apply after a restart: %+v, %v; the kernel should read back what was written", st, err)
	}

	// Someone deletes our nat jump and adds an entry: a full apply repairs both.
	jumps := testRuleset().Jumps
	if err := ipt.Restore([]byte("*nat\n-D OUTPUT " + jumps[1].Rule + "\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := sets.Add("kube-router-test", "10.6.6.6"); err != nil {
		t.Fatal(err)
	}
	st, err := w.Apply(testRuleset(), true)
	if err != nil || st.Drifted != 2 || st.JumpsInserted != 1 || st.EntriesChanged != 1 {
		t.Fatalf("repair: %+v, %v; want the jump and the entry back, 2 drifted", st, err)
	}
	nat, err := ipt.SaveChains(iptables.TableNAT)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(nat["OUTPUT"], jumps[1].Rule) {
		t.Fatalf("nat OUTPUT = %q", nat["OUTPUT"])
	}

	if err := w.Cleanup(); err != nil {
		t.Fatal(err)
	}
	for _, table := range testOwner.Tables {
		after, err := ipt.SaveChains(table)
		if err != nil {
			t.Fatal(err)
		}
		for name, rules := range after {
			if !slices.Equal(rules, before[table][name]) {
				t.Errorf("%s %s after cleanup: %q, before: %q", table, name, rules, before[table][name])
			}
		}
	}
	if left, _ := sets.ListAll(nil); len(left) != 0 {
		t.Errorf("sets left after cleanup: %v", left)
	}
}
