package netpol

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/loop"
	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

// Pods of other nodes appearing, relabelled and leaving move only set members: their
// sync writes the members without iptables-restore and leaves the kernel exactly as
// the full path would (a full sync right after finds nothing to write). A change of a
// local pod takes the full path.
func TestRemotePodChangesWriteSetMembersWithoutRestore(t *testing.T) {
	ctx := t.Context()
	ipt, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
	bc := newBenchController(t, 3, Dataplane{IPTables: []iptables.Interface{ipt}, IPSets: sets})
	bc.addClusterPolicies(t, 6)
	if _, err := bc.c.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	pods := bc.factory.Core().V1().Pods().Informer().GetIndexer()
	remote := func(n int) (string, string) {
		return fmt.Sprintf("ns-%d", n%bc.namespaces), fmt.Sprintf("remote-%d", n)
	}
	// toggle moves pod i of namespace ns between app-3 and app-7.
	toggle := func(ns, i int) {
		key := fmt.Sprintf("ns-%d/pod-%d", ns, i)
		obj, _, _ := pods.GetByKey(key)
		pod := obj.(*corev1.Pod).DeepCopy()
		pod.Labels["app"] = map[string]string{"app-3": "app-7", "app-7": "app-3"}[pod.Labels["app"]]
		must(t, pods.Update(pod))
		bc.c.changes.Mark(changed{key: key})
	}
	steps := []struct {
		name     string
		do       func(n int)
		setsOnly bool
	}{
		{"a remote pod relabelled", func(n int) { toggle(n%bc.namespaces, benchLocalPerNS+3) }, true},
		{"a remote pod added", func(n int) {
			ns, name := remote(n)
			pod := benchPod(n%bc.namespaces, benchLocalPerNS+4) // app-4 on the other node
			pod.Name = name
			pod.Status.PodIPs[0].IP = fmt.Sprintf("10.99.%d.%d", n/200, n%200+1)
			must(t, pods.Add(pod))
			bc.c.changes.Mark(changed{key: ns + "/" + name})
		}, true},
		{"a remote pod deleted", func(n int) {
			ns, name := remote(n - 1)
			obj, _, _ := pods.GetByKey(ns + "/" + name)
			must(t, pods.Delete(obj))
			bc.c.changes.Mark(changed{key: ns + "/" + name})
		}, true},
		{"a local pod relabelled", func(n int) { toggle(n%bc.namespaces, 3) }, false},
	}
	for n := range 4 * len(steps) {
		step := steps[n%len(steps)]
		restores, assembled := len(ipt.Restores), bc.c.families[0].asm.last
		step.do(n)
		if _, err := bc.c.sync(ctx, false); err != nil {
			t.Fatal(err)
		}
		st := bc.c.Details().(Details).LastApply[ipfamily.IPv4]
		if setsOnly := bc.c.families[0].asm.last == assembled; setsOnly != step.setsOnly {
			t.Errorf("change %d (%s): set members only %v, want %v", n, step.name, setsOnly, step.setsOnly)
		}
		if step.setsOnly && len(ipt.Restores) != restores {
			t.Errorf("change %d (%s): iptables-restore ran", n, step.name)
		}
		if step.setsOnly && st.EntriesChanged == 0 {
			t.Errorf("change %d (%s): no set member changed; the benchmark's changes must move some", n, step.name)
		}
		var gauge dto.Metric
		if err := bc.c.metrics.entries.WithLabelValues("4").Write(&gauge); err != nil {
			t.Fatal(err)
		}
		entries, entriesGauge := bc.c.Details().(Details).Entries, gauge.GetGauge().GetValue()
		restores = len(ipt.Restores)
		bc.c.changes.MarkAll() // recompile everything from the caches
		if _, err := bc.c.sync(ctx, true); err != nil {
			t.Fatal(err)
		}
		if st := bc.c.Details().(Details).LastApply[ipfamily.IPv4]; len(ipt.Restores) != restores || st.EntriesChanged != 0 || st.Drifted != 0 {
			t.Fatalf("change %d (%s): a full sync after it still wrote: %+v, %d restores", n, step.name, st, len(ipt.Restores)-restores)
		}
		// The counts in status and metrics were kept up to date, too.
		if want := bc.c.Details().(Details).Entries; entries != want || entriesGauge != float64(want) {
			t.Errorf("change %d (%s): set entries counted %d in status and %v in metrics, want %d", n, step.name, entries, entriesGauge, want)
		}
	}
}

