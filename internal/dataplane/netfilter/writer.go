package netfilter

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// jumpCommentPrefix starts the comment of every jump kube-routerd puts into a chain
// it does not own. A jump without it is someone else's and is never touched, even
// when it enters one of our chains.
const jumpCommentPrefix = `--comment "kube-routerd `

// swapThreshold: a set whose changes outnumber its desired size, and that is larger
// than this, is rebuilt under a temporary name and swapped in one step, instead of
// entry by entry.
const swapThreshold = 64

type tableChain struct{ table, chain string }

// chainsByTable holds rules by chain name, by table: the per-chain lookups of an
// apply hash one string, not two.
type chainsByTable map[string]map[string][]string

// Writer is the iptables and IP set Interface of one Owner in one IP family. It
// remembers what it wrote, so an incremental Apply touches only chains, jumps and
// set entries that differ. It is used by one goroutine at a time.
type Writer struct {
	owner  Owner
	log    *slog.Logger
	ipt    iptables.Interface
	ipsets ipset.Interface
	family ipfamily.Family

	chains chainsByTable
	jumps  map[Jump]int // our jumps in the kernel, by how often each is there
	sets   map[string]ipset.SetEntries
	primed bool // the records reflect the kernel (an apply succeeded since the last read)
	// readAhead: the records were read by ReadAhead at readAt and nothing was
	// applied since, so the next full Apply starts from them instead of reading
	// again, unless they are older than readAheadFresh.
	readAhead bool
	readAt    time.Time
}

// readAheadFresh bounds how old a ReadAhead may be for a full Apply to trust it: the
// informers' lists take seconds, but an API server that does not answer at boot can
// hold the first sync for minutes, in which anything may have changed the kernel.
const readAheadFresh = 30 * time.Second

var _ Interface = (*Writer)(nil)

// NewWriter returns the Writer of owner for the IP family of ipt.
func NewWriter(owner Owner, ipt iptables.Interface, ipsets ipset.Interface, log *slog.Logger) *Writer {
	family := ipfamily.IPv4
	if ipt.Family() == ipfamily.IPv6 {
		family = ipfamily.IPv6
	}
	return &Writer{owner: owner, log: log.With("family", int(ipt.Family())), ipt: ipt, ipsets: ipsets, family: family}
}

// Apply implements Interface. The order keeps traffic under the old or the new rules,
// never under neither: sets are filled before the chains that name them are written;
// ledgers lose entries before the chains change and gain them after; chains, jumps
// and deleted chains change in one iptables-restore run, each table in one
// transaction; stale sets are destroyed only once no rule names them.
func (w *Writer) Apply(want *Ruleset, full bool) (Stats, error) {
	var st Stats
	for _, j := range want.Jumps {
		if err := w.owner.checkJump(j); err != nil {
			return st, err
		}
	}
	readAhead := w.readAhead && time.Since(w.readAt) < readAheadFresh
	w.readAhead = false
	if (full && !readAhead) || !w.primed {
		wasPrimed := w.primed
		lastChains, lastJumps, lastSets := w.chains, w.jumps, w.sets
		if err := w.read(); err != nil {
			w.primed = false
			return st, err
		}
		if wasPrimed {
			st.Drifted = w.drift(lastChains, lastJumps, lastSets)
		}
	}
	// Whatever fails below leaves the records unsure: the next apply reads the kernel.
	w.primed = false
	for _, s := range want.Sets {
		if err := w.applySetCounted(s, &st); err != nil {
			return st, err
		}
	}
	for _, l := range want.Ledgers {
		if err := w.shrinkLedger(l, &st); err != nil {
			return st, err
		}
	}
	if err := w.applyChains(want, &st); err != nil {
		return st, err
	}
	for _, l := range want.Ledgers {
		if err := w.applySetCounted(l, &st); err != nil {
			return st, err
		}
	}
	if len(w.sets) > len(want.Sets)+len(want.Ledgers) {
		if err := w.destroyStaleSets(want, &st); err != nil {
			return st, err
		}
	}
	w.primed = true
	return st, nil
}

