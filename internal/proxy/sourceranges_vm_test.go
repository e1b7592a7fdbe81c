//go:build vm

package proxy

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestLoadBalancerSourceRangesAdmitOnlyTheirClients probes a dual-stack load-balancer IP from a client
// inside its loadBalancerSourceRanges and one outside, in both families, then widens
// the ranges: the outside client gets in without the Service being recreated.
func TestLoadBalancerSourceRangesAdmitOnlyTheirClients(t *testing.T) {
	cs, namespace, _, node := vmCluster(t)
	ctx := t.Context()
	backend := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	inside := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	outside := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	backend.Serve(t, netns.TCP, 8080)

	dp := testKernelDataplane(t, node.NS)
	cfg := config.Default().ServiceProxy
	cfg.MasqueradeAll = true
	startController(t, cs, node.Name, cfg, dp)

	svc := apiService{name: "lb", proto: corev1.ProtocolTCP, port: 80, target: 8080, svcType: corev1.ServiceTypeLoadBalancer, dualStack: true}.
		create(t, cs, namespace, node, backend)
	lbIPs := []netip.Addr{netip.MustParseAddr("192.0.2.50"), netip.MustParseAddr("2001:db8::50")}
	svc.Spec.LoadBalancerSourceRanges = []string{
		netip.PrefixFrom(inside.IPv4, 32).String(), netip.PrefixFrom(inside.IPv6, 128).String(),
	}
	svc, err := cs.CoreV1().Services(namespace).Update(ctx, svc, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range lbIPs {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip.String()})
	}
	if svc, err = cs.CoreV1().Services(namespace).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "both load-balancer IPs programmed", vmWait, func() bool {
		for _, ip := range lbIPs {
			if d, _ := dp.IPVS.Destinations(ipvs.Key{Addr: ip, Proto: ipvs.TCP, Port: 80}); len(d) != 1 {
				return false
			}
		}
		return true
	})

	for _, ip := range lbIPs {
		target := netip.AddrPortFrom(ip, 80)
		if _, err := inside.Probe(ctx, netns.TCP, target); err != nil {
			t.Errorf("client inside the ranges to %s: %v", target, err)
		}
		if r, err := outside.Probe(ctx, netns.TCP, target); err == nil {
			t.Errorf("client outside the ranges reached %s (served by %s)", target, r.Server)
		}
	}

	svc.Spec.LoadBalancerSourceRanges = append(svc.Spec.LoadBalancerSourceRanges,
		netip.PrefixFrom(outside.IPv4, 32).String(), netip.PrefixFrom(outside.IPv6, 128).String())
	if _, err := cs.CoreV1().Services(namespace).Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, ip := range lbIPs {
		target := netip.AddrPortFrom(ip, 80)
		testenv.Eventually(t, "the widened ranges admit the other client to "+target.String(), vmWait, func() bool {
			_, err := outside.Probe(ctx, netns.TCP, target)
			return err == nil
		})
	}
}
