package podnet

import (
	"errors"
	"fmt"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
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

// egressApplied mirrors what one family's kernel holds of ours.
type egressApplied struct {
	members map[string]bool
	rules   []string
	jump    bool
	chain   bool // our chain exists
	set     bool // our set exists
}

// egressReconciler keeps pod egress masquerading in line with the desired state.
// Between full syncs it trusts its mirror of the kernel and writes only differences.
type egressReconciler struct {
	dp      Dataplane
	applied map[bool]*egressApplied // by IPv6
	writes  int
}

func newEgressReconciler(dp Dataplane) *egressReconciler {
	return &egressReconciler{dp: dp, applied: map[bool]*egressApplied{}}
}

func isIPv6(t iptables.Interface) bool { return t.Protocol() == iptables.IPv6 }

// sync makes each family's kernel state match want (families absent from want lose
// our chain, jump and set). A full sync re-reads the kernel first.
func (r *egressReconciler) sync(want []egressFamily, full bool) error {
	r.writes = 0
	var errs []error
	for _, ipt := range r.dp.IPTables {
		v6 := isIPv6(ipt)
		if full || r.applied[v6] == nil {
			a, err := r.read(ipt)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			r.applied[v6] = a
		}
		i := slices.IndexFunc(want, func(f egressFamily) bool { return f.IPv6 == v6 })
		var err error
		if i < 0 {
			err = r.remove(ipt, r.applied[v6])
		} else {
			err = r.apply(ipt, want[i], r.applied[v6])
		}
		if err != nil {
			r.applied[v6] = nil // unknown now: re-read next time
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (r *egressReconciler) read(ipt iptables.Interface) (*egressApplied, error) {
	set := clusterDstSet(isIPv6(ipt))
	a := &egressApplied{members: map[string]bool{}}
	chains, err := ipt.SaveChains(iptables.TableNAT)
	if err != nil {
		return nil, err
	}
	a.rules, a.chain = chains[chainEgress]
	a.jump = slices.Contains(chains["POSTROUTING"], iptables.RuleText(egressJump))
	cur, err := r.dp.IPSets.List(set.Name)
	if err == nil {
		a.set = true
		for _, e := range cur.Entries {
			a.members[e] = true
		}
	}
	return a, nil
}

func (r *egressReconciler) apply(ipt iptables.Interface, want egressFamily, a *egressApplied) error {
	set := clusterDstSet(want.IPv6)
	// The set first: iptables-restore refuses a rule that names a missing set.
	if !a.set {
		if err := r.dp.IPSets.Create(set); err != nil {
			return err
		}
		a.set = true
		r.writes++
	}
	wantMembers := make(map[string]bool, len(want.ClusterDestinations))
	var adds []string
	for _, e := range want.ClusterDestinations {
		wantMembers[e] = true
		if !a.members[e] {
			adds = append(adds, e)
		}
	}
	if len(adds) > 0 {
		if err := errors.Join(r.dp.IPSets.AddEntries(set.Name, adds)...); err != nil {
			return err
		}
		for _, e := range adds {
			a.members[e] = true
		}
		r.writes += len(adds)
	}
	for e := range a.members {
		if !wantMembers[e] {
			if err := r.dp.IPSets.Del(set.Name, e); err != nil {
				return err
			}
			delete(a.members, e)
			r.writes++
		}
	}
	rules := egressRules(want)
	if a.chain && a.jump && slices.Equal(a.rules, rules) {
		return nil
	}
	buf := iptables.Buffer{Table: iptables.TableNAT, Write: []iptables.Chain{{Name: chainEgress, Rules: rules}}}
	if !a.jump {
		buf.Jumps = []iptables.Jump{{Chain: "POSTROUTING", Rule: iptables.RuleText(egressJump)}}
	}
	data, err := buf.Bytes()
	if err != nil {
		return err
	}
	if err := ipt.Restore(data); err != nil {
		return fmt.Errorf("writing %s: %w", chainEgress, err)
	}
	a.rules, a.chain, a.jump = rules, true, true
	r.writes++
	return nil
}

// remove takes out the jump, then the chain, then the set (the kernel refuses to
// destroy a set a rule still names).
func (r *egressReconciler) remove(ipt iptables.Interface, a *egressApplied) error {
	if a.jump {
		if err := ipt.DeleteRule(iptables.TableNAT, "POSTROUTING", egressJump...); err != nil {
			return err
		}
		a.jump = false
		r.writes++
	}
	if a.chain {
		data, err := iptables.Buffer{Table: iptables.TableNAT, Delete: []string{chainEgress}}.Bytes()
		if err != nil {
			return err
		}
		if err := ipt.Restore(data); err != nil {
			return fmt.Errorf("deleting %s: %w", chainEgress, err)
		}
		a.chain, a.rules = false, nil
		r.writes++
	}
	if a.set {
		if err := r.dp.IPSets.Destroy(clusterDstSet(isIPv6(ipt)).Name); err != nil {
			return err
		}
		a.set, a.members = false, map[string]bool{}
		r.writes++
	}
	return nil
}

// OwnsChain reports whether chain is one the pod network creates.
func OwnsChain(chain string) bool { return chain == chainEgress }

// OwnsSet reports whether set is one the pod network creates.
func OwnsSet(set string) bool { return set == clusterDstV4 || set == clusterDstV6 }
