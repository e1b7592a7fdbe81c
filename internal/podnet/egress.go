package podnet

import (
	"errors"
	"log/slog"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
)

// Pod egress masquerading, per IP family:
//
//	nat POSTROUTING -> KUBE-ROUTER-POD-EGRESS: traffic from this node's pod CIDRs to
//	  anything outside the cluster (set kube-router-cluster-dst: every node's pod
//	  CIDRs and addresses, the cluster and service CIDRs) is masqueraded to the node's
//	  address. Traffic between pods keeps its source, so policies and servers see it.
const (
	chainEgress   = "KUBE-ROUTER-POD-EGRESS"
	egressComment = "kube-routerd pod egress"
	clusterDstV4  = "kube-router-cluster-dst"
	clusterDstV6  = "kube-router-cluster-dst6"
)

// Dataplane is the kernel state pod egress is written to: one iptables per family and
// the namespace's IP sets.
type Dataplane struct {
	IPTables []iptables.Interface
	IPSets   ipset.Interface
}

func clusterDstSet(v6 bool) ipset.Set {
	if v6 {
		return ipset.Set{Name: clusterDstV6, Type: ipset.HashNet, Family: ipset.IPv6}
	}
	return ipset.Set{Name: clusterDstV4, Type: ipset.HashNet, Family: ipset.IPv4}
}

// egressJump is the rule in nat POSTROUTING that enters our chain, as iptables-save
// prints it.
var egressJump = []string{"-m", "comment", "--comment", egressComment, "-j", chainEgress}

// egressRules are the rules of our chain for one family, as iptables-save prints them.
// --random-fully picks source ports at random, so many pods' connections to one
// destination do not collide on the node's address.
func egressRules(f egressFamily) []string {
	set := clusterDstSet(f.IPv6).Name
	rules := make([]string, 0, len(f.Sources))
	for _, src := range f.Sources {
		rules = append(rules, "-s "+src.String()+" -m set ! --match-set "+set+" dst -j MASQUERADE --random-fully")
	}
	return rules
}

// Owner is what pod egress masquerading has in the kernel.
var Owner = netfilter.Owner{
	Name:   "pod egress",
	Tables: []string{iptables.TableNAT},
	Chains: []string{chainEgress},
	Sets:   []string{clusterDstV4, clusterDstV6},
}

// egressRuleset is the desired kernel state of one family's masquerading.
func egressRuleset(f egressFamily) *netfilter.Ruleset {
	return &netfilter.Ruleset{
		Sets:   []ipset.SetEntries{{Set: clusterDstSet(f.IPv6), Entries: f.ClusterDestinations}},
		Chains: []netfilter.Chain{{Table: iptables.TableNAT, Name: chainEgress, Rules: egressRules(f)}},
		Jumps:  []netfilter.Jump{{Table: iptables.TableNAT, Chain: "POSTROUTING", Rule: iptables.RuleText(egressJump)}},
	}
}

// egressWriter hands each family's desired masquerading to that family's netfilter
// writer, the one owner of our chains and sets.
type egressWriter struct {
	families []egressWriterFamily
	writes   int // kernel changes of the last sync
}

type egressWriterFamily struct {
	ipv6      bool
	netfilter netfilter.Interface
}

func newEgressWriter(dp Dataplane, log *slog.Logger) *egressWriter {
	w := &egressWriter{}
	for _, ipt := range dp.IPTables {
		w.families = append(w.families, egressWriterFamily{ipv6: ipt.Protocol() == iptables.IPv6, netfilter: netfilter.NewWriter(Owner, ipt, dp.IPSets, log)})
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
		if i := slices.IndexFunc(want, func(e egressFamily) bool { return e.IPv6 == f.ipv6 }); i >= 0 {
			rs = egressRuleset(want[i])
		}
		st, err := f.netfilter.Apply(rs, full)
		w.writes += st.Writes()
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