// A policy that selects no pod of this node is not compiled again when another
// node's pod changes its peers (it has nothing in this kernel), and once a local pod
// it selects arrives, the full path compiles it from the pods as they are then.
func TestRemotePodChangesLeavePoliciesWithoutLocalPodsAlone(t *testing.T) {
	ctx := t.Context()
	ipt, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
	bc := newBenchController(t, 2, Dataplane{IPTables: []iptables.Interface{ipt}, IPSets: sets})
	bc.addClusterPolicies(t, 0)
	// Its peers are app-3's pods, by a selector of its own (a set no other policy shares).
	app3 := networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"app-3"}}}}}
	elsewhere := policy("ns-0", "elsewhere", map[string]string{"app": "elsewhere"}, ingress(nil, app3))
	must(t, bc.factory.Networking().V1().NetworkPolicies().Informer().GetIndexer().Add(elsewhere))
	if _, err := bc.c.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	fs := bc.c.families[0]
	compiled := fs.compiled["ns-0/elsewhere"]
	if compiled == nil || len(compiled.Targets) != 0 {
		t.Fatalf("the policy is compiled as %+v, want it compiled without local targets", compiled)
	}

	// A pod of another node leaves app-3: the local policies with app-3 peers get
	// their set members written, this one is not compiled.
	peer := benchPod(0, benchLocalPerNS+3)
	peer.Labels["app"] = "app-7"
	must(t, bc.factory.Core().V1().Pods().Informer().GetIndexer().Update(peer))
	bc.c.changes.Mark(changed{key: "ns-0/" + peer.Name})
	assembled := fs.asm.last
	if _, err := bc.c.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if fs.asm.last != assembled {
		t.Fatal("a remote pod's relabel took the full path")
	}
	if st := bc.c.Details().(Details).LastApply[ipfamily.IPv4]; st.EntriesChanged == 0 {
		t.Error("no set member moved: the local policies with app-3 peers should have lost the pod")
	}
	if fs.compiled["ns-0/elsewhere"] != compiled {
		t.Error("the policy without local targets was compiled again for a remote pod")
	}

	// A local pod it selects arrives: it is compiled, without the pod that left app-3,
	// and the kernel is what a full recompile makes of the caches.
	local := benchPod(0, 0)
	local.Name, local.Labels = "elsewhere-here", map[string]string{"app": "elsewhere"}
	local.Status.PodIPs = []corev1.PodIP{{IP: "10.127.0.1"}}
	must(t, bc.factory.Core().V1().Pods().Informer().GetIndexer().Add(local))
	bc.c.changes.Mark(changed{key: "ns-0/" + local.Name})
	if _, err := bc.c.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	now := fs.compiled["ns-0/elsewhere"]
	if len(now.Targets) != 1 || len(now.Sets) != 1 {
		t.Fatalf("with its local pod the policy compiled to %d targets and %d sets, want 1 and 1", len(now.Targets), len(now.Sets))
	}
	peerIP := peer.Status.PodIPs[0].IP
	held, err := sets.List(now.Sets[0].Name)
	if err != nil {
		t.Fatalf("its peer set is not in the kernel: %v", err)
	}
	if slices.Contains(held.Entries, peerIP) || len(held.Entries) == 0 {
		t.Errorf("its peer set holds %v: want app-3's pods, without %s", held.Entries, peerIP)
	}
	restores := len(ipt.Restores)
	bc.c.changes.MarkAll()
	if _, err := bc.c.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	if st := bc.c.Details().(Details).LastApply[ipfamily.IPv4]; len(ipt.Restores) != restores || st.EntriesChanged != 0 || st.Drifted != 0 {
		t.Errorf("a full recompile still wrote: %+v, %d restores", st, len(ipt.Restores)-restores)
	}
}

