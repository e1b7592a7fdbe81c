package netfilter

import (
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// testOwner has a chain in two tables, a prefix of chains and exact set names.
var testOwner = Owner{
	Name:          "test",
	Tables:        []string{iptables.TableFilter, iptables.TableNAT},
	Chains:        []string{"KUBE-ROUTER-TEST"},
	ChainPrefixes: []string{"KUBE-ROUTER-TP-"},
	Sets:          []string{"kube-router-test", "kube-router-test6"},
}

func testJump(table, chain, target string) Jump {
	return Jump{Table: table, Chain: chain, Rule: iptables.RuleText([]string{"-m", "comment", "--comment", "kube-routerd test", "-j", target})}
}

func testSet(family ipfamily.Family, entries ...string) ipset.SetEntries {
	name := "kube-router-test"
	if family == ipfamily.IPv6 {
		name += "6"
	}
	return ipset.SetEntries{Set: ipset.Set{Name: name, Type: ipset.HashIP, Family: family}, Entries: entries}
}

func testRuleset() *Ruleset {
	return &Ruleset{
		Sets: []ipset.SetEntries{testSet(ipfamily.IPv4, "10.0.0.1", "10.0.0.2")},
		Chains: []Chain{
			{Table: iptables.TableFilter, Name: "KUBE-ROUTER-TEST", Rules: []string{"-m set --match-set kube-router-test dst -j KUBE-ROUTER-TP-A"}},
			{Table: iptables.TableFilter, Name: "KUBE-ROUTER-TP-A", Rules: []string{"-j ACCEPT"}},
			{Table: iptables.TableNAT, Name: "KUBE-ROUTER-TEST", Rules: []string{"-j RETURN"}},
		},
		Jumps: []Jump{
			testJump(iptables.TableFilter, "INPUT", "KUBE-ROUTER-TEST"),
			testJump(iptables.TableNAT, "OUTPUT", "KUBE-ROUTER-TEST"),
		},
	}
}

func TestApplyWritesOnlyDifferencesAndRepairsDrift(t *testing.T) {
	ipt, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
	// Somebody else's: a rule in a built-in chain, a chain, a jump into our chain
	// without our comment, and a set. All of it must survive everything below.
	if err := ipt.Restore([]byte("*filter\n:KUBE-ROUTER-OTHER - [0:0]\n-A KUBE-ROUTER-OTHER -j RETURN\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := ipt.EnsureRule(iptables.TableFilter, "INPUT", true, "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	if err := sets.Create(ipset.Set{Name: "kube-router-other", Type: ipset.HashIP, Family: ipfamily.IPv4}); err != nil {
		t.Fatal(err)
	}
	// The other family's set of the same Owner is not this writer's either.
	if err := sets.Create(testSet(ipfamily.IPv6).Set); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(testOwner, ipt, sets, slog.Default())
	st, err := w.Apply(testRuleset(), true)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChainsWritten != 3 || st.JumpsInserted != 2 || st.SetsWritten != 1 || st.EntriesChanged != 2 || len(ipt.Restores) != 2 {
		t.Fatalf("first apply: %+v with %d restores; want 3 chains and 2 jumps in one restore, 2 entries", st, len(ipt.Restores)-1)
	}
	want := ipt.Dump() + sets.Dump()

	// Unchanged: nothing is written, incrementally or after a restart.
	restores, ops := len(ipt.Restores), sets.Ops
	if st, err := w.Apply(testRuleset(), false); err != nil || st.Writes() != 0 {
		t.Fatalf("unchanged incremental apply: %+v, %v", st, err)
	}
	if st, err := NewWriter(testOwner, ipt, sets, slog.Default()).Apply(testRuleset(), true); err != nil || st.Writes() != 0 || st.Drifted != 0 {
		t.Fatalf("apply after a restart: %+v, %v", st, err)
	}
	if len(ipt.Restores) != restores || sets.Ops != ops {
		t.Fatalf("unchanged applies wrote %d buffers and %d set ops", len(ipt.Restores)-restores, sets.Ops-ops)
	}

	// Drift: a chain flushed, a jump deleted, a set entry added, a jump doubled.
	if err := ipt.Restore([]byte("*filter\n:KUBE-ROUTER-TP-A - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	j := testRuleset().Jumps
	if err := ipt.Restore([]byte("*nat\n-D OUTPUT " + j[1].Rule + "\nCOMMIT\n*filter\n-I INPUT " + j[0].Rule + "\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := sets.Add("kube-router-test", "10.6.6.6"); err != nil {
		t.Fatal(err)
	}
	if st, err := w.Apply(testRuleset(), false); err != nil || st.Writes() != 0 {
		t.Fatalf("an incremental apply trusts its record: %+v, %v", st, err)
	}
	st, err = w.Apply(testRuleset(), true)
	if err != nil {
		t.Fatal(err)
	}
	if st.Drifted != 4 {
		t.Errorf("full apply counted %d drifted objects; want 4 (chain, two jumps, set)", st.Drifted)
	}
	if got := ipt.Dump() + sets.Dump(); got != want {
		t.Fatalf("full apply did not repair drift:\n%s\nwant:\n%s", got, want)
	}

	// Less wanted: the chain, the jump and the set that go are removed, in order.
	less := testRuleset()
	less.Sets, less.Chains, less.Jumps = nil, less.Chains[2:], less.Jumps[1:]
	st, err = w.Apply(less, false)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChainsDeleted != 2 || st.JumpsDeleted != 1 || st.SetsDestroyed != 1 {
		t.Fatalf("shrinking: %+v; want 2 chains, 1 jump, 1 set gone", st)
	}

	if err := w.Cleanup(); err != nil {
		t.Fatal(err)
	}
	wantAfter := `*filter
:INPUT
-A INPUT -j ACCEPT
:FORWARD
:OUTPUT
:KUBE-ROUTER-OTHER
-A KUBE-ROUTER-OTHER -j RETURN
set kube-router-other hash:ip inet
set kube-router-test6 hash:ip inet6
`
	if got := ipt.Dump() + sets.Dump(); got != wantAfter {
		t.Fatalf("after cleanup:\n%s\nwant:\n%s", got, wantAfter)
	}
}

func TestForeignJumpIntoOurChainIsLeftAlone(t *testing.T) {
	ipt, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
	w := NewWriter(testOwner, ipt, sets, slog.Default())
	if _, err := w.Apply(testRuleset(), true); err != nil {
		t.Fatal(err)
	}
	if _, err := ipt.EnsureRule(iptables.TableFilter, "FORWARD", true, "-j", "KUBE-ROUTER-TEST"); err != nil {
		t.Fatal(err)
	}
	if st, err := w.Apply(testRuleset(), true); err != nil || st.Writes() != 0 {
		t.Fatalf("apply with someone's jump into our chain: %+v, %v", st, err)
	}
	chains, _ := ipt.SaveChains(iptables.TableFilter)
	if len(chains["FORWARD"]) != 1 {
		t.Fatalf("FORWARD = %v; the jump without our comment is not ours to delete", chains["FORWARD"])
	}
}

func TestApplyRefusesWhatTheOwnerDoesNotOwn(t *testing.T) {
	w := NewWriter(testOwner, iptables.NewFake(ipfamily.IPv4), ipset.NewFake(), slog.Default())
	for name, rs := range map[string]*Ruleset{
		"foreign chain":      {Chains: []Chain{{Table: iptables.TableFilter, Name: "KUBE-ROUTER-OTHER"}}},
		"table not declared": {Chains: []Chain{{Table: iptables.TableMangle, Name: "KUBE-ROUTER-TEST"}}},
		"foreign set":        {Sets: []ipset.SetEntries{{Set: ipset.Set{Name: "kube-router-other", Type: ipset.HashIP, Family: ipfamily.IPv4}}}},
		"other family's set": {Sets: []ipset.SetEntries{testSet(ipfamily.IPv6)}},
		"jump to foreign":    {Jumps: []Jump{testJump(iptables.TableFilter, "INPUT", "KUBE-ROUTER-OTHER")}},
		"jump without mark":  {Jumps: []Jump{{Table: iptables.TableFilter, Chain: "INPUT", Rule: "-j KUBE-ROUTER-TEST"}}},
	} {
		if _, err := w.Apply(rs, true); err == nil || !strings.Contains(err.Error(), "test: ") {
			t.Errorf("%s: err %v; want a refusal naming the owner", name, err)
		}
	}
}

func TestSwapReplacesMostlyChangedSets(t *testing.T) {
	sets := ipset.NewFake()
	w := NewWriter(testOwner, iptables.NewFake(ipfamily.IPv4), sets, slog.Default())
	var old, next []string
	for i := range 100 {
		old = append(old, "10.0.0."+strconv.Itoa(i))
		next = append(next, "10.0.1."+strconv.Itoa(i))
	}
	slices.Sort(old)
	slices.Sort(next)
	if _, err := w.Apply(&Ruleset{Sets: []ipset.SetEntries{testSet(ipfamily.IPv4, old...)}}, true); err != nil {
		t.Fatal(err)
	}
	ops := sets.Ops
	if _, err := w.Apply(&Ruleset{Sets: []ipset.SetEntries{testSet(ipfamily.IPv4, next...)}}, false); err != nil {
		t.Fatal(err)
	}
	dump := sets.Dump()
	if strings.Contains(dump, "10.0.0.") || !strings.Contains(dump, "10.0.1.99") || strings.Contains(dump, TempSetSuffix+" ") {
		t.Fatalf("swap left:\n%s", dump)
	}
	if got := sets.Ops - ops; got >= 200 {
		t.Errorf("replacing 100 of 100 entries took %d set operations; a swap needs about 105", got)
	}
}

func TestLeftoverTempSetIsDestroyed(t *testing.T) {
	sets := ipset.NewFake()
	tmp := testSet(ipfamily.IPv4).Set
	tmp.Name += TempSetSuffix
	if err := sets.Create(tmp); err != nil {
		t.Fatal(err)
	}
	w := NewWriter(testOwner, iptables.NewFake(ipfamily.IPv4), sets, slog.Default())
	st, err := w.Apply(testRuleset(), true)
	if err != nil {
		t.Fatal(err)
	}
	if st.SetsDestroyed != 1 || strings.Contains(sets.Dump(), TempSetSuffix) {
		t.Fatalf("%+v\n%s", st, sets.Dump())
	}
}

func TestFailedRestoreMakesTheNextApplyReadTheKernel(t *testing.T) {
	ipt, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
	w := NewWriter(testOwner, ipt, sets, slog.Default())
	broken := testRuleset()
	broken.Chains[0].Rules = []string{"-j KUBE-ROUTER-TP-MISSING"}
	if _, err := w.Apply(broken, true); err == nil {
		t.Fatal("a chain jumping to a missing chain was accepted")
	}
	// Someone else fixes nothing; our next, correct apply must not trust a record of
	// a write that failed.
	if _, err := w.Apply(testRuleset(), false); err != nil {
		t.Fatal(err)
	}
	chains, _ := ipt.SaveChains(iptables.TableFilter)
	if len(chains["KUBE-ROUTER-TEST"]) != 1 || len(chains["INPUT"]) != 1 {
		t.Fatalf("after the failed and the good apply:\n%s", ipt.Dump())
	}
}

// A chain replaced by another in one apply (a pod gone, another come) is deleted, and
// with it the last rule naming its set, so the set can be destroyed.
func TestReplacedChainIsDeletedWithItsSet(t *testing.T) {
	ipt, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
	w := NewWriter(testOwner, ipt, sets, slog.Default())
	chain := func(name, set string) Chain {
		return Chain{Table: iptables.TableFilter, Name: name, Rules: []string{"-m set --match-set " + set + " src -j RETURN"}}
	}
	set := func(name string) ipset.SetEntries {
		return ipset.SetEntries{Set: ipset.Set{Name: name, Type: ipset.HashIP, Family: ipfamily.IPv4}}
	}
	first := &Ruleset{Sets: []ipset.SetEntries{set("kube-router-test")}, Chains: []Chain{chain("KUBE-ROUTER-TP-A", "kube-router-test")}}
	if _, err := w.Apply(first, true); err != nil {
		t.Fatal(err)
	}
	second := &Ruleset{Sets: []ipset.SetEntries{set("kube-router-test6")}, Chains: []Chain{chain("KUBE-ROUTER-TP-B", "kube-router-test6")}}
	second.Sets[0].Family = ipfamily.IPv4
	st, err := w.Apply(second, false)
	if err != nil {
		t.Fatalf("%+v: %v", st, err)
	}
	if st.ChainsDeleted != 1 || st.SetsDestroyed != 1 {
		t.Fatalf("%+v; want the old chain deleted and its set destroyed", st)
	}
	if d := ipt.Dump(); strings.Contains(d, "KUBE-ROUTER-TP-A") {
		t.Fatalf("old chain left:\n%s", d)
	}
}

// restoreWatcher records what a set holds at each iptables-restore.
type restoreWatcher struct {
	*iptables.Fake
	sets   *ipset.Fake
	set    string
	atEach [][]string
}

func (r *restoreWatcher) Restore(data []byte) error {
	s, err := r.sets.List(r.set)
	if err != nil {
		return err
	}
	r.atEach = append(r.atEach, s.Entries)
	return r.Fake.Restore(data)
}

// A ledger vouches for chains: an address enters it only after the write that brings
// in its chains, and leaves it before the write that takes them away. A ledger new to
// the kernel is filled before the write that brings in the rules naming it.
func TestLedgerEntriesComeAfterTheirChainsAndGoBeforeThem(t *testing.T) {
	sets := ipset.NewFake()
	ipt := &restoreWatcher{Fake: iptables.NewFake(ipfamily.IPv4), sets: sets, set: "kube-router-test"}
	w := NewWriter(testOwner, ipt, sets, slog.Default())
	podChain := func(name string) Chain {
		return Chain{Table: iptables.TableFilter, Name: "KUBE-ROUTER-TP-" + name, Rules: []string{"-j RETURN"}}
	}
	ruleset := func(pods ...string) *Ruleset {
		top := Chain{Table: iptables.TableFilter, Name: "KUBE-ROUTER-TEST", Rules: []string{"-m set ! --match-set kube-router-test dst -j DROP"}}
		rs := &Ruleset{Ledgers: []ipset.SetEntries{testSet(ipfamily.IPv4)}}
		for _, p := range pods {
			rs.Chains = append(rs.Chains, podChain(p))
			top.Rules = append(top.Rules, "-d 10.0.0."+p+"/32 -j KUBE-ROUTER-TP-"+p)
			rs.Ledgers[0].Entries = append(rs.Ledgers[0].Entries, "10.0.0."+p)
		}
		rs.Chains = append(rs.Chains, top)
		return rs
	}
	steps := []struct {
		what          string
		pods          []string
		atRestore, at []string
	}{
		{"a new ledger, filled with the write that brings its rules", []string{"1"}, []string{"10.0.0.1"}, []string{"10.0.0.1"}},
		{"a pod comes: its address only after its chain", []string{"1", "2"}, []string{"10.0.0.1"}, []string{"10.0.0.1", "10.0.0.2"}},
		{"a pod goes: its address before its chain", []string{"2"}, []string{"10.0.0.2"}, []string{"10.0.0.2"}},
		{"one goes, one comes", []string{"3"}, nil, []string{"10.0.0.3"}},
	}
	for i, s := range steps {
		restores := len(ipt.atEach)
		if _, err := w.Apply(ruleset(s.pods...), i == 0); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		if len(ipt.atEach) != restores+1 {
			t.Fatalf("%s: %d restores; want 1", s.what, len(ipt.atEach)-restores)
		}
		if got := ipt.atEach[restores]; !slices.Equal(got, s.atRestore) {
			t.Errorf("%s: the ledger held %v when the chains were written; want %v", s.what, got, s.atRestore)
		}
		if got, _ := sets.List("kube-router-test"); !slices.Equal(got.Entries, s.at) {
			t.Errorf("%s: the ledger holds %v after the apply; want %v", s.what, got.Entries, s.at)
		}
	}
	// A restart finds the ledger as it left it and writes nothing.
	if st, err := NewWriter(testOwner, ipt, sets, slog.Default()).Apply(ruleset("3"), true); err != nil || st.Writes() != 0 {
		t.Fatalf("apply after a restart: %+v, %v", st, err)
	}
	// Without the ledger, the chains naming it go first, then the set.
	if st, err := w.Apply(&Ruleset{}, false); err != nil || st.SetsDestroyed != 1 {
		t.Fatalf("dropping the ledger: %+v, %v", st, err)
	}
}

// countingIPTables counts the kernel reads of the iptables it wraps.
type countingIPTables struct {
	iptables.Interface
	saves int
}

func (c *countingIPTables) SaveChains(table string) (map[string][]string, error) {
	c.saves++
	return c.Interface.SaveChains(table)
}

// TestReadAheadSavesTheFirstFullApplyItsRead: on a restart, a full Apply right after
// ReadAhead starts from what ReadAhead read (no second read of the kernel) and finds
// nothing to write; the full Apply after it reads the kernel again.
func TestReadAheadSavesTheFirstFullApplyItsRead(t *testing.T) {
	fake, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
	if _, err := NewWriter(testOwner, fake, sets, slog.Default()).Apply(testRuleset(), true); err != nil {
		t.Fatal(err)
	}
	restores, ops := len(fake.Restores), sets.Ops

	ipt := &countingIPTables{Interface: fake}
	restarted := NewWriter(testOwner, ipt, sets, slog.Default())
	if _, err := restarted.ApplySets(testRuleset().Sets); err == nil {
		t.Error("set members were changed before any Apply")
	}
	if err := restarted.ReadAhead(); err != nil {
		t.Fatal(err)
	}
	read := ipt.saves
	if _, err := restarted.Apply(testRuleset(), true); err != nil {
		t.Fatal(err)
	}
	if ipt.saves != read {
		t.Errorf("the full Apply after ReadAhead read the kernel again (%d reads, %d before)", ipt.saves, read)
	}
	if len(fake.Restores) != restores || sets.Ops != ops {
		t.Errorf("a restart on the programmed kernel wrote: %d restores, %d set operations", len(fake.Restores)-restores, sets.Ops-ops)
	}
	if _, err := restarted.Apply(testRuleset(), true); err != nil {
		t.Fatal(err)
	}
	if ipt.saves == read {
		t.Error("the second full Apply did not read the kernel")
	}

	// A read ahead long before the first sync (an API server that did not answer)
	// is not trusted.
	if err := restarted.ReadAhead(); err != nil {
		t.Fatal(err)
	}
	restarted.readAt = restarted.readAt.Add(-2 * readAheadFresh)
	read = ipt.saves
	if _, err := restarted.Apply(testRuleset(), true); err != nil {
		t.Fatal(err)
	}
	if ipt.saves == read {
		t.Error("a full Apply trusted a read ahead older than readAheadFresh")
	}
}
