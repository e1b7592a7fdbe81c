// Package netfilter is the one owner of kube-routerd's iptables chains and IP sets.
//
// A controller describes what it wants of one IP family as a Ruleset value (sets
// with their members, chains with their rules, jumps from built-in chains) and hands
// it to an Interface. The Interface brings the kernel in line with it and touches
// nothing its Owner does not claim: the order of the steps, the swap of big sets, the
// removal of what is no longer wanted and the count of drift repaired are decided
// here, once, for every controller.
//
// Writer implements Interface on iptables-restore and netlink IP sets. Another
// packet filter (nftables) can take the same Ruleset later.
package netfilter

import (
	"fmt"
	"slices"
	"strings"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Interface brings one IP family's kernel state of one Owner in line with a Ruleset.
type Interface interface {
	// Apply makes the kernel hold want. A full apply reads the kernel first and
	// repairs whatever differs (counting it as drift); an incremental one trusts what
	// the last apply wrote and changes only what differs from it. want's slices are
	// kept as the record of what was written: the caller must not change them later.
	Apply(want *Ruleset, full bool) (Stats, error)
	// ApplySets changes the members of sets the last Apply wrote, and nothing else:
	// a change that moves only set members needs no iptables-restore process. The
	// sets' slices are kept like Apply's.
	ApplySets(sets []ipset.SetEntries) (Stats, error)
	// Cleanup removes everything the Owner has in the kernel: jumps, chains, sets.
	Cleanup() error
	// ReadAhead reads what the kernel holds of the Owner's now, and the next Apply,
	// full or not, starts from that instead of reading again (a full one only if
	// the read is less than 30 s old). A caller with time to spare before its first
	// sync (while the informers list) takes the read off the sync's path.
	ReadAhead() error
}

// Ruleset is the desired kernel state of one Owner in one IP family.
type Ruleset struct {
	// Sets are filled before any chain that names them is written. Entries are in
	// ipset's canonical form, sorted.
	Sets []ipset.SetEntries
	// Chains are written whole. Rules are in iptables-save's form, without the
	// "-A CHAIN " prefix; a rule in that exact form is never rewritten needlessly.
	Chains []Chain
	// Jumps are rules at the top of chains the Owner does not own (built-in chains)
	// that send traffic into its chains.
	Jumps []Jump
	// Ledgers are sets whose entries vouch that the chains are in the kernel: a rule
	// may trust an address in a ledger to have its chains and dispatch rules live
	// (network policy drops a local pod's traffic until its address is in one). An
	// address leaves a ledger before the chains change and enters it only after they
	// are written, so the ledger never claims more than the kernel holds. A ledger
	// the kernel does not have yet is filled whole before the chains: no rule can
	// name it until the same write that brings in every chain it vouches for.
	Ledgers []ipset.SetEntries
}

// Chain is one of an Owner's chains in one table.
type Chain struct {
	Table string
	Name  string
	Rules []string
}

// Jump is a rule inserted at the top of Chain (of Table) that jumps to one of the
// Owner's chains. Rule is in iptables-save's form (see iptables.RuleText).
type Jump struct {
	Table string
	Chain string
	Rule  string
}

func (j Jump) String() string { return j.Table + "/" + j.Chain + ": " + j.Rule }

// Stats says how much one Apply changed.
type Stats struct {
	ChainsWritten, ChainsDeleted int
	JumpsInserted, JumpsDeleted  int
	SetsWritten, SetsDestroyed   int
	EntriesChanged               int
	// Drifted counts the chains, jumps and sets that a full apply found changed
	// behind our back (deleted, flushed, edited) since the last apply, and repaired.
	Drifted int
}

// Writes is the number of kernel changes: chains written or deleted, jumps, sets
// created or destroyed counted by the entries they moved.
func (s Stats) Writes() int {
	return s.ChainsWritten + s.ChainsDeleted + s.JumpsInserted + s.JumpsDeleted + s.SetsDestroyed + s.EntriesChanged
}

// TempSetSuffix marks a set being rebuilt before it is swapped with the live one.
const TempSetSuffix = "-T"

// Owner names what one controller has in the kernel. Ownership is a safety
// property: nothing outside it is ever written, flushed or destroyed.
type Owner struct {
	// Name is for logs and errors ("network policy").
	Name string
	// Tables are the tables its chains and jumps live in.
	Tables []string
	// Chains and ChainPrefixes: the chain names it owns, exactly or by prefix.
	Chains, ChainPrefixes []string
	// Sets and SetPrefixes: the set names it owns, exactly or by prefix. An Owner with
	// only exact names reads its sets one by one; prefixes need a listing of all sets.
	Sets, SetPrefixes []string
}

// OwnsChain reports whether chain is one of the Owner's.
func (o Owner) OwnsChain(chain string) bool {
	return slices.Contains(o.Chains, chain) || hasAnyPrefix(chain, o.ChainPrefixes)
}

// OwnsSet reports whether set is one of the Owner's, including one left half-built
// before a swap.
func (o Owner) OwnsSet(set string) bool {
	base := strings.TrimSuffix(set, TempSetSuffix)
	return slices.Contains(o.Sets, base) || hasAnyPrefix(base, o.SetPrefixes)
}

// checkSet, checkChain and checkJump refuse what the Owner does not own: a bug in a
// controller must not reach someone else's state. They run on what is about to be
// written, so an unchanged Ruleset costs no checks.
func (o Owner) checkSet(s ipset.SetEntries, family ipfamily.Family) error {
	if !o.OwnsSet(s.Name) || strings.HasSuffix(s.Name, TempSetSuffix) {
		return fmt.Errorf("%s: set %s is not ours", o.Name, s.Name)
	}
	if s.Family != family {
		return fmt.Errorf("%s: set %s is of family %s, not %s", o.Name, s.Name, s.Family, family)
	}
	if err := ipset.CheckName(s.Name + TempSetSuffix); err != nil {
		return fmt.Errorf("%s: %w", o.Name, err)
	}
	return nil
}

func (o Owner) checkChain(c Chain) error {
	if !o.OwnsChain(c.Name) || !slices.Contains(o.Tables, c.Table) {
		return fmt.Errorf("%s: chain %s/%s is not ours", o.Name, c.Table, c.Name)
	}
	return nil
}

func (o Owner) checkJump(j Jump) error {
	if o.OwnsChain(j.Chain) || !o.OwnsChain(jumpTarget(j.Rule)) || !slices.Contains(o.Tables, j.Table) {
		return fmt.Errorf("%s: jump %s does not enter our chains from outside", o.Name, j)
	}
	if !strings.Contains(j.Rule, jumpCommentPrefix) {
		return fmt.Errorf("%s: jump %s lacks the comment that marks it as ours", o.Name, j)
	}
	return nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// jumpTarget returns the chain a rule jumps or goes to ("" if none).
func jumpTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "--jump" || f[i] == "-g" || f[i] == "--goto" {
			return f[i+1]
		}
	}
	return ""
}