// TestPeriodicSyncRepairsTheKernelWithoutRecompiling: the periodic full sync reads the
// kernel back and repairs what someone else changed there, from the policies as last
// compiled; only a failed sync makes the next one recompile from the caches.
func TestPeriodicSyncRepairsTheKernelWithoutRecompiling(t *testing.T) {
	ctx := t.Context()
	ipt, sets := iptables.NewFake(ipfamily.IPv4), &failingSets{Fake: ipset.NewFake()}
	bc := newBenchController(t, 3, Dataplane{IPTables: []iptables.Interface{ipt}, IPSets: sets})
	if _, err := bc.c.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	want := sets.Dump()
	all, err := sets.ListAll(nil)
	must(t, err)
	i := slices.IndexFunc(all, func(s ipset.SetEntries) bool { return len(s.Entries) > 0 })
	if i < 0 {
		t.Fatalf("no set with members:\n%s", want)
	}
	must(t, sets.Flush(all[i].Name))
	idx := bc.c.idx
	if _, err := bc.c.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	if st := bc.c.Details().(Details).LastApply[ipfamily.IPv4]; st.Drifted == 0 {
		t.Errorf("the periodic sync found no drift after %s was flushed: %+v", all[i].Name, st)
	}
	if got := sets.Dump(); got != want {
		t.Errorf("the periodic sync did not repair %s:\n%s\nwant\n%s", all[i].Name, got, want)
	}
	if bc.c.idx != idx {
		t.Error("the periodic sync rebuilt the index")
	}
	// A failed sync leaves the next one to recompile everything.
	sets.fail = errors.New("injected")
	if _, err := bc.c.sync(ctx, true); err == nil {
		t.Fatal("the injected failure did not fail the sync")
	}
	sets.fail = nil
	if _, err := bc.c.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	if bc.c.idx == idx {
		t.Error("the sync after a failure did not rebuild the index")
	}
}

// TestParsedSelectorsLastUntilAPolicyChanges: the selectors parsed to tell which
// policies a pod's change touches are kept across pod changes, and dropped by a sync
// with a policy change, so that the parses of replaced policies do not pile up.
func TestParsedSelectorsLastUntilAPolicyChanges(t *testing.T) {
	ctx := t.Context()
	bc := newBenchController(t, 3, Dataplane{IPTables: []iptables.Interface{iptables.NewFake(ipfamily.IPv4)}, IPSets: ipset.NewFake()})
	if _, err := bc.c.sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	bc.relabelRemotePod(t, 0)
	if _, err := bc.c.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	parsed := len(bc.c.selectors.parsed)
	if parsed == 0 {
		t.Fatal("a remote pod's change parsed no selector")
	}
	bc.relabelRemotePod(t, bc.namespaces) // the same pod, back
	if _, err := bc.c.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := len(bc.c.selectors.parsed); got != parsed {
		t.Errorf("the same pod's second change holds %d parses, the first %d", got, parsed)
	}
	bc.changePolicy(t, 0)
	if _, err := bc.c.sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := len(bc.c.selectors.parsed); got != 0 {
		t.Errorf("after a policy change %d parses are kept", got)
	}
}

// failingSets fails every read of the kernel's sets while fail is set.
type failingSets struct {
	*ipset.Fake
	fail error
}

func (f *failingSets) ListAll(keep func(ipset.Set) bool) ([]ipset.SetEntries, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	return f.Fake.ListAll(keep)
}

// TestStatusOnlyPodUpdatesNeedNoSync: kubelet's status writes (conditions, container
// states) are most pod updates; the cache's compact pods compare equal across them,
// so they mark nothing for the next sync. Changes policy reads still do.
func TestStatusOnlyPodUpdatesNeedNoSync(t *testing.T) {
	whole := workload.Size{Nodes: 1, Pods: 1, Namespaces: 1, Services: 1}.Pod(0)
	old := k8s.CompactPod(whole)
	whole.Status.Conditions[0].Status = corev1.ConditionFalse
	whole.Status.ContainerStatuses[0].RestartCount++
	if keys := podKeys(loop.Change{Old: old, New: k8s.CompactPod(whole)}); len(keys) != 0 {
		t.Errorf("a status-only update marked %v", keys)
	}
	whole.Labels["tier"] = "other"
	want := []changed{{key: old.Key()}, {key: old.Key()}}
	if keys := podKeys(loop.Change{Old: old, New: k8s.CompactPod(whole)}); !slices.Equal(keys, want) {
		t.Errorf("a label change marked %v, want %v", keys, want)
	}
}
