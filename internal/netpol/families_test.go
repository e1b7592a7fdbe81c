package netpol

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
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
	all, _ := sets.ListAll(nil)
	if len(all) != 2 {
		t.Fatalf("want one peer set per family:\n%s", sets.Dump())
	}
}

// A family no local pod has gets no policy sets or chains; its first local pod brings
// every policy in.
func TestFamilyWithoutLocalPodsCompilesNothing(t *testing.T) {
	ipt4, ipt6, sets := iptables.NewFake(ipfamily.IPv4), iptables.NewFake(ipfamily.IPv6), ipset.NewFake()
	bc := newBenchController(t, 2, Dataplane{IPTables: []iptables.Interface{ipt4, ipt6}, IPSets: sets})
	ctx := t.Context()
	if _, err := bc.c.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	count := func(family ipfamily.Family) (n int) {
		all, _ := sets.ListAll(nil)
		for _, s := range all {
			if s.Family == family {
				n++
			}
		}
		return n
	}
	chains6, _ := ipt6.SaveChains(iptables.TableFilter)
	if n := count(ipfamily.IPv6); n != 0 || len(chains6) != 4 {
		t.Fatalf("IPv4-only pods: %d IPv6 sets and %d IPv6 filter chains; want no set, no chain but the top one", n, len(chains6))
	}
	if count(ipfamily.IPv4) == 0 {
		t.Fatal("no IPv4 sets")
	}

	pod := benchPod(0, 0) // local
	pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: "fd00::1"})
	must(t, bc.factory.Core().V1().Pods().Informer().GetIndexer().Update(pod))
	bc.c.changes.Mark(changed{key: pod.Namespace + "/" + pod.Name})
	if _, err := bc.c.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if n := count(ipfamily.IPv6); n == 0 {
		t.Fatal("a local IPv6 pod did not bring the policies in for IPv6")
	}
}
