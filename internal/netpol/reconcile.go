package netpol

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
)

// Dataplane is the kernel state of one IP family in one network namespace.
type Dataplane struct {
	Family   int // 4 or 6
	IPTables iptables.Interface
	IPSets   ipset.Interface
}

// jumpRule sends forwarded traffic through our top chain; it goes first so that an
// ACCEPT earlier in FORWARD cannot bypass policy.
var jumpRule = []string{"-m", "comment", "--comment", "kube-routerd network policy", "-j", topChain}

// outputJumpRule sends the traffic IPVS forwards through our top chain too. A pod's
// connection to a Service VIP is local to the node, so IPVS takes it in INPUT and
// sends it on, to the backend, through OUTPUT, never FORWARD: without this jump
// neither the client's egress nor a local backend's ingress policy would see it.
// What IPVS sends on keeps the client's address as source; what the node itself
// sends has one of the node's addresses, which the match leaves alone (kubelet
// probes, the node's own connections to Services). The match is xt_addrtype, which
// every kernel we run on has, unlike xt_ipvs (a kernel without IPVS, like the test
// hosts', has none); no packet goes through both FORWARD and OUTPUT, so nothing is
// policed twice.
var outputJumpRule = []string{"-m", "comment", "--comment", "kube-routerd network policy for traffic IPVS forwards",
	"-m", "addrtype", "!", "--src-type", "LOCAL", "-j", topChain}

// hookJumps are the built-in chains that jump to our top chain, with their rules.
var hookJumps = []struct {
	chain string
	rule  []string
}{{"FORWARD", jumpRule}, {"OUTPUT", outputJumpRule}}

// swapThreshold: a set whose changes outnumber its desired size, and that is larger
// than this, is rebuilt under a temporary name and swapped in one step.
const swapThreshold = 64

// reconciler applies a Desired state for one family, remembering what it wrote so that
// an incremental sync touches only chains and sets whose content changed.
type reconciler struct {
	dp     Dataplane
	chains map[string][]string // rules we last wrote, by chain
	sets   map[string]ipset.SetEntries
	primed bool // caches reflect the kernel (a full sync succeeded)
}

func newReconciler(dp Dataplane) *reconciler {
	return &reconciler{dp: dp, chains: map[string][]string{}, sets: map[string]ipset.SetEntries{}}
}

// applyStats says how much one apply changed.
type applyStats struct {
	ChainsWritten, ChainsDeleted, SetsWritten, SetsDestroyed, EntriesChanged int
	// Drifted counts chains, sets and the FORWARD and OUTPUT jumps that a full apply
	// found changed behind our back (deleted, flushed, edited) since we last wrote
	// them, and repaired.
	Drifted int
}

