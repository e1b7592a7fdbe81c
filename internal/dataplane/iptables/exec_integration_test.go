//go:build integration

package iptables

import (
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestExecInNetns(t *testing.T) {
	ns := tnetns.NewNS(t, "ipt", t.Name()).Handle
	ipt, err := NewAt(ipfamily.IPv4, ns)
	if err != nil {
		t.Fatal(err)
	}
	data, err := Buffer{Table: TableFilter, Write: []Chain{
		{Name: "KUBE-ROUTER-TEST", Rules: []string{"-p sctp -m sctp --dport 9 -j DROP", "-j RETURN"}},
	}}.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if err := ipt.Restore(data); err != nil {
		t.Fatal(err)
	}
	if existed, err := ipt.EnsureRule(TableFilter, "FORWARD", false, "-j", "KUBE-ROUTER-TEST"); err != nil || existed {
		t.Fatalf("EnsureRule = %v, %v", existed, err)
	}
	if existed, err := ipt.EnsureRule(TableFilter, "FORWARD", false, "-j", "KUBE-ROUTER-TEST"); err != nil || !existed {
		t.Fatalf("second EnsureRule = %v, %v", existed, err)
	}
	chains, err := ipt.SaveChains(TableFilter)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(chains["KUBE-ROUTER-TEST"], "\n"); got != "-p sctp -m sctp --dport 9 -j DROP\n-j RETURN" {
		t.Errorf("KUBE-ROUTER-TEST = %q", got)
	}
	if got := chains["FORWARD"]; len(got) != 1 || got[0] != "-j KUBE-ROUTER-TEST" {
		t.Errorf("FORWARD = %q", got)
	}
	// The host namespace must not have seen any of it.
	host, err := New(ipfamily.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	hostChains, err := host.SaveChains(TableFilter)
	if err != nil {
		t.Fatal(err)
	}
	if _, leaked := hostChains["KUBE-ROUTER-TEST"]; leaked {
		t.Fatal("chain appeared in the host namespace")
	}
	if err := ipt.DeleteRule(TableFilter, "FORWARD", "-j", "KUBE-ROUTER-TEST"); err != nil {
		t.Fatal(err)
	}
	if err := ipt.DeleteRule(TableFilter, "FORWARD", "-j", "KUBE-ROUTER-TEST"); err != nil {
		t.Fatalf("deleting an absent rule: %v", err)
	}
	data, _ = Buffer{Table: TableFilter, Delete: []string{"KUBE-ROUTER-TEST"}}.Bytes()
	if err := ipt.Restore(data); err != nil {
		t.Fatal(err)
	}
	chains, _ = ipt.SaveChains(TableFilter)
	if _, ok := chains["KUBE-ROUTER-TEST"]; ok {
		t.Error("chain still there after delete")
	}
	ip6, err := NewAt(ipfamily.IPv6, ns)
	if err != nil {
		t.Fatal(err)
	}
	data, _ = Buffer{Table: TableFilter, Write: []Chain{{Name: "KUBE-ROUTER-TEST6", Rules: []string{"-s fd00::/64 -j RETURN"}}}}.Bytes()
	if err := ip6.Restore(data); err != nil {
		t.Fatal(err)
	}
}

// TestRestoredJumpReadsBackAsRuleText checks that a jump inserted through
// iptables-restore is listed by iptables-save exactly as RuleText renders it, so a
// reader that looks for it finds it and never inserts it twice; and that
// DeleteRule, given the same arguments, removes it.
func TestRestoredJumpReadsBackAsRuleText(t *testing.T) {
	ns := tnetns.NewNS(t, "ipt", t.Name()).Handle
	for _, proto := range []ipfamily.Family{ipfamily.IPv4, ipfamily.IPv6} {
		ipt, err := NewAt(proto, ns)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ipt.EnsureRule(TableNAT, "PREROUTING", true, "-j", "RETURN"); err != nil {
			t.Fatal(err)
		}
		args := []string{"-m", "comment", "--comment", "kube-routerd test jump", "-j", "KUBE-ROUTER-TEST"}
		data, err := Buffer{Table: TableNAT, Write: []Chain{{Name: "KUBE-ROUTER-TEST", Rules: []string{"-j RETURN"}}},
			Jumps: []Jump{{Chain: "PREROUTING", Rule: RuleText(args)}}}.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if err := ipt.Restore(data); err != nil {
			t.Fatal(err)
		}
		chains, err := ipt.SaveChains(TableNAT)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := chains["PREROUTING"], []string{RuleText(args), "-j RETURN"}; strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("IPv%d: PREROUTING = %q, want %q", proto, got, want)
		}
		if err := ipt.DeleteRule(TableNAT, "PREROUTING", args...); err != nil {
			t.Fatal(err)
		}
		if chains, err = ipt.SaveChains(TableNAT); err != nil {
			t.Fatal(err)
		}
		if got := chains["PREROUTING"]; len(got) != 1 {
			t.Errorf("IPv%d: after DeleteRule PREROUTING = %q", proto, got)
		}
	}
}
