package netfilter

import (
	"errors"
	"fmt"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
)

// FloorLoad is one IP family's Ruleset and the iptables of a fresh network namespace
// it is loaded into by MeasureFloor.
type FloorLoad struct {
	IPTables iptables.Interface
	Ruleset  *Ruleset
}

// MeasureFloor loads rulesets into an empty network namespace the cheapest way the
// kernel offers and returns how long the kernel work took: the benchmarks' "kernel
// floor", what a full sync that creates the same state is compared with. Every set is
// created and filled over netlink (Create, then AddEntries), then each family's chains
// and jumps go in one bare iptables-restore, with no reading, diffing, ownership
// checks or records. The restore input is rendered before the clock starts. sets and
// every load's IPTables must belong to a namespace that holds none of it yet. Only
// benchmarks use it.
func MeasureFloor(sets ipset.Interface, loads ...FloorLoad) (time.Duration, error) {
	inputs := make([][]byte, len(loads))
	for i, l := range loads {
		var err error
		if inputs[i], err = restoreInput(l.Ruleset); err != nil {
			return 0, err
		}
	}
	start := time.Now()
	for _, l := range loads {
		for _, s := range l.Ruleset.Sets {
			if err := sets.Create(s.Set); err != nil {
				return 0, fmt.Errorf("kernel floor: %w", err)
			}
			if err := errors.Join(sets.AddEntries(s.Name, s.Entries)...); err != nil {
				return 0, fmt.Errorf("kernel floor: %w", err)
			}
		}
	}
	for i, l := range loads {
		if len(inputs[i]) == 0 {
			continue
		}
		if err := l.IPTables.Restore(inputs[i]); err != nil {
			return 0, fmt.Errorf("kernel floor: %w", err)
		}
	}
	return time.Since(start), nil
}

// restoreInput renders every chain and jump of rs as iptables-restore input, one
// section per table in the order the tables first appear.
func restoreInput(rs *Ruleset) ([]byte, error) {
	var tables []string
	buffers := map[string]*iptables.Buffer{}
	buffer := func(table string) *iptables.Buffer {
		if buffers[table] == nil {
			buffers[table] = &iptables.Buffer{Table: table}
			tables = append(tables, table)
		}
		return buffers[table]
	}
	for _, c := range rs.Chains {
		b := buffer(c.Table)
		b.Write = append(b.Write, iptables.Chain{Name: c.Name, Rules: c.Rules})
	}
	for _, j := range rs.Jumps {
		b := buffer(j.Table)
		b.Jumps = append(b.Jumps, iptables.Jump{Chain: j.Chain, Rule: j.Rule})
	}
	var data []byte
	for _, t := range tables {
		section, err := buffers[t].Bytes()
		if err != nil {
			return nil, fmt.Errorf("kernel floor: %w", err)
		}
		data = append(data, section...)
	}
	return data, nil
}
