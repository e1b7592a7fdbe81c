package netpol

import (
	"net/netip"
	"reflect"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The assembler must always produce what a fresh assemble produces, whatever changed
// between its calls, and hand back the very slices of chains it did not rebuild.
func TestAssemblerMatchesFreshAssembleAcrossChanges(t *testing.T) {
	idx, o := fixture(), opts()
	o.BetaNamespaceIsolation = true
	o.IsolateUntilEnforced, o.PodCIDRs = true, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
	policies := []*networkingv1.NetworkPolicy{
		policy("x", "web", l("app", "a"), ingress(port(tcp, intstr.FromString("http")), pods(l("app", "b")))),
		policy("y", "deny", nil),
	}
	compile := func() []*compiledPolicy {
		var out []*compiledPolicy
		for _, p := range policies {
			out = append(out, compilePolicy(p, idx, o))
		}
		return out
	}
	asm := newAssembler(o)
	var compiled []*compiledPolicy
	check := func(step string) *Desired {
		t.Helper()
		compiled = compile()
		got, want := asm.Assemble(compiled, idx), assemble(compiled, idx, o)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: assembler gave\n%+v\nfresh assemble gave\n%+v", step, got, want)
		}
		return got
	}
	rulesOf := func(d *Desired, chain string) []string {
		for _, c := range d.Chains {
			if c.Name == chain {
				return c.Rules
			}
		}
		t.Fatalf("no chain %s", chain)
		return nil
	}
	first := check("first")
	untouched := name(podIngressKind, "z/a", "4") // beta-isolated, no policy
	if again := asm.Assemble(compiled, idx); again != first {
		t.Fatalf("nothing changed, yet the desired state was rebuilt")
	}

	p := *idx.Pod("y", "a")
	p.Name, p.IPs = "new", []netip.Addr{mustAddr("10.0.2.9")}
	idx.SetPod(&p)
	d := check("pod added in y")
	if &rulesOf(d, untouched)[0] != &rulesOf(first, untouched)[0] {
		t.Errorf("pod added in y: chain of untouched pod z/a was rebuilt")
	}

	unselected := *idx.Pod("x", "b")
	unselected.Name, unselected.Labels, unselected.IPs = "unselected", nil, []netip.Addr{mustAddr("10.0.1.50")}
	idx.SetPod(&unselected)
	if d := check("pod no policy selects added in x"); d == first || !reflect.DeepEqual(d.Ledgers[0].Entries[:2], []string{"10.0.1.1", "10.0.1.2"}) || len(d.Ledgers[0].Entries) != 6 {
		t.Errorf("pod no policy selects: ledger %v; want it listed with the others", d.Ledgers[0].Entries)
	}

	o.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/17")}
	asm.SetPodCIDRs(o.PodCIDRs)
	check("pod CIDR changed")

	moved := *idx.Pod("x", "b")
	moved.NodeName = "n2"
	idx.SetPod(&moved)
	check("pod x/b moved to another node")

	idx.DeletePod("y", "new")
	check("pod deleted")

	policies = policies[:1]
	check("policy deleted")

	idx.Namespaces["z"].BetaIngressIsolation = false
	check("beta isolation lifted")

	ip := *idx.Pod("x", "a")
	ip.IPs = []netip.Addr{mustAddr("10.0.1.99")}
	idx.SetPod(&ip)
	check("pod address changed")
}

