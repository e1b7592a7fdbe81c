package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"
)

// firewallReconciler keeps our sets, chains and jumps in line with the desired state.
// It mirrors what the kernel holds of ours, so a partial sync compares against memory
// and writes only entries and chains that differ. Used by the sync loop only.
type firewallReconciler struct {
	sets    ipset.Interface
	tables  map[iptables.Protocol]iptables.Interface
	sysctls sysctl.Interface
	opts    FirewallOptions
	// members mirrors the entries of our sets, by set name.
	members map[string]map[string]bool
	// chains mirrors the rules of our chains, by family.
	chains map[iptables.Protocol]map[tableChain][]string
	// missingJumps lists, by family, the jumps into our chains the last read did not
	// find; the next chain write inserts them.
	missingJumps map[iptables.Protocol][]jump
	// hairpinApplied holds the addresses the hairpin rules in the kernel cover.
	hairpinApplied map[netip.Addr]bool
	writes         int
}

func newFirewallReconciler(dp Dataplane, opts FirewallOptions) *firewallReconciler {
	tables := map[iptables.Protocol]iptables.Interface{}
	for _, t := range dp.IPTables {
		tables[t.Protocol()] = t
	}
	return &firewallReconciler{sets: dp.IPSets, tables: tables, sysctls: dp.Sysctls, opts: opts,
		members: map[string]map[string]bool{}, chains: map[iptables.Protocol]map[tableChain][]string{},
		missingJumps:   map[iptables.Protocol][]jump{},
		hairpinApplied: map[netip.Addr]bool{}}
}

// full re-reads the kernel and repairs everything of ours: sysctls, sets, chains and
// the jumps into them.
func (r *firewallReconciler) full(d *desiredState) error {
	r.writes = 0
	n, err := sysctl.Ensure(r.sysctls, requiredSysctls)
	r.writes += n
	if err != nil {
		return err
	}
	wantVIPs := map[string]map[string]bool{}
	wantLocal := map[string]map[string]bool{}
	for _, f := range families {
		wantVIPs[f.vipSet], wantLocal[f.localSet] = map[string]bool{}, map[string]bool{}
	}
	for a := range d.vipUsers {
		wantVIPs[familyOf(a).vipSet][a.String()] = true
	}
	for k, vs := range d.byKey {
		if keepsClientAddr(vs) {
			wantLocal[familyOf(k.Addr).localSet][ipvs.LedgerEntry(k)] = true
		}
	}
	var errs []error
	for _, f := range families {
		ipt := r.tables[f.proto]
		if ipt == nil {
			continue
		}
		// Sets first: iptables-restore refuses rules that name a missing set.
		errs = append(errs, r.syncSet(f.sets()[0], wantVIPs[f.vipSet]), r.syncSet(f.sets()[1], wantLocal[f.localSet]))
		if err := r.readChains(f, ipt); err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, r.syncChains(f, d))
	}
	return errors.Join(errs...)
}

// partial updates the set entries of the given keys and addresses and the hairpin
// rules, trusting the mirror of the kernel the last full sync built.
func (r *firewallReconciler) partial(d *desiredState, keys []ipvs.Key) error {
	r.writes = 0
	var errs []error
	for _, k := range keys {
		f := familyOf(k.Addr)
		if r.tables[f.proto] == nil {
			continue
		}
		errs = append(errs,
			r.syncEntry(f.localSet, ipvs.LedgerEntry(k), keepsClientAddr(d.byKey[k])),
			r.syncEntry(f.vipSet, k.Addr.String(), d.vipUsers[k.Addr] > 0))
	}
	stale := map[iptables.Protocol]bool{}
	for a := range d.hairpinTouched {
		if (d.localEndpoints[a] > 0) != r.hairpinApplied[a] {
			stale[familyOf(a).proto] = true
		}
	}
	for _, f := range families {
		if stale[f.proto] && r.tables[f.proto] != nil {
			errs = append(errs, r.syncChains(f, d))
		}
	}
	return errors.Join(errs...)
}

// syncSet makes set s hold exactly want, reading the kernel's entries first.
func (r *firewallReconciler) syncSet(s ipset.Set, want map[string]bool) error {
	if err := r.sets.Create(s); err != nil {
		return err
	}
	cur, err := r.sets.List(s.Name)
	if err != nil {
		return err
	}
	have := make(map[string]bool, len(cur.Entries))
	for _, e := range cur.Entries {
		have[e] = true
	}
	r.members[s.Name] = have
	var errs []error
	// Adds first: while both happen the set holds the union, so nothing is rejected.
	var add []string
	for e := range want {
		if !have[e] {
			add = append(add, e)
		}
	}
	for i, err := range r.sets.AddEntries(s.Name, add) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		have[add[i]] = true
		r.writes++
	}
	for e := range have {
		if !want[e] {
			errs = append(errs, r.syncEntry(s.Name, e, false))
		}
	}
	return errors.Join(errs...)
}

