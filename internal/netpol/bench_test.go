package netpol

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	policylisters "sigs.k8s.io/network-policy-api/pkg/client/listers/apis/v1beta1"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/testenv/benchfig"
)

// Scale of the benchmark cluster: 1,000 policies over 10,000 pods, 2,000 of them on
// this node, in 100 namespaces. Single changes are also measured in a cluster of 20
// such namespaces, to show their cost does not grow with the objects left alone.
const (
	benchNamespaces      = 100
	benchSmallNamespaces = 20
	benchPodsPerNS       = 100
	benchLocalPerNS      = 20
	benchPoliciesPerNS   = 10
	benchNode            = "bench-node"
	benchAppsPerNS       = 10
	benchTeamsOfNS       = 5
	benchNamedPortNumber = 8080
	benchPodCIDR         = "10.64.0.0/10"
)

// benchController is a controller whose informer caches are filled directly, so a
// benchmark measures compile and apply, not the API server.
type benchController struct {
	c          *Controller
	factory    informers.SharedInformerFactory
	namespaces int
	// clusterStore holds the ClusterNetworkPolicies, when added.
	clusterStore cache.Indexer
}

// benchClusterPolicies is how many ClusterNetworkPolicies the cluster benchmarks add.
const benchClusterPolicies = 100

// benchClusterPolicy alternates the tiers: each selects one app in the namespaces of
// one team (2% of the pods), denies SSH from the next team, passes a port range from
// the next app, accepts DNS to every pod and denies SMTP to every address.
func benchClusterPolicy(k int) *policyv1beta1.ClusterNetworkPolicy {
	tier := admin
	if k%2 == 1 {
		tier = base
	}
	app := func(i int) map[string]string {
		return map[string]string{"app": fmt.Sprintf("app-%d", i%benchAppsPerNS)}
	}
	team := func(i int) map[string]string { return map[string]string{"team": strconv.Itoa(i % benchTeamsOfNS)} }
	return cnp(fmt.Sprintf("cnp-%d", k), tier, int32(k), nil, subjectPodsOf(app(k), team(k)),
		cIn(deny, cPort("tcp", 22), cNS(team(k+1))),
		cIn(pass, cPort("tcp", 9000, 9100), cPods(app(k+1), nil)),
		cOut(accept, cPort("udp", 53), cNS(nil)),
		cOut(deny, cPort("tcp", 25), cNets("0.0.0.0/0")))
}

// addClusterPolicies gives the controller n ClusterNetworkPolicies, read from a
// store filled here as the informer's would be.
func (bc *benchController) addClusterPolicies(b testing.TB, n int) {
	b.Helper()
	bc.clusterStore = cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for k := range n {
		must(b, bc.clusterStore.Add(benchClusterPolicy(k)))
	}
	bc.c.cluster = &clusterSource{lister: policylisters.NewClusterNetworkPolicyLister(bc.clusterStore)}
}

// changeClusterPolicy moves one ClusterNetworkPolicy's denied port and marks it dirty.
func (bc *benchController) changeClusterPolicy(b testing.TB, n int) {
	p := benchClusterPolicy(n % benchClusterPolicies)
	p.Spec.Ingress[0].Protocols = cPort("tcp", int32(22+(n/benchClusterPolicies)%2+1))
	must(b, bc.clusterStore.Update(p))
	bc.c.changes.Mark(changed{cluster: true, key: p.Name})
}

func benchPod(ns, i int) *corev1.Pod {
	nodeName := "other-node"
	if i < benchLocalPerNS {
		nodeName = benchNode
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", ns), Name: fmt.Sprintf("pod-%d", i),
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%benchAppsPerNS)}},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: benchNamedPortNumber, Protocol: corev1.ProtocolTCP}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.%d.%d.%d", 100+ns/50, (ns%50)*4+i/64, i%64+1)}}},
	}
}

// benchPolicy mixes the features: every policy selects one app and allows another
// app on a named and a numeric port; every 5th also allows a team of namespaces,
// every 10th an ipBlock with except and egress to its namespace.
func benchPolicy(ns, j int) *networkingv1.NetworkPolicy {
	p := policy(fmt.Sprintf("ns-%d", ns), fmt.Sprintf("pol-%d", j), map[string]string{"app": fmt.Sprintf("app-%d", j%benchAppsPerNS)},
		ingress(append(port(tcp, intstr.FromString("http")), port(tcp, intstr.FromInt32(9000), 9100)...),
			pods(map[string]string{"app": fmt.Sprintf("app-%d", (j+1)%benchAppsPerNS)})))
	if j%5 == 0 {
		ingress(port(udp, intstr.FromInt32(53)), nss(map[string]string{"team": strconv.Itoa(ns % benchTeamsOfNS)}))(&p.Spec)
	}
	if j%10 == 0 {
		ingress(nil, block("172.16.0.0/12", "172.16.1.0/24"))(&p.Spec)
		types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress)(&p.Spec)
		egress(nil, pods(nil))(&p.Spec)
	}
	return p
}

