package testenv

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// cleanupTimeout bounds each API call made while cleaning up after a test.
const cleanupTimeout = 30 * time.Second

var nameSeq atomic.Uint64

// UniqueName returns a DNS-label name starting with prefix that no other test of any
// concurrently running test process uses (it contains the PID and a counter).
// Cluster-scoped objects such as Nodes need it because tests share one control plane.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", strings.TrimSuffix(prefix, "-"), os.Getpid(), nameSeq.Add(1))
}

// Namespace creates a namespace with a unique name for one test and deletes it when
// the test ends. With no controller-manager the namespace then stays Terminating,
// which is harmless for a throw-away control plane.
func Namespace(t testing.TB, cs kubernetes.Interface) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "kr-test-"}}
	ns, err := cs.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create test namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		err := cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

// NodeSpec describes a Node object as a kubelet and the IPAM controller would leave it.
type NodeSpec struct {
	// Name of the Node; use UniqueName, Nodes are shared by all tests of the process.
	Name string
	// PodCIDRs is spec.podCIDRs; the first also becomes spec.podCIDR.
	PodCIDRs []string
	// InternalIPs become status.addresses of type InternalIP.
	InternalIPs []string
	// Labels of the Node.
	Labels map[string]string
}

// NodeObject returns the Node described by spec, with status filled in as a ready
// kubelet would.
func NodeObject(spec NodeSpec) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Labels: spec.Labels},
		Spec:       corev1.NodeSpec{PodCIDRs: spec.PodCIDRs},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
	if len(spec.PodCIDRs) > 0 {
		n.Spec.PodCIDR = spec.PodCIDRs[0]
	}
	for _, ip := range spec.InternalIPs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return n
}

// CreateNode creates the Node described by spec, writes its status, and deletes it
// when the test ends.
func CreateNode(t testing.TB, cs kubernetes.Interface, spec NodeSpec) *corev1.Node {
	t.Helper()
	ctx := context.Background()
	want := NodeObject(spec)
	created, err := cs.CoreV1().Nodes().Create(ctx, want, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", spec.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		err := cs.CoreV1().Nodes().Delete(ctx, spec.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete node %s: %v", spec.Name, err)
		}
	})
	// Create ignores status; the status subresource takes it.
	created.Status = want.Status
	node, err := cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("update status of node %s: %v", spec.Name, err)
	}
	return node
}

// PodSpec describes a running Pod as the scheduler and the kubelet would leave it.
type PodSpec struct {
	Namespace string
	Name      string
	// NodeName is spec.nodeName.
	NodeName string
	// IPs become status.podIPs (the first also status.podIP).
	IPs []string
	// HostIP is status.hostIP (optional).
	HostIP string
	Labels map[string]string
	// Ports are the container's ports (named ports matter to Services and policies).
	Ports []corev1.ContainerPort
	// HostNetwork marks a pod that uses the node's network namespace.
	HostNetwork bool
}

// PodObject returns the Pod described by spec, with a Running, Ready status.
func PodObject(spec PodSpec) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: spec.Namespace, Name: spec.Name, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName:    spec.NodeName,
			HostNetwork: spec.HostNetwork,
			Containers:  []corev1.Container{{Name: "main", Image: "kube-routerd.test/none", Ports: spec.Ports}},
		},
		Status: corev1.PodStatus{
			Phase:  corev1.PodRunning,
			HostIP: spec.HostIP,
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodReady, Status: corev1.ConditionTrue},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue},
			},
		},
	}
	if spec.HostIP != "" {
		p.Status.HostIPs = []corev1.HostIP{{IP: spec.HostIP}}
	}
	if len(spec.IPs) > 0 {
		p.Status.PodIP = spec.IPs[0]
	}
	for _, ip := range spec.IPs {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

// CreatePod creates the Pod described by spec, writes its Running status with its IPs
// (no kubelet does), and deletes it with grace period 0 when the test ends.
func CreatePod(t testing.TB, cs kubernetes.Interface, spec PodSpec) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	want := PodObject(spec)
	created, err := cs.CoreV1().Pods(spec.Namespace).Create(ctx, want, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := DeletePod(ctx, cs, spec.Namespace, spec.Name); err != nil {
			t.Errorf("%v", err)
		}
	})
	created.Status = want.Status
	pod, err := cs.CoreV1().Pods(spec.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("update status of pod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	return pod
}

// DeletePod deletes a pod at once. Without a kubelet a scheduled pod deleted with
// the default grace period would stay Terminating for ever. A missing pod is no error.
func DeletePod(ctx context.Context, cs kubernetes.Interface, namespace, name string) error {
	grace := int64(0)
	err := cs.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}