// syncEntry adds or removes one entry of one of our sets if the mirror says it differs.
func (r *firewallReconciler) syncEntry(set, entry string, want bool) error {
	members := r.members[set]
	if members == nil || members[entry] == want {
		return nil
	}
	r.writes++
	if want {
		if err := r.sets.Add(set, entry); err != nil {
			return err
		}
		members[entry] = true
		return nil
	}
	if err := r.sets.Del(set, entry); err != nil {
		return err
	}
	delete(members, entry)
	return nil
}

// readChains refreshes the mirror of our chains of one family from the kernel, and
// notes which jumps into them are missing.
func (r *firewallReconciler) readChains(f family, ipt iptables.Interface) error {
	got := map[tableChain][]string{}
	var missing []jump
	for _, table := range []string{iptables.TableFilter, iptables.TableNAT} {
		chains, err := ipt.SaveChains(table)
		if err != nil {
			return err
		}
		for name, rules := range chains {
			if name == chainServices || name == chainPostrouting {
				got[tableChain{table, name}] = rules
			}
		}
		for _, j := range f.jumps() {
			if j.table == table && !slices.Contains(chains[j.chain], iptables.RuleText(j.rule)) {
				missing = append(missing, j)
			}
		}
	}
	r.chains[f.proto] = got
	r.missingJumps[f.proto] = missing
	return nil
}

// syncChains rewrites, one iptables-restore transaction per table, the chains of one
// family whose rules differ from the mirror.
func (r *firewallReconciler) syncChains(f family, d *desiredState) error {
	hairpin := d.hairpinAddrs(f.proto == iptables.IPv4)
	want := firewallChains(f, r.opts, hairpin)
	have := r.chains[f.proto]
	if have == nil {
		return nil // no full sync has read this family yet
	}
	// Both tables in one iptables-restore run: a process start is most of the cost.
	var data []byte
	var written []tableChain
	jumps := r.missingJumps[f.proto]
	for _, table := range []string{iptables.TableFilter, iptables.TableNAT} {
		buf := iptables.Buffer{Table: table}
		for _, name := range []string{chainServices, chainPostrouting} {
			tc := tableChain{table, name}
			rules, ok := want[tc]
			if !ok {
				continue
			}
			if cur, exists := have[tc]; exists && slices.Equal(cur, rules) {
				continue
			}
			buf.Write = append(buf.Write, iptables.Chain{Name: name, Rules: rules})
			written = append(written, tc)
		}
		for _, j := range jumps {
			if j.table == table {
				buf.Jumps = append(buf.Jumps, iptables.Jump{Chain: j.chain, Rule: iptables.RuleText(j.rule)})
			}
		}
		if len(buf.Write) == 0 && len(buf.Jumps) == 0 {
			continue
		}
		section, err := buf.Bytes()
		if err != nil {
			return err
		}
		data = append(data, section...)
	}
	if len(data) > 0 {
		if err := r.tables[f.proto].Restore(data); err != nil {
			// The mirror may be wrong now; the next full sync re-reads the kernel.
			delete(r.chains, f.proto)
			return fmt.Errorf("writing service proxy chains (IPv%d): %w", f.proto, err)
		}
		for _, tc := range written {
			have[tc] = want[tc]
		}
		for _, j := range jumps {
			slog.Info("installed service proxy jump", "table", j.table, "chain", j.chain, "family", f.proto)
		}
		r.writes += len(written) + len(jumps)
		delete(r.missingJumps, f.proto)
	}
	for a := range r.hairpinApplied {
		if familyOf(a).proto == f.proto {
			delete(r.hairpinApplied, a)
		}
	}
	for _, a := range hairpin {
		r.hairpinApplied[a] = true
	}
	return nil
}

// cleanupFirewall removes our jumps, chains and sets (but the ledger set).
func cleanupFirewall(dp Dataplane) error {
	var errs []error
	for _, ipt := range dp.IPTables {
		f := families[0]
		if ipt.Protocol() == iptables.IPv6 {
			f = families[1]
		}
		for _, j := range f.jumps() {
			errs = append(errs, ipt.DeleteRule(j.table, j.chain, j.rule...))
		}
		for _, table := range []string{iptables.TableFilter, iptables.TableNAT} {
			chains, err := ipt.SaveChains(table)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			buf := iptables.Buffer{Table: table}
			for _, name := range []string{chainServices, chainPostrouting} {
				if _, ok := chains[name]; ok {
					buf.Delete = append(buf.Delete, name)
				}
			}
			if len(buf.Delete) == 0 {
				continue
			}
			data, err := buf.Bytes()
			if err == nil {
				err = ipt.Restore(data)
			}
			errs = append(errs, err)
		}
		for _, s := range f.sets() {
			errs = append(errs, dp.IPSets.Destroy(s.Name))
		}
	}
	return errors.Join(errs...)
}

// hairpinAddrs returns the local endpoint addresses of one family, sorted.
func (d *desiredState) hairpinAddrs(v4 bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(d.localEndpoints))
	for a := range d.localEndpoints {
		if a.Is4() == v4 {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
