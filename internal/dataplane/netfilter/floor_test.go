package netfilter

import (
	"log/slog"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

func TestMeasureFloorLeavesWhatApplyLeavesInOneRestorePerFamily(t *testing.T) {
	v6 := &Ruleset{
		Sets:   []ipset.SetEntries{testSet(ipfamily.IPv6, "fd00::1")},
		Chains: []Chain{{Table: iptables.TableFilter, Name: "KUBE-ROUTER-TEST", Rules: []string{"-m set --match-set kube-router-test6 dst -j ACCEPT"}}},
		Jumps:  []Jump{testJump(iptables.TableFilter, "INPUT", "KUBE-ROUTER-TEST")},
	}
	// What the Writers leave in an empty namespace.
	want4, want6, wantSets := iptables.NewFake(ipfamily.IPv4), iptables.NewFake(ipfamily.IPv6), ipset.NewFake()
	for _, l := range []FloorLoad{{want4, testRuleset()}, {want6, v6}} {
		if _, err := NewWriter(testOwner, l.IPTables, wantSets, slog.Default()).Apply(l.Ruleset, true); err != nil {
			t.Fatal(err)
		}
	}
	ipt4, ipt6, sets := iptables.NewFake(ipfamily.IPv4), iptables.NewFake(ipfamily.IPv6), ipset.NewFake()
	took, err := MeasureFloor(sets, FloorLoad{ipt4, testRuleset()}, FloorLoad{ipt6, v6})
	if err != nil {
		t.Fatal(err)
	}
	if took <= 0 {
		t.Errorf("took %v, want a positive duration", took)
	}
	for _, c := range []struct {
		what      string
		got, want string
	}{
		{"IPv4 tables", ipt4.Dump(), want4.Dump()},
		{"IPv6 tables", ipt6.Dump(), want6.Dump()},
		{"sets", sets.Dump(), wantSets.Dump()},
	} {
		if c.got != c.want {
			t.Errorf("%s after the floor load:\n%s\nafter Apply:\n%s", c.what, c.got, c.want)
		}
	}
	if len(ipt4.Restores) != 1 || len(ipt6.Restores) != 1 {
		t.Errorf("restores: %d IPv4, %d IPv6; want one each", len(ipt4.Restores), len(ipt6.Restores))
	}
}

func TestMeasureFloorRefusesChainsThatAreNotOurs(t *testing.T) {
	rs := &Ruleset{Chains: []Chain{{Table: iptables.TableFilter, Name: "FORWARD", Rules: []string{"-j ACCEPT"}}}}
	if _, err := MeasureFloor(ipset.NewFake(), FloorLoad{iptables.NewFake(ipfamily.IPv4), rs}); err == nil {
		t.Fatal("a ruleset that rewrites a built-in chain was loaded")
	}
}
