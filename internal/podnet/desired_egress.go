package podnet

import (
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
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

func clusterDstSet(f ipfamily.Family) ipset.Set {
	if f == ipfamily.IPv6 {
		return ipset.Set{Name: clusterDstV6, Type: ipset.HashNet, Family: ipfamily.IPv6}
	}
	return ipset.Set{Name: clusterDstV4, Type: ipset.HashNet, Family: ipfamily.IPv4}
}

// egressJump is the rule in nat POSTROUTING that enters our chain, as iptables-save
// prints it.
var egressJump = []string{"-m", "comment", "--comment", egressComment, "-j", chainEgress}

// egressRules are the rules of our chain for one family, as iptables-save prints them.
// --random-fully picks source ports at random, so many pods' connections to one
// destination do not collide on the node's address.
func egressRules(f egressFamily) []string {
	set := clusterDstSet(f.Family).Name
	rules := make([]string, 0, len(f.Sources))
	for _, src := range f.Sources {
		rules = append(rules, "-s "+src.String()+" -m set ! --match-set "+set+" dst -j MASQUERADE --random-fully")
	}
	return rules
}

// egressRuleset is the desired kernel state of one family's masquerading.
func egressRuleset(f egressFamily) *netfilter.Ruleset {
	return &netfilter.Ruleset{
		Sets:   []ipset.SetEntries{{Set: clusterDstSet(f.Family), Entries: f.ClusterDestinations}},
		Chains: []netfilter.Chain{{Table: iptables.TableNAT, Name: chainEgress, Rules: egressRules(f)}},
		Jumps:  []netfilter.Jump{{Table: iptables.TableNAT, Chain: "POSTROUTING", Rule: iptables.RuleText(egressJump)}},
	}
}
