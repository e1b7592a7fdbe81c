package netpol

import (
	"net/netip"
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
)

// TestPoliciesWithTheSamePeersHoldOneCopyOfTheirSet: policies naming the same peers
// share the set's one entry list (at 1,000 policies that each admit every pod of a
// tier, separate copies cost hundreds of MiB), and a pod moving into or out of the
// peers gives the policies compiled after it the new entries, for peers in the
// policy's own namespace and for namespace-selected ones alike.
func TestPoliciesWithTheSamePeersHoldOneCopyOfTheirSet(t *testing.T) {
	for _, tc := range []struct {
		name string
		peer networkingv1.NetworkPolicyPeer
	}{
		{"pods of the policy's namespace", pods(l("tier", "web"))},
		{"pods of selected namespaces", both(l("tier", "web"), l("team", "a"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idx, o := fixture(), opts()
			compileBoth := func() (ipset.SetEntries, ipset.SetEntries) {
				first := compilePolicy(policy("x", "one", l("app", "a"), ingress(nil, tc.peer)), idx, o)
				second := compilePolicy(policy("x", "two", l("app", "b"), ingress(nil, tc.peer)), idx, o)
				if len(first.Sets) != 1 || len(second.Sets) != 1 || first.Sets[0].Name != second.Sets[0].Name {
					t.Fatalf("want one shared set each, got %+v and %+v", first.Sets, second.Sets)
				}
				return first.Sets[0], second.Sets[0]
			}
			a, b := compileBoth()
			if !slices.Equal(a.Entries, []string{"10.0.1.2"}) || &a.Entries[0] != &b.Entries[0] {
				t.Fatalf("entries %v and %v: want [10.0.1.2], one copy", a.Entries, b.Entries)
			}

			joining := &Pod{Namespace: "x", Name: "new", Labels: l("tier", "web"), NodeName: "n2",
				IPs: []netip.Addr{netip.MustParseAddr("10.0.1.9")}}
			idx.SetPod(joining)
			if a, _ = compileBoth(); !slices.Equal(a.Entries, []string{"10.0.1.2", "10.0.1.9"}) {
				t.Fatalf("after a pod joined the peers: %v", a.Entries)
			}
			leaving := *joining
			leaving.Labels = l("tier", "db")
			idx.SetPod(&leaving)
			if a, _ = compileBoth(); !slices.Equal(a.Entries, []string{"10.0.1.2"}) {
				t.Fatalf("after a pod left the peers: %v", a.Entries)
			}
			idx.DeletePod("x", "b")
			if a, _ = compileBoth(); len(a.Entries) != 0 {
				t.Fatalf("after the last peer was deleted: %v", a.Entries)
			}
		})
	}
}
