//go:build integration || vm

// Reachability helpers shared by the host (integration) and VM (vm) tiers: one node
// namespace with pods in two Kubernetes namespaces, a real API server, and the
// controller running in the node namespace.

package netpol

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	policyclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// target is one server port probed in the matrix, over IPv4 or IPv6.
type target struct {
	proto tnetns.Proto
	port  int
	v6    bool
}

var matrixTargets = []target{
	{tnetns.TCP, 80, false}, {tnetns.TCP, 81, false}, {tnetns.UDP, 80, false},
	{tnetns.TCP, 80, true}, {tnetns.TCP, 81, true}, {tnetns.UDP, 80, true},
}

func (tg target) String() string {
	fam := "v4"
	if tg.v6 {
		fam = "v6"
	}
	return fmt.Sprintf("%s %s/%d", fam, tg.proto, tg.port)
}

// servedTargets are the distinct servers a pod runs (each serves both families).
func servedTargets() []target {
	var out []target
	for _, tg := range matrixTargets {
		if !tg.v6 {
			out = append(out, tg)
		}
	}
	return out
}

// cluster is the e2e world: one node namespace with pods in two Kubernetes namespaces,
// a real API server, and the controller running in the node namespace.
type cluster struct {
	cs   kubernetes.Interface
	pc   policyclient.Interface
	node *tnetns.Node
	nsA  string                 // labelled team=a
	nsB  string                 // labelled team=b
	pods map[string]*tnetns.Pod // "A/a", "A/b", "B/c"
	hb   *daemon.Heartbeat
	ctrl *Controller
}

func startCluster(t *testing.T) *cluster { return startClusterWith(t, nil) }

// startClusterWith starts the cluster with the controller's config adjusted by tune.
func startClusterWith(t *testing.T, tune func(*config.NetworkPolicy)) *cluster {
	return startClusterOn(t, tune, false)
}

// startClusterOn starts the cluster; serviceLedger is Dataplane.ServiceLedger.
func startClusterOn(t *testing.T, tune func(*config.NetworkPolicy), serviceLedger bool) *cluster {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	pc, err := policyclient.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{cs: cs, pc: pc, pods: map[string]*tnetns.Pod{}}
	c.nsA, c.nsB = testenv.Namespace(t, cs), testenv.Namespace(t, cs)
	c.labelNamespace(t, c.nsA, map[string]string{"team": "a"})
	c.labelNamespace(t, c.nsB, map[string]string{"team": "b"})
	c.node = tnetns.NewNode(t, tnetns.NodeOptions{Client: cs})
	c.addPod(t, "A/a", map[string]string{"app": "a"}, corev1.ContainerPort{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP})
	c.addPod(t, "A/b", map[string]string{"app": "b"})
	c.addPod(t, "B/c", map[string]string{"app": "c"})

	c.ctrl, c.hb = startController(t, daemon.Env{Client: cs, PolicyClient: pc, NodeName: c.node.Name}, c.node, tune, serviceLedger)
	return c
}

// startController runs the controller in node's namespace, built from env (its
// informers made here), until the test ends, and then checks that Cleanup leaves
// nothing of ours behind. serviceLedger is Dataplane.ServiceLedger.
func startController(t *testing.T, env daemon.Env, node *tnetns.Node, tune func(*config.NetworkPolicy), serviceLedger bool) (*Controller, *daemon.Heartbeat) {
	t.Helper()
	dp, err := KernelDataplane(node.Handle)
	if err != nil {
		t.Fatal(err)
	}
	dp.ServiceLedger = serviceLedger
	factory := informers.NewSharedInformerFactory(env.Client, 0)
	env.Informers = factory
	env.Registry = prometheus.NewRegistry()
	cfg := config.Default().NetworkPolicy
	cfg.MinSyncInterval = config.Duration{Duration: 50 * time.Millisecond}
	cfg.BetaNamespaceIsolation = true
	if tune != nil {
		tune(&cfg)
	}
	ctrl, err := New(env, cfg, dp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	hb := daemon.NewHeartbeat("netpol", nil)
	done := make(chan struct{})
	go func() { defer close(done); _ = ctrl.Run(ctx, hb) }()
	t.Cleanup(func() {
		cancel()
		<-done
		factory.Shutdown()
		if err := cleanup(context.Background(), dp, slog.Default()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, ipt := range dp.IPTables {
			chains, err := ipt.SaveChains(iptables.TableFilter)
			if err != nil {
				t.Error(err)
			}
			for name := range chains {
				if Owner.OwnsChain(name) {
					t.Errorf("chain %s left after Cleanup", name)
				}
			}
			sets, _ := dp.IPSets.ListAll(nil)
			for _, s := range sets {
				if Owner.OwnsSet(s.Name) {
					t.Errorf("set %s left after Cleanup", s.Name)
				}
			}
		}
	})
	return ctrl, hb
}

// addPod starts a pod on the node that serves every matrix target. key is "A/<name>"
// or "B/<name>": the pod's name in namespace nsA or nsB.
func (c *cluster) addPod(t *testing.T, key string, labels map[string]string, ports ...corev1.ContainerPort) *tnetns.Pod {
	t.Helper()
	ns := c.nsA
	if key[:1] == "B" {
		ns = c.nsB
	}
	p := c.node.AddPod(t, tnetns.PodOptions{Namespace: ns, Name: key[2:], Labels: labels, Ports: ports})
	for _, tg := range servedTargets() {
		p.Serve(t, tg.proto, tg.port)
	}
	c.pods[key] = p
	return p
}

func (c *cluster) labelNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	ns, err := c.cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = labels
	if _, err := c.cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) setPolicies(t *testing.T, policies ...*networkingv1.NetworkPolicy) {
	t.Helper()
	ctx := context.Background()
	for _, ns := range []string{c.nsA, c.nsB} {
		if err := c.cs.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range policies {
		if _, err := c.cs.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}