// apply brings the kernel to d. A full apply re-reads the kernel first and rewrites
// every chain, repairing any drift; an incremental apply trusts its caches.
//
// Order keeps isolated pods closed: sets are filled before chains that use them are
// written; chains (with the dispatch rules of the top chain) change in one
// iptables-restore transaction; stale sets are destroyed only after no rule uses them.
func (r *reconciler) apply(d *Desired, full bool) (applyStats, error) {
	var st applyStats
	wasPrimed := r.primed
	if full || !r.primed {
		lastChains, lastSets := r.chains, r.sets
		if err := r.readKernel(); err != nil {
			return st, err
		}
		if wasPrimed {
			st.Drifted = r.drift(lastChains, lastSets)
		}
	}
	rewriteAll := full || !r.primed

	for _, s := range d.Sets {
		changed, err := r.applySet(s)
		if err != nil {
			return st, err
		}
		if changed > 0 {
			st.SetsWritten++
			st.EntriesChanged += changed
		}
	}

	buf := iptables.Buffer{Table: iptables.TableFilter}
	// Stale chains are looked for only when we remember more chains than d wants of
	// them, and stale sets likewise below: no map of every name in most syncs.
	chainsKnown := 0
	for _, c := range d.Chains {
		old, ok := r.chains[c.Name]
		if ok {
			chainsKnown++
		}
		if ok && !rewriteAll && sameStrings(old, c.Rules) {
			continue
		}
		buf.Write = append(buf.Write, c)
	}
	if chainsKnown < len(r.chains) {
		desiredChains := make(map[string]bool, len(d.Chains))
		for _, c := range d.Chains {
			desiredChains[c.Name] = true
		}
		for name := range r.chains {
			if !desiredChains[name] {
				buf.Delete = append(buf.Delete, name)
			}
		}
		slices.Sort(buf.Delete)
	}
	if len(buf.Write) > 0 || len(buf.Delete) > 0 {
		data, err := buf.Bytes()
		if err != nil {
			return st, err
		}
		if err := r.dp.IPTables.Restore(data); err != nil {
			// We no longer know what the kernel holds; the retry is a full sync.
			r.primed = false
			return st, fmt.Errorf("writing %d chains, deleting %d (IPv%d): %w", len(buf.Write), len(buf.Delete), r.dp.Family, err)
		}
		for _, c := range buf.Write {
			r.chains[c.Name] = c.Rules
		}
		for _, name := range buf.Delete {
			delete(r.chains, name)
		}
		st.ChainsWritten, st.ChainsDeleted = len(buf.Write), len(buf.Delete)
	}
	if rewriteAll {
		for _, j := range hookJumps {
			if existed, err := r.dp.IPTables.EnsureRule(iptables.TableFilter, j.chain, false, j.rule...); err != nil {
				return st, err
			} else if !existed {
				slog.Info("installed network policy jump", "chain", j.chain, "family", r.dp.Family)
				if wasPrimed {
					st.Drifted++
				}
			}
		}
	}

	if len(r.sets) > len(d.Sets) {
		if err := r.destroyStaleSets(d, &st); err != nil {
			return st, err
		}
	}
	r.primed = true
	return st, nil
}

// destroyStaleSets destroys the sets we remember that d does not want.
func (r *reconciler) destroyStaleSets(d *Desired, st *applyStats) error {
	desiredSets := make(map[string]bool, len(d.Sets))
	for _, s := range d.Sets {
		desiredSets[s.Name] = true
	}
	for name := range r.sets {
		if desiredSets[name] {
			continue
		}
		if err := r.dp.IPSets.Destroy(name); err != nil {
			return err
		}
		delete(r.sets, name)
		st.SetsDestroyed++
	}
	return nil
}

// readKernel replaces the caches with what the kernel holds of ours.
func (r *reconciler) readKernel() error {
	all, err := r.dp.IPSets.ListAll()
	if err != nil {
		return err
	}
	r.sets = map[string]ipset.SetEntries{}
	for _, s := range all {
		if OwnsSet(s.Name) && s.Family == setFamily(r.dp.Family) {
			r.sets[s.Name] = s
		}
	}
	chains, err := r.dp.IPTables.SaveChains(iptables.TableFilter)
	if err != nil {
		return err
	}
	r.chains = map[string][]string{}
	for name, rules := range chains {
		if OwnsChain(name) {
			// iptables-save normalises rules, so the text is only used to know the chain
			// exists; a full apply rewrites every chain anyway.
			r.chains[name] = rules
		}
	}
	return nil
}

// drift counts our chains and sets whose kernel state (just read) differs from what
// we last wrote. Chains compare by rule count, because iptables-save normalises rule
// text.
func (r *reconciler) drift(lastChains map[string][]string, lastSets map[string]ipset.SetEntries) int {
	n := 0
	for name, rules := range lastChains {
		if have, ok := r.chains[name]; !ok || len(have) != len(rules) {
			n++
		}
	}
	for name, s := range lastSets {
		if have, ok := r.sets[name]; !ok || have.Set != s.Set || !slices.Equal(have.Entries, s.Entries) {
			n++
		}
	}
	return n
}

