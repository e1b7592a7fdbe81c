package netpol

import (
	"context"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
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
	factory := k8s.NewInformerFactory(fake.NewClientset(), 0, nil)
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
