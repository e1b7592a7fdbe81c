// Package iptables is kube-routerd's thin adapter over iptables: go-iptables for
// single-rule checks (the jumps from built-in chains into ours) and
// iptables-restore --noflush (or ip6tables-restore) for bulk changes of the chains we
// own. A Fake keeps rules in memory for tests and prints them as text.
//
// Everything written in bulk must live in chains whose names carry one of
// OwnedChainPrefixes; Restore refuses a buffer that declares, appends to or deletes
// any other chain, so rules that other programs own are never rewritten.
package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// The tables kube-routerd writes to.
const (
	TableFilter = "filter"
	TableNAT    = "nat"
	TableMangle = "mangle"
	TableRaw    = "raw"
)

// OwnedChainPrefixes are the name prefixes of the chains Restore may touch: those
// kube-routerd creates (KUBE-ROUTER-; which of them each controller owns is
// internal/dataplane/netfilter's Owner) and kube-router's, which a takeover deletes.
// Chains with other names are never flushed, rewritten or deleted by Restore.
var OwnedChainPrefixes = []string{"KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-"}

// MaxChainNameLen is the longest chain name iptables accepts.
const MaxChainNameLen = 28

// IsOwned reports whether chain is one of ours.
func IsOwned(chain string) bool {
	for _, p := range OwnedChainPrefixes {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return false
}

// Interface is what controllers need from iptables. Implementations are bound to one
// network namespace and one IP family.
type Interface interface {
	// Family is the IP family this instance manages.
	Family() ipfamily.Family
	// Restore feeds data (iptables-restore format, see Buffer) to iptables-restore
	// --noflush: each table section is one atomic transaction. Declaring a chain
	// (":NAME - [0:0]") creates it or flushes it. Only owned chains may appear.
	Restore(data []byte) error
	// SaveChains returns the rules of every chain of table, keyed by chain name, in
	// iptables-save syntax without the "-A CHAIN " prefix. Built-in chains are
	// included (possibly empty).
	SaveChains(table string) (map[string][]string, error)
	// EnsureRule inserts rule at the top of chain (or appends it, if appendRule) unless
	// an identical rule is there; it reports whether the rule already existed.
	EnsureRule(table, chain string, appendRule bool, rule ...string) (existed bool, err error)
	// DeleteRule removes rule from chain; an absent rule or chain is not an error.
	DeleteRule(table, chain string, rule ...string) error
}

// Chain is one chain to write in full: its name and its rules, each without the
// "-A CHAIN " prefix.
type Chain struct {
	Name  string
	Rules []string
}

// Jump is a rule inserted at the top of a chain that may not be ours (a built-in
// one), jumping to one of ours. Rule is in iptables-save syntax (see RuleText).
type Jump struct {
	Chain string
	Rule  string
}

// Buffer renders iptables-restore input for one table: chains written in full, jumps
// inserted, jumps deleted (Unjumps, each one copy of a rule as iptables-save prints
// it), then chains deleted. Bytes returns an error if any chain written or deleted,
// or any jump's target, is not owned.
type Buffer struct {
	Table   string
	Write   []Chain
	Jumps   []Jump
	Unjumps []Jump
	Delete  []string
}

// RuleText renders rule arguments as iptables-save prints them, quoting arguments
// with spaces; it is the form SaveChains returns for arguments already canonical.
func RuleText(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		quoted[i] = a
	}
	return strings.Join(quoted, " ")
}

// jumpTarget returns the chain a rule jumps to ("" if none).
func jumpTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "--jump" {
			return f[i+1]
		}
	}
	return ""
}

// Bytes renders the buffer. Chains to delete are flushed first, since rules in one of
// them may jump to another.
func (b Buffer) Bytes() ([]byte, error) {
	var out bytes.Buffer
	fmt.Fprintf(&out, "*%s\n", b.Table)
	for _, c := range b.Write {
		if err := checkOwned(c.Name); err != nil {
			return nil, err
		}
		fmt.Fprintf(&out, ":%s - [0:0]\n", c.Name)
	}
	for _, name := range b.Delete {
		if err := checkOwned(name); err != nil {
			return nil, err
		}
		fmt.Fprintf(&out, ":%s - [0:0]\n", name)
	}
	for _, c := range b.Write {
		for _, r := range c.Rules {
			fmt.Fprintf(&out, "-A %s %s\n", c.Name, r)
		}
	}
	for _, j := range b.Jumps {
		if err := checkOwned(jumpTarget(j.Rule)); err != nil {
			return nil, fmt.Errorf("jump from %s: %w", j.Chain, err)
		}
		fmt.Fprintf(&out, "-I %s %s\n", j.Chain, j.Rule)
	}
	for _, j := range b.Unjumps {
		if err := checkOwned(jumpTarget(j.Rule)); err != nil {
			return nil, fmt.Errorf("jump from %s: %w", j.Chain, err)
		}
		fmt.Fprintf(&out, "-D %s %s\n", j.Chain, j.Rule)
	}
	for _, name := range b.Delete {
		fmt.Fprintf(&out, "-X %s\n", name)
	}
	out.WriteString("COMMIT\n")
	return out.Bytes(), nil
}

func checkOwned(chain string) error {
	if !IsOwned(chain) {
		return fmt.Errorf("chain %q is not owned by kube-routerd (prefixes %v)", chain, OwnedChainPrefixes)
	}
	if len(chain) > MaxChainNameLen {
		return fmt.Errorf("chain name %q is longer than %d characters", chain, MaxChainNameLen)
	}
	return nil
}

// checkRestoreInput verifies that a restore buffer touches only owned chains, but for
// rules inserted into or deleted from other chains that jump to an owned chain.
func checkRestoreInput(data []byte) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		var chain string
		switch {
		case strings.HasPrefix(line, ":"):
			chain = strings.Fields(line[1:])[0]
		case strings.HasPrefix(line, "-"):
			f := strings.Fields(line)
			if len(f) < 2 {
				return fmt.Errorf("restore line %d: %q: missing chain", n, line)
			}
			chain = f[1]
			if (f[0] == "-I" || f[0] == "-D") && !IsOwned(chain) {
				chain = jumpTarget(line)
			}
		default:
			continue
		}
		if err := checkOwned(chain); err != nil {
			return fmt.Errorf("restore line %d: %w", n, err)
		}
	}
	return sc.Err()
}

// parseSave turns iptables-save output for one table into rules per chain.
func parseSave(data []byte) (map[string][]string, error) {
	chains := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"):
			name := strings.Fields(line[1:])[0]
			if _, ok := chains[name]; !ok {
				chains[name] = nil
			}
		case strings.HasPrefix(line, "-A "):
			rest := line[3:]
			name, rule, _ := strings.Cut(rest, " ")
			chains[name] = append(chains[name], rule)
		}
	}
	return chains, sc.Err()
}
