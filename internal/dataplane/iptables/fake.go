package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// builtinChains are the chains each table starts with, in iptables-save order.
var builtinChains = map[string][]string{
	TableFilter: {"INPUT", "FORWARD", "OUTPUT"},
	TableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	TableMangle: {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	TableRaw:    {"PREROUTING", "OUTPUT"},
}

// Fake is an in-memory Interface for tests. Restore understands the subset of the
// iptables-restore format that Buffer writes plus -I, -D and -F; Dump prints the
// state as text.
type Fake struct {
	mu     sync.Mutex
	proto  ipfamily.Family
	tables map[string]map[string][]string
	// Restores records every buffer passed to Restore, so tests can check what a sync
	// rewrote.
	Restores [][]byte
}

var _ Interface = (*Fake)(nil)

// NewFake returns a Fake with the built-in chains of every table, all empty.
func NewFake(proto ipfamily.Family) *Fake {
	f := &Fake{proto: proto, tables: map[string]map[string][]string{}}
	for t, chains := range builtinChains {
		f.tables[t] = map[string][]string{}
		for _, c := range chains {
			f.tables[t][c] = nil
		}
	}
	return f
}

// Family implements Interface.
func (f *Fake) Family() ipfamily.Family { return f.proto }

// Restore implements Interface. Like iptables-restore, a table section is applied
// entirely or not at all. Its cost is proportional to the chains it touches, like
// the kernel's, so benchmarks of small changes do not measure the Fake.
func (f *Fake) Restore(data []byte) error {
	if err := checkRestoreInput(data); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Restores = append(f.Restores, slices.Clone(data))
	var (
		table   string
		working *pendingTable
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fail := func(format string, args ...any) error {
			return fmt.Errorf("restore line %d %q: %s", n, line, fmt.Sprintf(format, args...))
		}
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			if _, ok := f.tables[table]; !ok {
				return fail("unknown table")
			}
			working = &pendingTable{base: f.tables[table], changed: map[string][]string{}, deleted: map[string]bool{}}
		case line == "COMMIT":
			if working == nil {
				return fail("COMMIT outside a table")
			}
			if err := working.checkJumps(); err != nil {
				return fail("%v", err)
			}
			working.commit()
			working = nil
		case working == nil:
			return fail("outside a table")
		case strings.HasPrefix(line, ":"):
			working.set(strings.Fields(line[1:])[0], nil)
		default:
			op, rest, _ := strings.Cut(line, " ")
			chain, rule, _ := strings.Cut(rest, " ")
			rules, exists := working.touch(chain)
			if !exists {
				return fail("no chain %s", chain)
			}
			switch op {
			case "-A":
				working.set(chain, append(rules, rule))
			case "-I":
				working.set(chain, append([]string{rule}, rules...))
			case "-D":
				i := slices.Index(rules, rule)
				if i < 0 {
					return fail("no such rule")
				}
				working.set(chain, slices.Delete(rules, i, i+1))
			case "-F":
				working.set(chain, nil)
			case "-X":
				if len(rules) > 0 {
					return fail("chain %s is not empty", chain)
				}
				working.delete(chain)
			default:
				return fail("unsupported operation %s", op)
			}
		}
	}
	if working != nil {
		return fmt.Errorf("restore: table %s without COMMIT", table)
	}
	return sc.Err()
}

// pendingTable is a table section being restored: the chains it changed or
// deleted over the committed table, which it leaves alone until commit.
type pendingTable struct {
	base    map[string][]string
	changed map[string][]string // chains written, each a private copy
	deleted map[string]bool
}

// touch returns the rules of chain, copying a committed chain into changed first so
// that edits never reach the committed table.
func (p *pendingTable) touch(chain string) ([]string, bool) {
	if rules, ok := p.changed[chain]; ok {
		return rules, true
	}
	if p.deleted[chain] {
		return nil, false
	}
	rules, ok := p.base[chain]
	if ok {
		rules = slices.Clone(rules)
		p.changed[chain] = rules
	}
	return rules, ok
}

func (p *pendingTable) set(chain string, rules []string) {
	delete(p.deleted, chain)
	p.changed[chain] = rules
}

func (p *pendingTable) delete(chain string) {
	delete(p.changed, chain)
	p.deleted[chain] = true
}

