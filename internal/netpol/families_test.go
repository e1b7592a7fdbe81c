package netpol

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// IPv4 and IPv6 sets live in one kernel namespace: a full sync of one family must
// leave the other family's sets alone (destroying them fails while rules use them).
func TestFamiliesShareTheSetNamespace(t *testing.T) {
	idx := fixture()
	for _, p := range idx.Pods["x"] {
		p.IPs = append(p.IPs, netip.MustParseAddr("fd00::"+strings.TrimPrefix(p.IPs[0].String(), "10.0.1.")))
	}
	policies := []*networkingv1.NetworkPolicy{policy("x", "web", l("app", "a"), ingress(nil, pods(l("app", "b"))))}
	sets := ipset.NewFake()
	var recs []netfilter.Interface
	var opts []options
	for _, f := range ipfamily.Both {
		opts = append(opts, options{NodeName: node, Family: f, MarkBit: defaultMarkBit})
		recs = append(recs, newWriter(iptables.NewFake(f), sets, slog.Default()))
	}
	for round := range 2 {
		for i, rec := range recs {
			st, err := rec.Apply(&compileAll(idx, opts[i], policies).Ruleset, true)
			if err != nil {
				t.Fatal(err)
			}
			if st.SetsDestroyed != 0 || (round > 0 && st.Drifted != 0) {
				t.Fatalf("round %d, IPv%d: %+v; the other family's sets are not ours to touch", round, opts[i].Family, st)
			}
		}
	}
	all, _ := sets.ListAll()
	if len(all) != 2 {
		t.Fatalf("want one peer set per family:\n%s", sets.Dump())
	}
}
