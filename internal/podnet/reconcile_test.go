package podnet

import (
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

func TestEgressWriterWritesOnlyDifferencesAndRepairsDrift(t *testing.T) {
	ipt4, ipt6, sets := iptables.NewFake(ipfamily.IPv4), iptables.NewFake(ipfamily.IPv6), ipset.NewFake()
	r := newEgressWriter(Dataplane{IPTables: []iptables.Interface{ipt4, ipt6}, IPSets: sets}, slog.Default())
	v4 := egressFamily{Family: ipfamily.IPv4, Sources: prefixes("10.244.1.0/24"), ClusterDestinations: []string{"10.244.1.0/24", "10.244.2.0/24", "192.0.2.2/32"}}
	if err := r.sync([]egressFamily{v4}, true); err != nil {
		t.Fatal(err)
	}
	chains, _ := ipt4.SaveChains(iptables.TableNAT)
	if want := egressRules(v4); !slices.Equal(chains[chainEgress], want) {
		t.Errorf("chain %v, want %v", chains[chainEgress], want)
	}
	if !slices.Contains(chains["POSTROUTING"], iptables.RuleText(egressJump)) {
		t.Errorf("no jump in POSTROUTING: %v", chains["POSTROUTING"])
	}
	if got, _ := sets.List(clusterDstV4); !slices.Equal(got.Entries, v4.ClusterDestinations) {
		t.Errorf("set %v", got.Entries)
	}
	if c6, _ := ipt6.SaveChains(iptables.TableNAT); c6[chainEgress] != nil {
		t.Errorf("IPv6 chain without IPv6 pods: %v", c6)
	}

	if err := r.sync([]egressFamily{v4}, false); err != nil || r.writes != 0 {
		t.Errorf("unchanged: %d writes, err %v", r.writes, err)
	}
	moved := v4
	moved.ClusterDestinations = []string{"10.244.1.0/24", "10.244.3.0/24", "192.0.2.2/32"}
	if err := r.sync([]egressFamily{moved}, false); err != nil || r.writes != 2 {
		t.Errorf("one node replaced: %d writes (want one add, one delete), err %v", r.writes, err)
	}

	// Someone deletes our jump: the next full sync puts it back.
	if err := ipt4.DeleteRule(iptables.TableNAT, "POSTROUTING", egressJump...); err != nil {
		t.Fatal(err)
	}
	if err := r.sync([]egressFamily{moved}, true); err != nil || r.writes != 1 {
		t.Errorf("drift repair: %d writes, err %v", r.writes, err)
	}

	if err := r.sync(nil, false); err != nil {
		t.Fatal(err)
	}
	dump := ipt4.Dump() + sets.Dump()
	for _, name := range []string{chainEgress, clusterDstV4} {
		if strings.Contains(dump, name) {
			t.Errorf("switched off, %s still there:\n%s", name, dump)
		}
	}
}
