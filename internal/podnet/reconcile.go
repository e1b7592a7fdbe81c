package podnet

import (
	"errors"
	"log/slog"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Owner is what pod egress masquerading has in the kernel.
var Owner = netfilter.Owner{
	Name:   "pod egress",
	Tables: []string{iptables.TableNAT},
	Chains: []string{chainEgress},
	Sets:   []string{clusterDstV4, clusterDstV6},
}

// egressWriter hands each family's desired masquerading to that family's netfilter
// writer, the one owner of our chains and sets.
type egressWriter struct {
	families []egressWriterFamily
	writes   int // kernel changes of the last sync
}

type egressWriterFamily struct {
	family    ipfamily.Family
	netfilter netfilter.Interface
}

func newEgressWriter(dp Dataplane, log *slog.Logger) *egressWriter {
	w := &egressWriter{}
	for _, ipt := range dp.IPTables {
		w.families = append(w.families, egressWriterFamily{family: ipt.Family(), netfilter: netfilter.NewWriter(Owner, ipt, dp.IPSets, log)})
	}
	return w
}

// sync makes each family's kernel state match want; families absent from want lose
// our chain, jump and set. A full sync re-reads the kernel first.
func (w *egressWriter) sync(want []egressFamily, full bool) error {
	w.writes = 0
	var errs []error
	for _, f := range w.families {
		rs := &netfilter.Ruleset{}
		if i := slices.IndexFunc(want, func(e egressFamily) bool { return e.Family == f.family }); i >= 0 {
			rs = egressRuleset(want[i])
		}
		st, err := f.netfilter.Apply(rs, full)
		w.writes += st.Writes()
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