func newBenchController(b testing.TB, namespaces int, dp Dataplane) *benchController {
	b.Helper()
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	cfg := config.Default().NetworkPolicy
	// No log: every full sync into a fresh namespace would log its jumps.
	c, err := New(daemon.Env{Informers: factory, NodeName: benchNode, Registry: prometheus.NewRegistry(),
		Log: slog.New(slog.DiscardHandler)}, cfg, dp)
	if err != nil {
		b.Fatal(err)
	}
	// The node's pod CIDR holds its pods' addresses (and, in this synthetic layout,
	// the others' too): new pods are isolated until enforced, as by default.
	must(b, factory.Core().V1().Nodes().Informer().GetIndexer().Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: benchNode},
		Spec: corev1.NodeSpec{PodCIDRs: []string{benchPodCIDR}}}))
	nsStore := factory.Core().V1().Namespaces().Informer().GetIndexer()
	podStore := factory.Core().V1().Pods().Informer().GetIndexer()
	polStore := factory.Networking().V1().NetworkPolicies().Informer().GetIndexer()
	for ns := range namespaces {
		must(b, nsStore.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns-%d", ns),
			Labels: map[string]string{"team": strconv.Itoa(ns % benchTeamsOfNS)}}}))
		for i := range benchPodsPerNS {
			must(b, podStore.Add(benchPod(ns, i)))
		}
		for j := range benchPoliciesPerNS {
			must(b, polStore.Add(benchPolicy(ns, j)))
		}
	}
	return &benchController{c: c, factory: factory, namespaces: namespaces}
}