// applySet makes one set hold exactly s.Entries and returns how many entries changed.
func (r *reconciler) applySet(s ipset.SetEntries) (int, error) {
	old, exists := r.sets[s.Name]
	if exists && old.Set != s.Set {
		// Names encode kind and family, so this is a set we did not make this way.
		if err := r.dp.IPSets.Destroy(s.Name); err != nil {
			return 0, err
		}
		exists = false
	}
	if !exists {
		if err := r.dp.IPSets.Create(s.Set); err != nil {
			return 0, err
		}
		if err := errors.Join(r.dp.IPSets.AddEntries(s.Name, s.Entries)...); err != nil {
			return 0, err
		}
		r.sets[s.Name] = s
		return max(len(s.Entries), 1), nil
	}
	if sameStrings(old.Entries, s.Entries) {
		return 0, nil
	}
	adds, dels := diffSorted(old.Entries, s.Entries)
	changes := len(adds) + len(dels)
	if changes == 0 {
		return 0, nil
	}
	if changes > len(s.Entries) && len(s.Entries) > swapThreshold {
		if err := r.swapIn(s); err != nil {
			return 0, err
		}
	} else {
		// Adds first: while both happen, the set holds the union of old and new.
		if err := errors.Join(r.dp.IPSets.AddEntries(s.Name, adds)...); err != nil {
			return 0, err
		}
		for _, e := range dels {
			if err := r.dp.IPSets.Del(s.Name, e); err != nil {
				return 0, err
			}
		}
	}
	r.sets[s.Name] = s
	return changes, nil
}

// swapIn builds s under a temporary name and swaps it with the live set atomically.
func (r *reconciler) swapIn(s ipset.SetEntries) error {
	tmp := s.Set
	tmp.Name = s.Name + tempSetSuffix
	if err := r.dp.IPSets.Destroy(tmp.Name); err != nil {
		return err
	}
	if err := r.dp.IPSets.Create(tmp); err != nil {
		return err
	}
	if err := errors.Join(r.dp.IPSets.AddEntries(tmp.Name, s.Entries)...); err != nil {
		return err
	}
	if err := r.dp.IPSets.Swap(s.Name, tmp.Name); err != nil {
		return err
	}
	return r.dp.IPSets.Destroy(tmp.Name)
}

// sameStrings is slices.Equal with a shortcut for the common case of an unchanged
// policy, whose compiled slices are the very ones applied last time.
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

// setFamily is the ipset family of IP family 4 or 6. IPv4 and IPv6 sets share one
// namespace, so each family's reconciler and cleanup must touch only its own.
func setFamily(family int) ipset.Family {
	if family == 6 {
		return ipset.IPv6
	}
	return ipset.IPv4
}

// cleanup removes everything the policy controller owns from one dataplane: the jumps,
// our chains, then our sets.
func cleanup(dp Dataplane) error {
	for _, j := range hookJumps {
		if err := dp.IPTables.DeleteRule(iptables.TableFilter, j.chain, j.rule...); err != nil {
			return err
		}
	}
	chains, err := dp.IPTables.SaveChains(iptables.TableFilter)
	if err != nil {
		return err
	}
	buf := iptables.Buffer{Table: iptables.TableFilter}
	for name := range chains {
		if OwnsChain(name) {
			buf.Delete = append(buf.Delete, name)
		}
	}
	if len(buf.Delete) > 0 {
		slices.Sort(buf.Delete)
		data, err := buf.Bytes()
		if err != nil {
			return err
		}
		if err := dp.IPTables.Restore(data); err != nil {
			return err
		}
	}
	sets, err := dp.IPSets.ListAll()
	if err != nil {
		return err
	}
	for _, s := range sets {
		if OwnsSet(s.Name) && s.Family == setFamily(dp.Family) {
			if err := dp.IPSets.Destroy(s.Name); err != nil {
				return err
			}
		}
	}
	return nil
}
