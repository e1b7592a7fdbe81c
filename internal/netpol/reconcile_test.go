package netpol

import (
	"log/slog"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

func compileAll(idx *index, o options, policies []*networkingv1.NetworkPolicy) *Desired {
	var compiled []*compiledPolicy
	for _, p := range policies {
		compiled = append(compiled, compilePolicy(p, idx, o))
	}
	return assemble(compiled, idx, o)
}

func TestReconcileIncrementalAndDrift(t *testing.T) {
	idx, o := fixture(), opts()
	policies := []*networkingv1.NetworkPolicy{
		policy("x", "web", l("app", "a"), ingress(port(tcp, intstr.FromString("http")), pods(l("app", "b")))),
		policy("y", "deny", nil),
	}
	ipt, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
	// State of other programs that must survive everything below.
	if err := ipt.Restore([]byte("*filter\n:KUBE-ROUTER-SERVICES - [0:0]\n-A KUBE-ROUTER-SERVICES -j RETURN\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	for _, chain := range []string{"FORWARD", "OUTPUT"} {
		if _, err := ipt.EnsureRule(iptables.TableFilter, chain, true, "-j", "ACCEPT"); err != nil {
			t.Fatal(err)
		}
	}
	foreign := ipset.Set{Name: "KUBE-ROUTER-LB-IPS", Type: ipset.HashIP, Family: ipfamily.IPv4}
	if err := sets.Create(foreign); err != nil {
		t.Fatal(err)
	}
	if err := sets.Add(foreign.Name, "10.9.9.9"); err != nil {
		t.Fatal(err)
	}
	rec := newWriter(ipt, sets, slog.Default())
	if _, err := rec.Apply(&compileAll(idx, o, policies).Ruleset, true); err != nil {
		t.Fatal(err)
	}

	// Nothing changed: an incremental sync touches nothing.
	restores, ops := len(ipt.Restores), sets.Ops
	st, err := rec.Apply(&compileAll(idx, o, policies).Ruleset, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(ipt.Restores) != restores || sets.Ops != ops {
		t.Fatalf("no-op sync wrote %d buffers and %d set ops (%+v)", len(ipt.Restores)-restores, sets.Ops-ops, st)
	}

	// x/b loses its label: only the peer set changes, no chain is rewritten.
	relabelled := *idx.Pod("x", "b")
	relabelled.Labels = map[string]string{"app": "other"}
	idx.SetPod(&relabelled)
	st, err = rec.Apply(&compileAll(idx, o, policies).Ruleset, false)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChainsWritten != 0 || st.SetsWritten != 1 || st.EntriesChanged != 1 {
		t.Fatalf("label change applied %+v; want one set entry and no chains", st)
	}

	// A new local pod in y: its chain and the top chain are written, in one restore.
	p := *idx.Pod("y", "a")
	p.Name, p.IPs = "new", nil
	p.IPs = append(p.IPs, mustAddr("10.0.2.9"))
	idx.SetPod(&p)
	st, err = rec.Apply(&compileAll(idx, o, policies).Ruleset, false)
	if err != nil {
		t.Fatal(err)
	}
	if st.ChainsWritten != 2 || len(ipt.Restores) != restores+1 {
		t.Fatalf("new pod applied %+v with %d restores; want 2 chains in 1 restore", st, len(ipt.Restores)-restores)
	}
	want := ipt.Dump() + sets.Dump()
	if st, err := rec.Apply(&compileAll(idx, o, policies).Ruleset, true); err != nil || st.Drifted != 0 {
		t.Fatalf("full sync of an untouched kernel: drifted %d, err %v", st.Drifted, err)
	}

	// Drift: someone flushes one of our chains, deletes our jumps and adds to our set.
	if err := ipt.Restore([]byte("*filter\n:" + topChain + " - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := ipt.DeleteRule(iptables.TableFilter, "FORWARD", jumpRule...); err != nil {
		t.Fatal(err)
	}
	if err := ipt.DeleteRule(iptables.TableFilter, "OUTPUT", outputJumpRule...); err != nil {
		t.Fatal(err)
	}
	var ourSet string
	all, _ := sets.ListAll(nil)
	for _, s := range all {
		if s.Type == ipset.HashIP && Owner.OwnsSet(s.Name) {
			ourSet = s.Name
		}
	}
	if err := sets.Add(ourSet, "10.6.6.6"); err != nil {
		t.Fatal(err)
	}
	st, err = rec.Apply(&compileAll(idx, o, policies).Ruleset, true)
	if err != nil {
		t.Fatal(err)
	}
	if st.Drifted != 4 {
		t.Errorf("full sync counted %d drifted objects; want 4 (flushed chain, two jumps, set)", st.Drifted)
	}
	if got := ipt.Dump() + sets.Dump(); got != want {
		t.Fatalf("full sync did not repair drift:\n%s\nwant:\n%s", got, want)
	}

	// Policies deleted: our chains and sets go, the others' stay.
	if _, err := rec.Apply(&compileAll(idx, o, nil).Ruleset, false); err != nil {
		t.Fatal(err)
	}
	if err := rec.Cleanup(); err != nil {
		t.Fatal(err)
	}
	got := ipt.Dump() + sets.Dump()
	wantAfter := `*filter
:INPUT
:FORWARD
-A FORWARD -j ACCEPT
:OUTPUT
-A OUTPUT -j ACCEPT
:KUBE-ROUTER-SERVICES
-A KUBE-ROUTER-SERVICES -j RETURN
set KUBE-ROUTER-LB-IPS hash:ip inet
  10.9.9.9
`
	if got != wantAfter {
		t.Fatalf("after cleanup:\n%s\nwant:\n%s", got, wantAfter)
	}
}