// ApplySets implements Interface. A set the records do not hold with the same type,
// or records not known to match the kernel, fail it before anything is written.
func (w *Writer) ApplySets(sets []ipset.SetEntries) (Stats, error) {
	var st Stats
	if !w.primed || w.readAhead {
		return st, fmt.Errorf("%s: set members changed before a full apply", w.owner.Name)
	}
	for _, s := range sets {
		if old, ok := w.sets[s.Name]; !ok || old.Set != s.Set {
			return st, fmt.Errorf("%s: set %s is not one the last apply wrote", w.owner.Name, s.Name)
		}
	}
	w.primed = false
	for _, s := range sets {
		if err := w.applySetCounted(s, &st); err != nil {
			return st, err
		}
	}
	w.primed = true
	return st, nil
}

// Cleanup implements Interface.
func (w *Writer) Cleanup() error {
	w.primed = false
	_, err := w.Apply(&Ruleset{}, true)
	w.primed = false
	return err
}

// ReadAhead implements Interface.
func (w *Writer) ReadAhead() error {
	if err := w.read(); err != nil {
		w.primed, w.readAhead = false, false
		return err
	}
	w.primed, w.readAhead, w.readAt = true, true, time.Now()
	return nil
}

// read replaces the records with what the kernel holds of the Owner's.
func (w *Writer) read() error {
	sets, err := w.readSets()
	if err != nil {
		return err
	}
	chains := chainsByTable{}
	jumps := map[Jump]int{}
	for _, table := range w.owner.Tables {
		all, err := w.ipt.SaveChains(table)
		if err != nil {
			return err
		}
		chains[table] = map[string][]string{}
		for name, rules := range all {
			if w.owner.OwnsChain(name) {
				chains[table][name] = rules
				continue
			}
			for _, r := range rules {
				if w.owner.OwnsChain(jumpTarget(r)) && strings.Contains(r, jumpCommentPrefix) {
					jumps[Jump{Table: table, Chain: name, Rule: r}]++
				}
			}
		}
	}
	w.chains, w.jumps, w.sets = chains, jumps, sets
	return nil
}

func (w *Writer) readSets() (map[string]ipset.SetEntries, error) {
	sets := map[string]ipset.SetEntries{}
	ours := func(s ipset.Set) bool { return w.owner.OwnsSet(s.Name) && s.Family == w.family }
	if len(w.owner.SetPrefixes) > 0 {
		// Only our sets of this family are decoded: the other family's writer reads
		// the same kernel, and other programs' sets may be of types we do not parse.
		all, err := w.ipsets.ListAll(ours)
		if err != nil {
			return nil, err
		}
		for _, s := range all {
			sets[s.Name] = s
		}
		return sets, nil
	}
	for _, name := range w.owner.Sets {
		for _, n := range []string{name, name + TempSetSuffix} {
			s, err := w.ipsets.List(n)
			if errors.Is(err, ipset.ErrNoSuchSet) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if ours(s.Set) {
				sets[s.Name] = s
			}
		}
	}
	return sets, nil
}

// drift counts what the kernel (just read) holds differently from what we last
// wrote. Chains compare by rule count, because iptables-save normalises rule text.
func (w *Writer) drift(lastChains chainsByTable, lastJumps map[Jump]int, lastSets map[string]ipset.SetEntries) int {
	n := 0
	for table, chains := range lastChains {
		for name, rules := range chains {
			if have, ok := w.chains[table][name]; !ok || len(have) != len(rules) {
				n++
			}
		}
	}
	for j, count := range lastJumps {
		if w.jumps[j] != count {
			n++
		}
	}
	for name, s := range lastSets {
		if have, ok := w.sets[name]; !ok || have.Set != s.Set || !slices.Equal(have.Entries, s.Entries) {
			n++
		}
	}
	return n
}