func must(b testing.TB, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// relabelRemotePod moves one pod of another node between two apps (app-3 and
// app-7): only peer set members move, no chain.
func (bc *benchController) relabelRemotePod(b testing.TB, n int) {
	bc.relabel(b, n, benchLocalPerNS+3)
}

// relabelPod moves one local pod between two apps (app-3 and app-7) and marks it dirty.
func (bc *benchController) relabelPod(b testing.TB, n int) { bc.relabel(b, n, 3) }

func (bc *benchController) relabel(b testing.TB, n, i int) {
	pod := benchPod(n%bc.namespaces, i)
	if (n/bc.namespaces)%2 == 0 {
		pod.Labels["app"] = "app-7"
	}
	must(b, bc.factory.Core().V1().Pods().Informer().GetIndexer().Update(pod))
	bc.c.changes.Mark(changed{key: pod.Namespace + "/" + pod.Name})
}

// addLocalPod adds a local pod whose IP kubelet just wrote, labelled like others the
// namespace's policies select: its chains, its dispatch rules, its peer set entries
// and its ledger entry, the sync that ends a new pod's isolation.
func (bc *benchController) addLocalPod(b testing.TB, n int) {
	pod := benchPod(n%bc.namespaces, 3)
	pod.Name = fmt.Sprintf("new-%d", n)
	pod.Status.PodIPs = []corev1.PodIP{{IP: fmt.Sprintf("10.127.%d.%d", n/250, n%250+1)}}
	must(b, bc.factory.Core().V1().Pods().Informer().GetIndexer().Add(pod))
	bc.c.changes.Mark(changed{key: pod.Namespace + "/" + pod.Name})
}

// changePolicy moves one policy's port range and marks it dirty.
func (bc *benchController) changePolicy(b testing.TB, n int) {
	p := benchPolicy(n%bc.namespaces, 1)
	p.Spec.Ingress[0].Ports[1].Port = ptrIntStr(intstr.FromInt32(int32(9000 + (n/bc.namespaces)%2 + 1)))
	must(b, bc.factory.Networking().V1().NetworkPolicies().Informer().GetIndexer().Update(p))
	bc.c.changes.Mark(changed{policy: true, key: p.Namespace + "/" + p.Name})
}

func ptrIntStr(v intstr.IntOrString) *intstr.IntOrString { return &v }

// runScaleBenchmarks runs full sync and single-change latency and reports rules, set
// entries and peak RSS. Every full sync starts from an empty dataplane (a fresh
// namespace on the kernel), so each op is the same work and the spread over ops is
// noise: it reports the mean (ns/op), min-ms and max-ms, the 1-minute load average
// beside them (load1, mean of a sample before each op) and the time of a full resync
// that finds nothing to change (idle-resync-ms). With kernel set, each op is followed
// by the kernel floor of the same ruleset in another fresh namespace (floor-ms, see
// netfilter.MeasureFloor) and x-floor is the mean full sync over the mean floor; with
// $KUBEROUTERD_BENCH_OUT set, a CPU profile of one more full sync is written there
// (profileFullSync). cpu-ms/op is a full sync's CPU time, restore-cpu-ms/op the part
// of it iptables-restore used. Single changes run at two scales (2,000 and 10,000
// pods) and report their time split between compiling and writing the kernel.
func runScaleBenchmarks(b *testing.B, kernel bool, newDataplane func(b *testing.B) Dataplane) {
	ctx := context.Background()
	b.Run("FullSync", func(b *testing.B) {
		var bc *benchController
		var syncs, floors []time.Duration
		var load float64
		var cpu, restoreCPU time.Duration
		for b.Loop() {
			b.StopTimer()
			bc = newBenchController(b, benchNamespaces, newDataplane(b))
			recorders := recordRulesets(bc.c)
			runtime.GC()
			load += benchfig.LoadAverage1()
			cpuStart, childStart := benchfig.CPUTime()
			b.StartTimer()
			start := time.Now()
			if _, err := bc.c.sync(ctx, true); err != nil {
				b.Fatal(err)
			}
			syncs = append(syncs, time.Since(start))
			b.StopTimer()
			cpuEnd, childEnd := benchfig.CPUTime()
			cpu, restoreCPU = cpu+cpuEnd-cpuStart, restoreCPU+childEnd-childStart
			if kernel {
				floors = append(floors, kernelFloor(b, newDataplane(b), recorders))
			}
			b.StartTimer()
		}
		b.StopTimer()
		start := time.Now()
		if _, err := bc.c.sync(ctx, true); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(benchfig.MS(time.Since(start)), "idle-resync-ms")
		// Where a full sync's time goes: CPU time, of which iptables-restore's, and (on
		// the kernel) a CPU profile of one more full sync.
		b.ReportMetric(benchfig.MS(cpu)/float64(len(syncs)), "cpu-ms/op")
		b.ReportMetric(benchfig.MS(restoreCPU)/float64(len(syncs)), "restore-cpu-ms/op")
		benchfig.ReportSpread(b, syncs, floors, load/float64(len(syncs)))
		reportSize(b, bc.c)
		if kernel {
			profileFullSync(b, newDataplane)
		}
	})
	type change struct {
		name string
		do   func(*benchController, testing.TB, int)
	}
	for _, change := range []change{
		{"PodLabelChange", (*benchController).relabelPod},
		{"NewLocalPod", (*benchController).addLocalPod},
		{"RemotePodLabelChange", (*benchController).relabelRemotePod},
		{"PolicyChange", (*benchController).changePolicy},
	} {
		for _, namespaces := range []int{benchSmallNamespaces, benchNamespaces} {
			b.Run(fmt.Sprintf("%s/pods=%d", change.name, namespaces*benchPodsPerNS), func(b *testing.B) {
				runSingleChanges(b, newBenchController(b, namespaces, newDataplane(b)), change.do)
			})
		}
	}
	// The same single changes, and a ClusterNetworkPolicy's, with 100
	// ClusterNetworkPolicies beside the 1,000 policies over 10,000 pods.
	for _, change := range []change{
		{"PodLabelChange", (*benchController).relabelPod},
		{"RemotePodLabelChange", (*benchController).relabelRemotePod},
		{"PolicyChange", (*benchController).changePolicy},
		{"ClusterPolicyChange", (*benchController).changeClusterPolicy},
	} {
		b.Run(fmt.Sprintf("ClusterPolicies=%d/%s/pods=%d", benchClusterPolicies, change.name, benchNamespaces*benchPodsPerNS), func(b *testing.B) {
			bc := newBenchController(b, benchNamespaces, newDataplane(b))
			bc.addClusterPolicies(b, benchClusterPolicies)
			runSingleChanges(b, bc, change.do)
			reportSize(b, bc.c)
		})
	}
}

// runSingleChanges times one change (do) and the incremental sync after it, per op,
// after a full sync of bc.
func runSingleChanges(b *testing.B, bc *benchController, do func(*benchController, testing.TB, int)) {
	ctx := context.Background()
	if _, err := bc.c.sync(ctx, true); err != nil {
		b.Fatal(err)
	}
	// Collect the setup's garbage now, not during the measured changes.
	runtime.GC()
	n := 0
	var worst, compile, apply time.Duration
	cpuStart, childStart := benchfig.CPUTime()
	b.ResetTimer()
	for b.Loop() {
		do(bc, b, n)
		n++
		start := time.Now()
		if _, err := bc.c.sync(ctx, false); err != nil {
			b.Fatal(err)
		}
		worst = max(worst, time.Since(start))
		compile += bc.c.lastCompile
		apply += bc.c.lastApply
	}
	b.ReportMetric(float64(worst.Microseconds())/1000, "worst-ms")
	b.ReportMetric(float64(compile.Microseconds())/1000/float64(n), "compile-ms/op")
	b.ReportMetric(float64(apply.Microseconds())/1000/float64(n), "apply-ms/op")
	// CPU time is what the change costs us; wall time also counts waiting for a
	// shared CPU.
	cpuEnd, childEnd := benchfig.CPUTime()
	b.ReportMetric(float64((cpuEnd-cpuStart).Microseconds())/1000/float64(n), "cpu-ms/op")
	// Of which iptables-restore (0 with the in-memory dataplane).
	b.ReportMetric(float64((childEnd-childStart).Microseconds())/1000/float64(n), "restore-cpu-ms/op")
	st := bc.c.Details().(Details).LastApply[4]
	b.ReportMetric(float64(st.ChainsWritten), "chains-written/op")
	b.ReportMetric(float64(st.EntriesChanged), "entries-changed/op")
}

// benchOutEnv names the directory where benchmarks leave files (hack/bench.sh's
// BENCH_OUT); unset, they write none.
const benchOutEnv = "KUBEROUTERD_BENCH_OUT"

// profileFullSync writes a CPU profile of one more full sync from an empty dataplane
// to netpol-fullsync.cpu.pprof in $KUBEROUTERD_BENCH_OUT. The profile is of this
// process only: iptables-restore's share is restore-cpu-ms/op.
func profileFullSync(b *testing.B, newDataplane func(*testing.B) Dataplane) {
	b.Helper()
	dir := os.Getenv(benchOutEnv)
	if dir == "" {
		return
	}
	bc := newBenchController(b, benchNamespaces, newDataplane(b))
	runtime.GC()
	path := filepath.Join(dir, "netpol-fullsync.cpu.pprof")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		// go test -cpuprofile profiles the whole run already.
		b.Logf("no CPU profile of a full sync: %v", err)
		return
	}
	start := time.Now()
	_, err = bc.c.sync(context.Background(), true)
	took := time.Since(start)
	pprof.StopCPUProfile()
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	b.Logf("CPU profile of a full sync (%.0f ms) written to %s", benchfig.MS(took), path)
}

