package iptables

import (
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

func TestBufferRefusesChainsWeDoNotOwn(t *testing.T) {
	_, err := Buffer{Table: TableFilter, Write: []Chain{{Name: "FORWARD", Rules: []string{"-j DROP"}}}}.Bytes()
	if err == nil {
		t.Fatal("rendering a buffer that rewrites FORWARD succeeded")
	}
	f := NewFake(ipfamily.IPv4)
	if err := f.Restore([]byte("*filter\n-A INPUT -j DROP\nCOMMIT\n")); err == nil {
		t.Fatal("restoring a rule into INPUT succeeded")
	}
	for _, line := range []string{"-I INPUT -j DROP", "-I INPUT -m comment --comment KUBE-ROUTER-X -j ACCEPT", "-I INPUT -m set --match-set x dst"} {
		if err := f.Restore([]byte("*filter\n" + line + "\nCOMMIT\n")); err == nil {
			t.Errorf("restoring %q succeeded", line)
		}
	}
	if _, err := (Buffer{Table: TableFilter, Jumps: []Jump{{Chain: "INPUT", Rule: "-j DROP"}}}).Bytes(); err == nil {
		t.Error("rendering a jump to DROP succeeded")
	}
}

func TestJumpsAreInsertedAtTheTopOfBuiltinChains(t *testing.T) {
	f := NewFake(ipfamily.IPv4)
	if _, err := f.EnsureRule(TableFilter, "INPUT", true, "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	rule := RuleText([]string{"-m", "comment", "--comment", "to our chain", "-j", "KUBE-ROUTER-X"})
	data, err := Buffer{Table: TableFilter, Write: []Chain{{Name: "KUBE-ROUTER-X", Rules: []string{"-j RETURN"}}},
		Jumps: []Jump{{Chain: "INPUT", Rule: rule}}}.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(data); err != nil {
		t.Fatal(err)
	}
	chains, err := f.SaveChains(TableFilter)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{`-m comment --comment "to our chain" -j KUBE-ROUTER-X`, "-j ACCEPT"}; strings.Join(chains["INPUT"], "\n") != strings.Join(want, "\n") {
		t.Errorf("INPUT is %q, want %q", chains["INPUT"], want)
	}
}

func TestFakeRestoreRewritesOnlyNamedChains(t *testing.T) {
	f := NewFake(ipfamily.IPv4)
	if _, err := f.EnsureRule(TableFilter, "FORWARD", true, "-s", "192.0.2.1", "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	write := func(b Buffer) {
		t.Helper()
		data, err := b.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Restore(data); err != nil {
			t.Fatal(err)
		}
	}
	write(Buffer{Table: TableFilter, Write: []Chain{
		{Name: "KUBE-ROUTER-A", Rules: []string{"-j KUBE-ROUTER-B"}},
		{Name: "KUBE-ROUTER-B", Rules: []string{"-j DROP"}},
	}})
	if existed, err := f.EnsureRule(TableFilter, "FORWARD", false, "-j", "KUBE-ROUTER-A"); err != nil || existed {
		t.Fatalf("EnsureRule = %v, %v; want inserted", existed, err)
	}
	if existed, _ := f.EnsureRule(TableFilter, "FORWARD", false, "-j", "KUBE-ROUTER-A"); !existed {
		t.Fatal("second EnsureRule inserted again")
	}
	write(Buffer{Table: TableFilter, Write: []Chain{{Name: "KUBE-ROUTER-A", Rules: []string{"-j RETURN"}}}, Delete: []string{"KUBE-ROUTER-B"}})
	want := `*filter
:INPUT
:FORWARD
-A FORWARD -j KUBE-ROUTER-A
-A FORWARD -s 192.0.2.1 -j ACCEPT
:OUTPUT
:KUBE-ROUTER-A
-A KUBE-ROUTER-A -j RETURN
`
	if got := f.Dump(); got != want {
		t.Errorf("Dump:\n%s\nwant:\n%s", got, want)
	}
	// A transaction that would leave a dangling jump is refused as a whole.
	if err := f.Restore([]byte("*filter\n:KUBE-ROUTER-A - [0:0]\n-A KUBE-ROUTER-A -j KUBE-ROUTER-GONE\nCOMMIT\n")); err == nil {
		t.Fatal("restore with a jump to a missing chain succeeded")
	}
	if !strings.Contains(f.Dump(), "-A KUBE-ROUTER-A -j RETURN") {
		t.Error("failed restore changed the table")
	}
}

// The Fake stages a transaction apart from the committed table: a refused one leaves
// no trace, including appends to chains it did not redeclare.
func TestFakeRestoreRefusedTransactionLeavesNoTrace(t *testing.T) {
	f := NewFake(ipfamily.IPv4)
	if err := f.Restore([]byte("*filter\n:KUBE-ROUTER-A - [0:0]\n:KUBE-ROUTER-B - [0:0]\n-A KUBE-ROUTER-A -j KUBE-ROUTER-B\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	before := f.Dump()
	for name, data := range map[string]string{
		"deleting a chain another one still jumps to": "*filter\n:KUBE-ROUTER-B - [0:0]\n-X KUBE-ROUTER-B\nCOMMIT\n",
		"appending to a chain, then a dangling jump":  "*filter\n-A KUBE-ROUTER-A -j DROP\n-A KUBE-ROUTER-B -j KUBE-ROUTER-GONE\nCOMMIT\n",
	} {
		if err := f.Restore([]byte(data)); err == nil {
			t.Errorf("%s: restore succeeded", name)
		}
		if got := f.Dump(); got != before {
			t.Errorf("%s: refused restore changed the table:\n%s\nwant:\n%s", name, got, before)
		}
	}
	if err := f.Restore([]byte("*filter\n-A KUBE-ROUTER-A -j DROP\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if got := f.Dump(); !strings.Contains(got, "-A KUBE-ROUTER-A -j KUBE-ROUTER-B\n-A KUBE-ROUTER-A -j DROP\n") {
		t.Errorf("append to a committed chain:\n%s\nwant the new rule after the existing one", got)
	}
}
