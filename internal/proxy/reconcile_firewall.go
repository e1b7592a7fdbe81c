package proxy

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// firewall builds the desired firewall of each family and hands it to that family's
// netfilter writer, the one owner of our chains and sets. It keeps the sets' desired
// entries between syncs, so a partial sync changes them only for the keys it touched.
// Used by the sync loop only.
type firewall struct {
	sysctls sysctl.Interface
	opts    FirewallOptions
	// nodeAddrs are the node's addresses, whose own connections to a restricted
	// load-balancer IP pass when they are inside its source ranges.
	nodeAddrs []netip.Addr
	// dsrPodMTU reports the smallest MTU of the pods holding DSR virtual addresses.
	dsrPodMTU func() int
	families  []*firewallFamily
	// writes counts the kernel changes of the last sync.
	writes int
}

// firewallFamily is one IP family's writer and desired set entries.
type firewallFamily struct {
	family
	netfilter   netfilter.Interface
	vips, local sortedEntries
}

func newFirewall(dp Dataplane, opts FirewallOptions, dsrPodMTU func() int, log *slog.Logger) *firewall {
	fw := &firewall{sysctls: dp.Sysctls, opts: opts, dsrPodMTU: dsrPodMTU}
	for _, ipt := range dp.IPTables {
		f := families[0]
		if ipt.Family() == ipfamily.IPv6 {
			f = families[1]
		}
		fw.families = append(fw.families, &firewallFamily{family: f, netfilter: netfilter.NewWriter(Owner, ipt, dp.IPSets, log)})
	}
	return fw
}

// of returns the family of address a, nil when this node does not serve it.
func (r *firewall) of(a netip.Addr) *firewallFamily {
	want := familyOf(a).proto
	for _, ff := range r.families {
		if ff.proto == want {
			return ff
		}
	}
	return nil
}

// full re-reads the kernel and repairs everything of ours: sysctls, sets, chains and
// the jumps into them.
func (r *firewall) full(d *desiredState) error {
	r.writes = 0
	n, err := sysctl.Ensure(r.sysctls, requiredSysctls)
	r.writes += n
	if err != nil {
		return err
	}
	vips := map[*firewallFamily][]string{}
	local := map[*firewallFamily][]string{}
	for a := range d.vipUsers {
		if ff := r.of(a); ff != nil {
			vips[ff] = append(vips[ff], a.String())
		}
	}
	for k, vs := range d.byKey {
		if ff := r.of(k.Addr); ff != nil && keepsClientAddr(vs) {
			local[ff] = append(local[ff], ipvs.LedgerEntry(k))
		}
	}
	var errs []error
	for _, ff := range r.families {
		ff.vips.reset(vips[ff])
		ff.local.reset(local[ff])
		errs = append(errs, r.apply(ff, d, true))
	}
	return errors.Join(errs...)
}

// partial brings the set entries of the given keys and the hairpin rules up to date,
// trusting the writers' record of the kernel.
func (r *firewall) partial(d *desiredState, keys []ipvs.Key) error {
	r.writes = 0
	for _, k := range keys {
		if ff := r.of(k.Addr); ff != nil {
			ff.local.set(ipvs.LedgerEntry(k), keepsClientAddr(d.byKey[k]))
			ff.vips.set(k.Addr.String(), d.vipUsers[k.Addr] > 0)
		}
	}
	var errs []error
	for _, ff := range r.families {
		errs = append(errs, r.apply(ff, d, false))
	}
	return errors.Join(errs...)
}

func (r *firewall) apply(ff *firewallFamily, d *desiredState, full bool) error {
	sets := ff.sets()
	want := &netfilter.Ruleset{
		Sets: []ipset.SetEntries{
			{Set: sets[0], Entries: ff.vips.share()},
			{Set: sets[1], Entries: ff.local.share()},
		},
		Chains: append(firewallChains(ff.family, r.opts, d.hairpinAddrs(ff.proto == ipfamily.IPv4), ofFamily(d.restricted, ff.proto), r.nodeAddrs),
			dsrMSSChain(ff.family, ofFamily(d.dsrLocal, ff.proto), r.dsrPodMTU())),
		Jumps: ff.jumps(),
	}
	st, err := ff.netfilter.Apply(want, full)
	r.writes += st.Writes()
	return err
}

// ofFamily returns the virtual services of one family in vss, sorted by key.
func ofFamily(vss map[ipvs.Key]*virtualServer, f ipfamily.Family) []*virtualServer {
	var out []*virtualServer
	for _, vs := range vss {
		if ipfamily.Of(vs.Addr) == f {
			out = append(out, vs)
		}
	}
	slices.SortFunc(out, func(a, b *virtualServer) int { return a.Key.Compare(b.Key) })
	return out
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

// sortedEntries are a set's desired entries, sorted. They change in place until they
// are shared with the writer, which keeps them as its record of the kernel; the next
// change after that works on a copy.
type sortedEntries struct {
	entries []string
	shared  bool
}

func (s *sortedEntries) reset(entries []string) {
	slices.Sort(entries)
	s.entries, s.shared = entries, false
}

// set adds or removes one entry.
func (s *sortedEntries) set(entry string, want bool) {
	i, found := slices.BinarySearch(s.entries, entry)
	if found == want {
		return
	}
	if s.shared {
		s.entries, s.shared = slices.Clone(s.entries), false
	}
	if want {
		s.entries = slices.Insert(s.entries, i, entry)
	} else {
		s.entries = slices.Delete(s.entries, i, i+1)
	}
}

func (s *sortedEntries) share() []string {
	s.shared = true
	return s.entries
}
