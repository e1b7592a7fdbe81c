package netpol

import (
	"context"
	"log/slog"
	"net/netip"
	"runtime"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

// TestPeersRecurringAcrossPoliciesShareOneSet compiles the envelope benchmark's
// policies, whose ingress rules each admit their namespace's frontend pods and the
// namespaces of one of 20 teams. With a set per peer, the policies naming a team
// share its set; with one set per rule (the union of its peers), each pair of
// namespace and team had a set of its own repeating the team's members, and the
// entries grew with policies times pods: 1.9 million at half the envelope (26 a pod).
func TestPeersRecurringAcrossPoliciesShareOneSet(t *testing.T) {
	size := workload.Envelope.Scale(0.04) // 6,000 pods
	// 25 namespaces and 20 teams make 100 distinct pairs of a policy's namespace
	// and the team it admits, as at the envelope's 500 namespaces.
	size.Namespaces, size.Policies = 25, 400
	factory := k8s.NewInformerFactory(fake.NewClientset(), nil, 0, nil)
	ipt, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
	c, err := New(daemon.Env{Informers: factory, NodeName: workload.NodeName(0), Registry: prometheus.NewRegistry(),
		Log: slog.New(slog.DiscardHandler)}, config.Default().NetworkPolicy, Dataplane{IPTables: []iptables.Interface{ipt}, IPSets: sets})
	if err != nil {
		t.Fatal(err)
	}
	for i := range size.Namespaces {
		must(t, factory.Core().V1().Namespaces().Informer().GetIndexer().Add(k8s.Strip(size.Namespace(i))))
	}
	for i := range size.Pods {
		must(t, factory.Core().V1().Pods().Informer().GetIndexer().Add(k8s.Strip(size.Pod(i))))
	}
	for i := range size.Policies {
		must(t, factory.Networking().V1().NetworkPolicies().Informer().GetIndexer().Add(k8s.Strip(size.NetworkPolicy(i))))
	}
	if _, err := c.sync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	d := c.Details().(Details)
	t.Logf("%d pods, %d policies: %d rules, %d sets, %d entries", size.Pods, size.Policies, d.Rules, d.Sets, d.Entries)
	if d.Rules == 0 {
		t.Fatal("the policies compiled to no rules")
	}
	// A pod is a member of its namespace's frontend set (if a frontend), its team's
	// set and the data tier's set: at most three entries a pod.
	if d.Entries > 3*size.Pods {
		t.Errorf("%d set entries for %d pods: peers are repeated across policies", d.Entries, size.Pods)
	}
}

// TestIngressNamedPortsDoNotListThePeers: an ingress rule's named ports resolve on
// the policy's targets, so compiling it, once its peers' shared set is memoised,
// allocates the same whatever the number of peer pods. It used to list them all
// (and, at the envelope, walk the cluster's pods once per policy).
func TestIngressNamedPortsDoNotListThePeers(t *testing.T) {
	compileBytes := func(peerPods int) uint64 {
		idx := newIndex(node)
		idx.Namespaces["app"] = &Namespace{Name: "app", Labels: l("ns", "app")}
		idx.Namespaces["team"] = &Namespace{Name: "team", Labels: l("team", "a")}
		idx.SetPod((&Pod{Namespace: "app", Name: "web", NodeName: node, Labels: l("app", "web"),
			IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}).WithPorts([]k8s.NamedPort{{Name: "http", Port: 8080}}))
		for i := range peerPods {
			idx.SetPod(&Pod{Namespace: "team", Name: "p" + strconv.Itoa(i), NodeName: "elsewhere",
				IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})}})
		}
		p := policy("app", "web", l("app", "web"), ingress(port(corev1.ProtocolTCP, intstr.FromString("http")), nss(l("team", "a"))))
		o := opts()
		compilePolicy(p, idx, o) // memoises the team's set
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		const runs = 20
		for range runs {
			compilePolicy(p, idx, o)
		}
		runtime.ReadMemStats(&after)
		return (after.TotalAlloc - before.TotalAlloc) / runs
	}
	few, many := compileBytes(10), compileBytes(5000)
	t.Logf("compiling with 10 peer pods: %d bytes; with 5,000: %d bytes", few, many)
	if many > few+8<<10 {
		t.Errorf("compiling allocates %d bytes with 5,000 peer pods against %d with 10: the peers are listed", many, few)
	}
}