// applyChains writes the chains that differ from the records, inserts missing jumps,
// deletes unwanted jumps and chains, all in one iptables-restore run.
func (w *Writer) applyChains(want *Ruleset, st *Stats) error {
	for _, c := range want.Chains {
		if !slices.Contains(w.owner.Tables, c.Table) {
			return w.owner.checkChain(c)
		}
	}
	wantJumps := make(map[Jump]int, len(want.Jumps))
	for _, j := range want.Jumps {
		wantJumps[j]++
	}
	var data []byte
	var written []Chain
	var inserted, deleted []Jump
	var gone []tableChain
	for _, table := range w.owner.Tables {
		buf := iptables.Buffer{Table: table}
		have := w.chains[table]
		known := 0 // wanted chains we have: fewer than we have means some are stale
		for _, c := range want.Chains {
			if c.Table != table {
				continue
			}
			rules, ok := have[c.Name]
			if ok {
				known++
			}
			if ok && sameStrings(rules, c.Rules) {
				continue
			}
			if err := w.owner.checkChain(c); err != nil {
				return err
			}
			buf.Write = append(buf.Write, iptables.Chain{Name: c.Name, Rules: c.Rules})
			written = append(written, c)
		}
		for _, j := range want.Jumps {
			if j.Table == table && w.jumps[j] == 0 && !slices.Contains(inserted, j) {
				buf.Jumps = append(buf.Jumps, iptables.Jump{Chain: j.Chain, Rule: j.Rule})
				inserted = append(inserted, j)
			}
		}
		for j, count := range w.jumps {
			if j.Table != table {
				continue
			}
			// Duplicates go too: one copy is all a jump needs.
			for range count - min(wantJumps[j], 1) {
				buf.Unjumps = append(buf.Unjumps, iptables.Jump{Chain: j.Chain, Rule: j.Rule})
				deleted = append(deleted, j)
			}
		}
		// Stale chains are looked for only when some chain we have is not wanted: no
		// map of every name in most applies.
		if known < len(have) {
			wanted := make(map[tableChain]bool, len(want.Chains))
			for _, c := range want.Chains {
				wanted[tableChain{c.Table, c.Name}] = true
			}
			for name := range have {
				if tc := (tableChain{table, name}); !wanted[tc] {
					buf.Delete = append(buf.Delete, name)
					gone = append(gone, tc)
				}
			}
			slices.Sort(buf.Delete)
		}
		if len(buf.Write)+len(buf.Jumps)+len(buf.Unjumps)+len(buf.Delete) == 0 {
			continue
		}
		section, err := buf.Bytes()
		if err != nil {
			return err
		}
		data = append(data, section...)
	}
	if len(data) == 0 {
		return nil
	}
	if err := w.ipt.Restore(data); err != nil {
		return fmt.Errorf("%s: writing %d chains, deleting %d (IPv%d): %w", w.owner.Name, len(written), len(gone), w.ipt.Family(), err)
	}
	for _, c := range written {
		if w.chains[c.Table] == nil {
			w.chains[c.Table] = map[string][]string{}
		}
		w.chains[c.Table][c.Name] = c.Rules
	}
	for _, tc := range gone {
		delete(w.chains[tc.table], tc.chain)
	}
	for _, j := range inserted {
		w.jumps[j]++
		w.log.Info("installed jump", "owner", w.owner.Name, "table", j.Table, "chain", j.Chain)
	}
	for _, j := range deleted {
		if w.jumps[j]--; w.jumps[j] == 0 {
			delete(w.jumps, j)
		}
	}
	st.ChainsWritten, st.ChainsDeleted = len(written), len(gone)
	st.JumpsInserted, st.JumpsDeleted = len(inserted), len(deleted)
	return nil
}

// applySetCounted is applySet, counted in st.
func (w *Writer) applySetCounted(s ipset.SetEntries, st *Stats) error {
	changed, err := w.applySet(s)
	if changed > 0 {
		st.SetsWritten++
		st.EntriesChanged += changed
	}
	return err
}

// shrinkLedger runs before the chains are written: it deletes the ledger's entries
// that go, and creates and fills a ledger the kernel does not have (see
// Ruleset.Ledgers). The entries that come are added after the chains, by applySet.
func (w *Writer) shrinkLedger(l ipset.SetEntries, st *Stats) error {
	old, exists := w.sets[l.Name]
	if !exists || old.Set != l.Set {
		return w.applySetCounted(l, st)
	}
	_, dels := diffSorted(old.Entries, l.Entries)
	if len(dels) == 0 {
		return nil
	}
	if err := w.owner.checkSet(l, w.family); err != nil {
		return err
	}
	kept := make([]string, 0, len(old.Entries)-len(dels))
	for _, e := range old.Entries {
		if _, gone := slices.BinarySearch(dels, e); !gone {
			kept = append(kept, e)
		}
	}
	if err := errors.Join(w.ipsets.DelEntries(l.Name, dels)...); err != nil {
		return err
	}
	w.sets[l.Name] = ipset.SetEntries{Set: old.Set, Entries: kept}
	st.SetsWritten++
	st.EntriesChanged += len(dels)
	return nil
}

