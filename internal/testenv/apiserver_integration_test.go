//go:build integration

package testenv

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

func TestMain(m *testing.M) { Main(m) }

// waitTimeout bounds waits for events that arrive within milliseconds on a healthy
// control plane; it only turns a hang into a failure.
const waitTimeout = 30 * time.Second

func TestAPIObjectsReachAnInformer(t *testing.T) {
	_, cs := APIServer(t)
	t.Logf("control plane started in %v", APIServerStartDuration())
	ns := Namespace(t, cs)

	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
	running := make(chan *corev1.Pod, 16)
	deleted := make(chan string, 16)
	_, err := factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if p := obj.(*corev1.Pod); p.Status.PodIP != "" {
				running <- p
			}
		},
		UpdateFunc: func(_, obj any) {
			if p := obj.(*corev1.Pod); p.Status.PodIP != "" {
				running <- p
			}
		},
		DeleteFunc: func(obj any) {
			if p, ok := obj.(*corev1.Pod); ok {
				deleted <- p.Name
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer cache for %v did not sync", typ)
		}
	}

	node := CreateNode(t, cs, NodeSpec{
		Name:        UniqueName("node"),
		PodCIDRs:    []string{"10.244.1.0/24", "fd00:10:244:1::/64"},
		InternalIPs: []string{"192.168.200.11"},
	})
	if node.Spec.PodCIDR != "10.244.1.0/24" || len(node.Status.Addresses) != 1 {
		t.Errorf("node as stored: podCIDR=%q addresses=%v", node.Spec.PodCIDR, node.Status.Addresses)
	}

	created := time.Now()
	CreatePod(t, cs, PodSpec{Namespace: ns, Name: "web", NodeName: node.Name, IPs: []string{"10.244.1.2", "fd00:10:244:1::2"}})
	select {
	case p := <-running:
		t.Logf("pod with status.podIP reached the informer %v after create", time.Since(created))
		if p.Name != "web" || p.Status.PodIP != "10.244.1.2" || len(p.Status.PodIPs) != 2 || p.Spec.NodeName != node.Name {
			t.Errorf("informer saw pod %s podIP=%s podIPs=%v node=%s", p.Name, p.Status.PodIP, p.Status.PodIPs, p.Spec.NodeName)
		}
	case <-time.After(waitTimeout):
		t.Fatal("pod with status.podIP never reached the informer")
	}

	// A scheduled pod without a kubelet only goes away with grace period 0.
	if err := DeletePod(ctx, cs, ns, "web"); err != nil {
		t.Fatal(err)
	}
	select {
	case name := <-deleted:
		if name != "web" {
			t.Errorf("informer saw deletion of %s, want web", name)
		}
	case <-time.After(waitTimeout):
		t.Fatal("pod deletion never reached the informer")
	}
	if _, err := cs.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{}); err == nil {
		t.Error("pod still exists after DeletePod")
	}
}
