package netpol

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// dualStackFixture is fixture with an IPv6 address for every pod.
func dualStackFixture() *index {
	idx := fixture()
	for _, byName := range idx.Pods {
		for _, p := range byName {
			p.IPs = append(p.IPs, mustAddr("fd00::"+strings.ReplaceAll(p.IPs[0].String(), ".", ":")))
		}
	}
	return idx
}

func isolatingOpts(family ipfamily.Family) options {
	o := opts()
	o.Family, o.IsolateUntilEnforced = family, true
	o.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
	if family == ipfamily.IPv6 {
		o.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00::10:0:0:0/80")}
	}
	return o
}

func TestEnforcedLedgerListsEveryLocalPodOfTheFamily(t *testing.T) {
	idx := dualStackFixture()
	policies := []*networkingv1.NetworkPolicy{policy("x", "web", l("app", "a"))}
	for family, want := range map[ipfamily.Family][]string{
		// Policed or not; not y/c (another node), not x/host (host network).
		ipfamily.IPv4: {"10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.3.1"},
		ipfamily.IPv6: {"fd00::10:0:1:1", "fd00::10:0:1:2", "fd00::10:0:2:1", "fd00::10:0:3:1"},
	} {
		o := isolatingOpts(family)
		d := compileAll(idx, o, policies)
		if len(d.Ledgers) != 1 || d.Ledgers[0].Name != "KUBE-ROUTER-ENFORCED-"+o.familyTag() || d.Ledgers[0].Family != family || !slices.Equal(d.Ledgers[0].Entries, want) {
			t.Errorf("IPv%d: ledgers %+v; want %v", family, d.Ledgers, want)
		}
		if !Owner.OwnsSet(d.Ledgers[0].Name) {
			t.Errorf("IPv%d: the Owner does not claim %s", family, d.Ledgers[0].Name)
		}
		top := d.Chains[len(d.Chains)-1]
		cidr, set := o.PodCIDRs[0].String(), "KUBE-ROUTER-ENFORCED-"+o.familyTag()
		wantRules := []string{
			"-s " + cidr + ` -m comment --comment "kube-routerd: from a pod not enforced yet" -m addrtype ! --src-type LOCAL -m set ! --match-set ` + set + " src -j DROP",
			"-d " + cidr + ` -m comment --comment "kube-routerd: to a pod not enforced yet" -m addrtype ! --dst-type LOCAL -m set ! --match-set ` + set + " dst -j DROP",
		}
		head := len(o.topChainHead()) - 2
		if !slices.Equal(top.Rules[head:head+2], wantRules) {
			t.Errorf("IPv%d: top chain %q; want the drops right after the replies (and neighbour discovery)", family, top.Rules)
		}
	}
	for what, o := range map[string]options{
		"switched off": func() options { o := isolatingOpts(ipfamily.IPv4); o.IsolateUntilEnforced = false; return o }(),
		"no pod CIDR":  func() options { o := isolatingOpts(ipfamily.IPv4); o.PodCIDRs = nil; return o }(),
	} {
		d := compileAll(idx, o, policies)
		if len(d.Ledgers) != 0 || strings.Contains(strings.Join(d.Chains[len(d.Chains)-1].Rules, "\n"), "ENFORCED") {
			t.Errorf("%s: ledger %v, top chain %q; want neither", what, d.Ledgers, d.Chains[len(d.Chains)-1].Rules)
		}
	}
}

// Read through the evaluator: an address of the pod CIDR the controller does not
// know is isolated both ways; known pods, the node and replies are not.
func TestPodsNotEnforcedAreIsolated(t *testing.T) {
	for _, family := range ipfamily.Both {
		o := isolatingOpts(family)
		idx := dualStackFixture()
		e := rulesetEvaluator(&compileAll(idx, o, nil).Ruleset)
		addr := func(s string) netip.Addr {
			if family == ipfamily.IPv6 {
				return mustAddr("fd00::" + strings.ReplaceAll(s, ".", ":"))
			}
			return mustAddr(s)
		}
		known, other, unknown, gateway := addr("10.0.1.1"), addr("10.0.2.1"), addr("10.0.1.77"), addr("10.0.0.1")
		remote := addr("10.9.0.1") // another node's pod: outside the pod CIDR
		if family == ipfamily.IPv6 {
			remote = mustAddr("fd00:9::1")
		}
		for _, c := range []struct {
			what    string
			hook    string
			p       packet
			dropped bool
		}{
			{"known to known", "FORWARD", packet{src: known, dst: other}, false},
			{"unknown to known", "FORWARD", packet{src: unknown, dst: known}, true},
			{"known to unknown", "FORWARD", packet{src: known, dst: unknown}, true},
			{"another node's pod to unknown", "FORWARD", packet{src: remote, dst: unknown}, true},
			{"another node's pod to known", "FORWARD", packet{src: remote, dst: known}, false},
			{"reply to unknown", "FORWARD", packet{src: known, dst: unknown, established: true}, false},
			{"unknown to the node's gateway", "INPUT", packet{src: unknown, dst: gateway, dstLocal: true}, true},
			{"known to the node's gateway", "INPUT", packet{src: known, dst: gateway, dstLocal: true}, false},
			{"the node (gateway) to unknown", "OUTPUT", packet{src: gateway, dst: unknown, srcLocal: true}, false},
			{"the node to itself on the gateway", "INPUT", packet{src: gateway, dst: gateway, srcLocal: true, dstLocal: true}, false},
			{"IPVS sends unknown's connection on", "OUTPUT", packet{src: unknown, dst: known}, true},
		} {
			c.p.proto, c.p.dport = "tcp", 80
			dropped, trace, err := e.verdict(c.hook, c.p)
			if err != nil {
				t.Fatalf("IPv%d %s: %v", family, c.what, err)
			}
			if dropped != c.dropped {
				t.Errorf("IPv%d %s: dropped %v, want %v (trace %+v)", family, c.what, dropped, c.dropped, trace)
			}
		}
	}
}

// The drops come before the dispatch: a pod whose chains are in but whose address
// is not (yet, or no longer) in the ledger is still isolated, whatever its policies
// allow.
func TestDispatchedPodOutsideTheLedgerIsIsolated(t *testing.T) {
	o := isolatingOpts(ipfamily.IPv4)
	allowAll := policy("x", "all", l("app", "a"), ingress(nil))
	d := compileAll(fixture(), o, []*networkingv1.NetworkPolicy{allowAll})
	p := packet{src: mustAddr("10.0.2.1"), dst: mustAddr("10.0.1.1"), proto: "tcp", dport: 80}
	if dropped, _, err := rulesetEvaluator(&d.Ruleset).verdict("FORWARD", p); err != nil || dropped {
		t.Fatalf("y/a -> x/a with x/a in the ledger: dropped %v, %v; its policy allows it", dropped, err)
	}
	ledger := d.Ledgers[0]
	ledger.Entries = slices.DeleteFunc(slices.Clone(ledger.Entries), func(e string) bool { return e == "10.0.1.1" })
	d.Ledgers = []ipset.SetEntries{ledger}
	dropped, trace, err := rulesetEvaluator(&d.Ruleset).verdict("FORWARD", p)
	if err != nil || !dropped || !strings.Contains(trace[len(trace)-1].rule, "not enforced yet") {
		t.Fatalf("y/a -> x/a with x/a's chains but not its address: dropped %v (%+v), %v; want the not-enforced drop", dropped, trace, err)
	}
}