func (p *pendingTable) exists(chain string) bool {
	if _, ok := p.changed[chain]; ok {
		return true
	}
	_, ok := p.base[chain]
	return ok && !p.deleted[chain]
}

// checkJumps fails when a rule jumps to a chain that does not exist, as the kernel
// would: rules written now must find their targets, and a deleted chain must have
// no rule left jumping to it.
func (p *pendingTable) checkJumps() error {
	for name, rules := range p.changed {
		if err := checkRuleTargets(name, rules, p.exists); err != nil {
			return err
		}
	}
	if len(p.deleted) == 0 {
		return nil
	}
	for name, rules := range p.base {
		if _, rewritten := p.changed[name]; rewritten || p.deleted[name] {
			continue
		}
		if err := checkRuleTargets(name, rules, p.exists); err != nil {
			return err
		}
	}
	return nil
}

func (p *pendingTable) commit() {
	for name := range p.deleted {
		delete(p.base, name)
	}
	for name, rules := range p.changed {
		p.base[name] = rules
	}
}

// checkRuleTargets fails when one of chain's rules jumps to a chain that does not exist.
func checkRuleTargets(chain string, rules []string, exists func(string) bool) error {
	for _, r := range rules {
		f := strings.Fields(r)
		for i := 0; i+1 < len(f); i++ {
			if f[i] != "-j" && f[i] != "-g" {
				continue
			}
			target := f[i+1]
			if strings.ToUpper(target) != target || isStandardTarget(target) {
				continue
			}
			if !exists(target) {
				return fmt.Errorf("chain %s jumps to missing chain %s", chain, target)
			}
		}
	}
	return nil
}

func isStandardTarget(t string) bool {
	switch t {
	case "ACCEPT", "DROP", "RETURN", "REJECT", "MARK", "NFLOG", "LOG", "DNAT", "SNAT",
		"MASQUERADE", "CONNMARK", "NOTRACK", "CT", "TPROXY", "REDIRECT", "TCPMSS":
		return true
	}
	return false
}

func cloneChains(in map[string][]string) map[string][]string {
	out := make(map[string][]string, len(in))
	for k, v := range in {
		out[k] = slices.Clone(v)
	}
	return out
}

// SaveChains implements Interface.
func (f *Fake) SaveChains(table string) (map[string][]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("unknown table %s", table)
	}
	return cloneChains(t), nil
}

// EnsureRule implements Interface.
func (f *Fake) EnsureRule(table, chain string, appendRule bool, rule ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, ok := f.tables[table][chain]
	if !ok {
		return false, fmt.Errorf("ensuring rule in %s/%s: no such chain", table, chain)
	}
	text := RuleText(rule)
	if slices.Contains(rules, text) {
		return true, nil
	}
	if appendRule {
		f.tables[table][chain] = append(rules, text)
	} else {
		f.tables[table][chain] = append([]string{text}, rules...)
	}
	return false, nil
}

// DeleteRule implements Interface.
func (f *Fake) DeleteRule(table, chain string, rule ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules := f.tables[table][chain]
	if i := slices.Index(rules, RuleText(rule)); i >= 0 {
		f.tables[table][chain] = slices.Delete(rules, i, i+1)
	}
	return nil
}

// joinArgs renders rule arguments as iptables-save does, quoting those with spaces.
// Dump prints every non-empty table in iptables-save style: built-in chains first,
// then the others sorted by name, each followed by its rules.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	tables := make([]string, 0, len(f.tables))
	for t := range f.tables {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	var b strings.Builder
	for _, t := range tables {
		chains := f.tables[t]
		var user []string
		empty := true
		for name, rules := range chains {
			if !slices.Contains(builtinChains[t], name) {
				user = append(user, name)
			}
			if len(rules) > 0 {
				empty = false
			}
		}
		if empty && len(user) == 0 {
			continue
		}
		sort.Strings(user)
		fmt.Fprintf(&b, "*%s\n", t)
		for _, name := range append(slices.Clone(builtinChains[t]), user...) {
			fmt.Fprintf(&b, ":%s\n", name)
			for _, r := range chains[name] {
				fmt.Fprintf(&b, "-A %s %s\n", name, r)
			}
		}
	}
	return b.String()
}