// TestIndexKeepsItsNodesPodsSorted: the local node's pods are kept sorted at hand;
// another node's (for explain) are found by walking, and cost the index nothing.
func TestIndexKeepsItsNodesPodsSorted(t *testing.T) {
	idx := newIndex("n1")
	for _, p := range []*Pod{
		{Namespace: "a-b", Name: "x", NodeName: "n1"},
		{Namespace: "a", Name: "y", NodeName: "n1"},
		{Namespace: "a", Name: "x", NodeName: "n1"},
		{Namespace: "a", Name: "z", NodeName: "n2"},
	} {
		idx.SetPod(p)
	}
	keys := func(node string) []string {
		var out []string
		for _, p := range idx.podsOnNode(node) {
			out = append(out, p.Key())
		}
		return out
	}
	if got, want := keys("n1"), []string{"a/x", "a/y", "a-b/x"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pods on n1: %q, want %q (by namespace, then name)", got, want)
	}
	idx.SetPod(&Pod{Namespace: "a", Name: "x", NodeName: "n2"})
	idx.DeletePod("a-b", "x")
	if got, want := keys("n1"), []string{"a/y"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after a move and a delete, pods on n1: %q, want %q", got, want)
	}
	if got, want := keys("n2"), []string{"a/x", "a/z"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pods on n2: %q, want %q", got, want)
	}
	if len(idx.local.pos) != 1 {
		t.Errorf("the index holds %d positions, want only n1's one pod's", len(idx.local.pos))
	}
}

// A policy that selects no pod of this node needs neither its chains nor its sets
// here: nothing jumps to them. They come with its first local pod and go with its
// last.
func TestPolicySelectingNoLocalPodIsLeftOut(t *testing.T) {
	idx, o := fixture(), opts()
	// y/c is y's only app=c pod, and it runs on another node.
	remote := policy("y", "remote", l("app", "c"), ingress(nil, pods(l("app", "b"))))
	local := policy("x", "local", l("app", "a"), ingress(nil, pods(l("app", "b"))))
	asm := newAssembler(o)
	has := func(d *Desired, cp *compiledPolicy) (chains, sets int) {
		for _, c := range d.Chains {
			for _, own := range cp.Chains {
				if c.Name == own.Name {
					chains++
				}
			}
		}
		for _, s := range d.Sets {
			for _, own := range cp.Sets {
				if s.Name == own.Name {
					sets++
				}
			}
		}
		return chains, sets
	}

	remoteCP, localCP := compilePolicy(remote, idx, o), compilePolicy(local, idx, o)
	d := asm.Assemble([]*compiledPolicy{remoteCP, localCP}, idx)
	if chains, _ := has(d, remoteCP); chains != 0 {
		t.Errorf("a policy selecting only another node's pod has %d chains here", chains)
	}
	if chains, sets := has(d, localCP); chains != 1 || sets != 1 {
		t.Errorf("the policy selecting local pods has %d chains and %d sets, want 1 and 1", chains, sets)
	}
	// Both admit app=b of their namespaces; y has none, so the remote policy's set
	// is its own, and must not be written.
	if _, sets := has(d, remoteCP); sets != 0 || asm.holds(remoteCP.Sets[0].Name) {
		t.Errorf("the set of a policy selecting only another node's pod is written here")
	}

	arrived := *idx.Pod("y", "c")
	arrived.Name, arrived.NodeName, arrived.IPs = "local-c", node, []netip.Addr{mustAddr("10.0.2.9")}
	idx.SetPod(&arrived)
	remoteCP = compilePolicy(remote, idx, o)
	d = asm.Assemble([]*compiledPolicy{remoteCP, localCP}, idx)
	if chains, sets := has(d, remoteCP); chains != 1 || sets != 1 {
		t.Errorf("with a local pod selected the policy has %d chains and %d sets, want 1 and 1", chains, sets)
	}

	idx.DeletePod("y", "local-c")
	remoteCP = compilePolicy(remote, idx, o)
	d = asm.Assemble([]*compiledPolicy{remoteCP, localCP}, idx)
	if chains, sets := has(d, remoteCP); chains != 0 || sets != 0 {
		t.Errorf("after its last local pod left the policy has %d chains and %d sets here", chains, sets)
	}
	if !reflect.DeepEqual(d, assemble([]*compiledPolicy{remoteCP, localCP}, idx, o)) {
		t.Error("the assembler and a fresh assemble disagree")
	}
}