// recordingNetfilter keeps the last Ruleset a controller handed to its writer: what
// the kernel floor loads.
type recordingNetfilter struct {
	netfilter.Interface
	last *netfilter.Ruleset
}

func (r *recordingNetfilter) Apply(want *netfilter.Ruleset, full bool) (netfilter.Stats, error) {
	r.last = want
	return r.Interface.Apply(want, full)
}

// recordRulesets puts a recorder in front of each family's writer of c.
func recordRulesets(c *Controller) []*recordingNetfilter {
	var out []*recordingNetfilter
	for _, fs := range c.families {
		r := &recordingNetfilter{Interface: fs.netfilter}
		fs.netfilter = r
		out = append(out, r)
	}
	return out
}

// kernelFloor loads the recorded rulesets into dp, a fresh namespace's dataplane of
// the same families, the cheapest way (netfilter.MeasureFloor), and returns the time.
func kernelFloor(b *testing.B, dp Dataplane, recorded []*recordingNetfilter) time.Duration {
	b.Helper()
	var loads []netfilter.FloorLoad
	for i, ipt := range dp.IPTables {
		loads = append(loads, netfilter.FloorLoad{IPTables: ipt, Ruleset: recorded[i].last})
	}
	took, err := netfilter.MeasureFloor(dp.IPSets, loads...)
	if err != nil {
		b.Fatal(err)
	}
	return took
}

func reportSize(b *testing.B, c *Controller) {
	d := c.Details().(Details)
	b.ReportMetric(float64(d.Rules), "rules")
	b.ReportMetric(float64(d.Entries), "set-entries")
	b.ReportMetric(float64(d.Sets), "sets")
	b.ReportMetric(float64(d.Pods), "isolated-pods")
	b.ReportMetric(benchfig.PeakRSSMiB(), "peak-RSS-MiB")
}

// BenchmarkScaleFake runs the scale benchmark against in-memory dataplanes: the cost
// of compiling and diffing alone.
func BenchmarkScaleFake(b *testing.B) {
	runScaleBenchmarks(b, false, func(*testing.B) Dataplane {
		return Dataplane{IPTables: []iptables.Interface{iptables.NewFake(ipfamily.IPv4)}, IPSets: ipset.NewFake()}
	})
}
