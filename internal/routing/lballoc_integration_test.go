//go:build integration

package routing

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/lballoc"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// TestAllocatedLoadBalancerIPIsAdvertised runs the load-balancer allocator and the
// routing controller of one daemon on the real API server: an address the allocator
// writes to a Service's status is announced over BGP (a fake speaker records the
// paths), and withdrawn when the Service goes.
func TestAllocatedLoadBalancerIPIsAdvertised(t *testing.T) {
	_, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	nodeName := testenv.UniqueName("node")
	testenv.CreateNode(t, cs, testenv.NodeSpec{Name: nodeName, PodCIDRs: []string{"10.244.1.0/24"}, InternalIPs: []string{"10.0.0.1"}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env := daemon.Env{Client: cs, Informers: k8s.NewInformerFactory(cs, nil, 0, nil), NodeName: nodeName, Log: slog.New(slog.DiscardHandler)}

	rcfg := config.Default().Routing
	rcfg.AdvertiseLoadBalancerIPs = true
	speaker := newFakeSpeaker()
	r, err := New(env, rcfg, Dataplane{Routes: route.NewFake(netip.MustParsePrefix("10.0.0.0/24")), startSpeaker: speaker.start})
	if err != nil {
		t.Fatal(err)
	}
	lcfg := config.Default().LoadBalancer
	lcfg.Enabled, lcfg.DefaultClass = true, false
	lcfg.Class = "test.kube-routerd.io/" + testenv.UniqueName("adv")
	lcfg.LeaseNamespace, lcfg.LeaseName = ns, testenv.UniqueName("lballoc")
	lcfg.IPv4Pools = []config.IPPool{config.PoolOf(netip.MustParsePrefix("192.0.2.64/28"))}
	lcfg.LeaseDuration = config.Duration{Duration: 2 * time.Second}
	l, err := lballoc.New(env, lballoc.Options{Config: lcfg, RenewDeadline: time.Second, RetryPeriod: 200 * time.Millisecond, ReleaseOnStop: true})
	if err != nil {
		t.Fatal(err)
	}
	env.Informers.Start(ctx.Done())
	env.Informers.WaitForCacheSync(ctx.Done())
	done := make(chan struct{}, 2)
	for _, c := range []daemon.Controller{r, l} {
		go func() {
			_ = c.Run(ctx, daemon.NewHeartbeat(c.Name(), nil))
			done <- struct{}{}
		}()
	}
	defer func() { cancel(); <-done; <-done }()

	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:                          corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass:             ptr.To(lcfg.Class),
			AllocateLoadBalancerNodePorts: ptr.To(false),
			Ports:                         []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	advertised := func(p string) bool {
		speaker.mu.Lock()
		defer speaker.mu.Unlock()
		return slices.Contains(speaker.paths, netip.MustParsePrefix(p))
	}
	testenv.Eventually(t, "the allocated 192.0.2.64 to be advertised", 30*time.Second, func() bool { return advertised("192.0.2.64/32") })
	if err := cs.CoreV1().Services(ns).Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "192.0.2.64 to be withdrawn", 30*time.Second, func() bool { return !advertised("192.0.2.64/32") })
}