// destroyStaleSets destroys the sets we have that want does not list.
func (w *Writer) destroyStaleSets(want *Ruleset, st *Stats) error {
	wanted := make(map[string]bool, len(want.Sets)+len(want.Ledgers))
	for _, s := range slices.Concat(want.Sets, want.Ledgers) {
		wanted[s.Name] = true
	}
	for name := range w.sets {
		if wanted[name] {
			continue
		}
		if err := w.ipsets.Destroy(name); err != nil {
			return fmt.Errorf("%s: %w", w.owner.Name, err)
		}
		delete(w.sets, name)
		st.SetsDestroyed++
	}
	return nil
}

// applySet makes one set hold exactly s.Entries and returns how many entries changed
// (1 for a new empty set).
func (w *Writer) applySet(s ipset.SetEntries) (int, error) {
	old, exists := w.sets[s.Name]
	if exists && old.Set == s.Set && sameStrings(old.Entries, s.Entries) {
		return 0, nil
	}
	if err := w.owner.checkSet(s, w.family); err != nil {
		return 0, err
	}
	if exists && old.Set != s.Set {
		// A set of that name but another type: not made by this version of us.
		if err := w.ipsets.Destroy(s.Name); err != nil {
			return 0, err
		}
		delete(w.sets, s.Name)
		exists = false
	}
	if !exists {
		if err := w.ipsets.Create(s.Set); err != nil {
			return 0, err
		}
		if err := errors.Join(w.ipsets.AddEntries(s.Name, s.Entries)...); err != nil {
			return 0, err
		}
		w.sets[s.Name] = s
		return max(len(s.Entries), 1), nil
	}
	adds, dels := diffSorted(old.Entries, s.Entries)
	changes := len(adds) + len(dels)
	if changes > len(s.Entries) && len(s.Entries) > swapThreshold {
		if err := w.swapIn(s); err != nil {
			return 0, err
		}
	} else {
		// Adds first: while both happen, the set holds the union of old and new.
		if err := errors.Join(w.ipsets.AddEntries(s.Name, adds)...); err != nil {
			return 0, err
		}
		if err := errors.Join(w.ipsets.DelEntries(s.Name, dels)...); err != nil {
			return 0, err
		}
	}
	w.sets[s.Name] = s
	return changes, nil
}

// swapIn builds s under a temporary name and swaps it with the live set atomically.
func (w *Writer) swapIn(s ipset.SetEntries) error {
	tmp := s.Set
	tmp.Name = s.Name + TempSetSuffix
	if err := w.ipsets.Destroy(tmp.Name); err != nil {
		return err
	}
	if err := w.ipsets.Create(tmp); err != nil {
		return err
	}
	if err := errors.Join(w.ipsets.AddEntries(tmp.Name, s.Entries)...); err != nil {
		return err
	}
	if err := w.ipsets.Swap(s.Name, tmp.Name); err != nil {
		return err
	}
	return w.ipsets.Destroy(tmp.Name)
}

// sameStrings is slices.Equal with a shortcut for the common case of an unchanged
// input, whose slices are the very ones applied last time.
func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.Equal(a, b)
}

// diffSorted returns what to add to and delete from sorted old to get sorted new.
func diffSorted(old, new []string) (adds, dels []string) {
	i, j := 0, 0
	for i < len(old) || j < len(new) {
		switch {
		case j == len(new) || (i < len(old) && old[i] < new[j]):
			dels = append(dels, old[i])
			i++
		case i == len(old) || new[j] < old[i]:
			adds = append(adds, new[j])
			j++
		default:
			i++
			j++
		}
	}
	return adds, dels
}
