//go:build integration

package lballoc

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// node is one allocator as a node's daemon runs it: its own client, informers and
// identity.
type node struct {
	name   string
	c      *Controller
	cancel context.CancelFunc
	done   chan struct{}
	logs   *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fastLease are election timings short enough for tests: a leader that dies
// without releasing is replaced within about two seconds.
func fastLease(cfg config.LoadBalancer, release bool) Options {
	cfg.LeaseDuration = config.Duration{Duration: 2 * time.Second}
	return Options{Config: cfg, RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond, ReleaseOnStop: release}
}

// startNode runs an allocator named name until the test ends or stop is called; its
// log is shown when the test fails.
func startNode(t testing.TB, rc *rest.Config, name string, opts Options) *node {
	t.Helper()
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{name: name, cancel: cancel, done: make(chan struct{}), logs: &lockedBuffer{}}
	env := daemon.Env{Client: cs, Informers: k8s.NewInformerFactory(cs, nil, 0, nil), NodeName: name,
		Log: slog.New(slog.NewTextHandler(n.logs, nil)).With("node", name)}
	if n.c, err = New(env, opts); err != nil {
		t.Fatal(err)
	}
	env.Informers.Start(ctx.Done())
	env.Informers.WaitForCacheSync(ctx.Done())
	go func() {
		defer close(n.done)
		if err := n.c.Run(ctx, daemon.NewHeartbeat("lballoc", nil)); err != nil {
			n.logs.Write([]byte("Run: " + err.Error() + "\n"))
		}
	}()
	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			t.Logf("log of %s:\n%s", name, testenv.LastLines(n.logs.String(), 60))
		}
	})
	return n
}

// stop ends the node's allocator as a killed process would (its Lease released only
// if its options say so) and waits until it stopped.
func (n *node) stop() {
	n.cancel()
	<-n.done
}

func (n *node) details() Details { return n.c.Details().(Details) }

// svcSpec describes a LoadBalancer Service.
type svcSpec struct {
	name     string
	class    string
	policy   corev1.IPFamilyPolicy
	families []corev1.IPFamily
	typ      corev1.ServiceType
}

var (
	v4   = []corev1.IPFamily{corev1.IPv4Protocol}
	v6   = []corev1.IPFamily{corev1.IPv6Protocol}
	v46  = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	v64  = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	dual = corev1.IPFamilyPolicyRequireDualStack
	pref = corev1.IPFamilyPolicyPreferDualStack
	one  = corev1.IPFamilyPolicySingleStack
)

func createService(t testing.TB, cs kubernetes.Interface, ns string, s svcSpec) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: s.name},
		Spec: corev1.ServiceSpec{
			Type:           corev1.ServiceTypeLoadBalancer,
			IPFamilyPolicy: ptr.To(s.policy),
			IPFamilies:     s.families,
			Ports:          []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	if s.typ != "" {
		svc.Spec.Type = s.typ
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		svc.Spec.AllocateLoadBalancerNodePorts = ptr.To(false)
		if s.class != "" {
			svc.Spec.LoadBalancerClass = ptr.To(s.class)
		}
	}
	got, err := cs.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Service %s/%s: %v", ns, s.name, err)
	}
	return got
}

func ingressOf(s *corev1.Service) []string {
	var out []string
	for _, in := range s.Status.LoadBalancer.Ingress {
		out = append(out, in.IP)
	}
	return out
}

func statusOf(t testing.TB, cs kubernetes.Interface, ns, name string) []string {
	t.Helper()
	s, err := cs.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting Service %s/%s: %v", ns, name, err)
	}
	return ingressOf(s)
}

func waitStatus(t testing.TB, cs kubernetes.Interface, ns, name string, want ...string) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("status of %s/%s to be %q", ns, name, want), 30*time.Second, func() bool {
		return slices.Equal(statusOf(t, cs, ns, name), want)
	})
}

// nth is the n-th address after base.
func nth(base string, n int) string {
	a := netip.MustParseAddr(base)
	for range n {
		a = a.Next()
	}
	return a.String()
}
