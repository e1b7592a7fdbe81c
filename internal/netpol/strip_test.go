package netpol

import (
	"context"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

// TestStrippedObjectsProgramTheSameKernel loads realistic Pods, Namespaces and
// policies into one controller whole and into another as the daemon's informers
// cache them (k8s.Strip): both must write the same chains and sets, in v1
// and in beta namespace-isolation mode.
func TestStrippedObjectsProgramTheSameKernel(t *testing.T) {
	size := workload.Size{Nodes: 5, Pods: 400, Namespaces: 8, Services: 30, Policies: 40}
	var objects []any
	for i := range size.Namespaces {
		ns := size.Namespace(i)
		if i%3 == 0 {
			ns.Annotations[betaIsolationAnnotation] = `{"ingress":{"isolation":"DefaultDeny"}}`
		}
		objects = append(objects, ns)
	}
	for i := range size.Pods {
		pod := size.Pod(i)
		switch (i / size.Nodes) % 10 { // every node gets each variant
		case 1: // the named port the policies use is served by a sidecar
			always := corev1.ContainerRestartPolicyAlways
			pod.Spec.InitContainers[0].RestartPolicy = &always
			pod.Spec.InitContainers[0].Ports = pod.Spec.Containers[0].Ports
			pod.Spec.InitContainers[0].Ports[0].ContainerPort = 15001
			pod.Spec.Containers[0].Ports = nil
		case 2:
			pod.Spec.HostNetwork = true
		case 3:
			pod.Status.Phase = corev1.PodSucceeded
		case 4: // only the older single-address field
			pod.Status.PodIPs = nil
		}
		objects = append(objects, pod)
	}
	for i := range size.Policies {
		objects = append(objects, size.NetworkPolicy(i))
	}

	for _, beta := range []bool{false, true} {
		run := func(transform func(any) any) string {
			factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
			ipt, sets := iptables.NewFake(ipfamily.IPv4), ipset.NewFake()
			cfg := config.Default().NetworkPolicy
			cfg.BetaNamespaceIsolation = beta
			c, err := New(daemon.Env{Informers: factory, NodeName: workload.NodeName(0), Registry: prometheus.NewRegistry(),
				Log: slog.New(slog.DiscardHandler)}, cfg, Dataplane{IPTables: []iptables.Interface{ipt}, IPSets: sets})
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objects {
				var store interface{ Add(any) error }
				switch o.(type) {
				case *corev1.Namespace:
					store = factory.Core().V1().Namespaces().Informer().GetIndexer()
				case *corev1.Pod:
					store = factory.Core().V1().Pods().Informer().GetIndexer()
				default:
					store = factory.Networking().V1().NetworkPolicies().Informer().GetIndexer()
				}
				must(t, store.Add(transform(o)))
			}
			if _, err := c.sync(context.Background(), true); err != nil {
				t.Fatal(err)
			}
			return ipt.Dump() + sets.Dump()
		}
		whole := run(func(o any) any { return o })
		stripped := run(k8s.Strip)
		if whole != stripped {
			t.Fatalf("beta=%v: stripped objects programmed another kernel:\n--- whole\n%s\n--- stripped\n%s", beta, whole, stripped)
		}
		if len(whole) < 10000 {
			t.Fatalf("beta=%v: the workload programmed almost nothing:\n%s", beta, whole)
		}
	}
}
