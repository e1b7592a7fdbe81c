//go:build vm

package demo

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestDemoServiceProxyInVM is the service proxy scene of `make demo`: kube-routerd on
// a node in the VM (whose kernel has IPVS) balances a Service over two pods round
// robin, then pins a client to one pod with session affinity. The guest cannot pass
// environment variables to it, so it always tells its story on standard output.
func TestDemoServiceProxyInVM(t *testing.T) {
	testenv.RequireVM(t)
	// The guest has no Go toolchain: it runs the binary `make build` left in the
	// source tree, which the VM shares at the host's path.
	bin, err := filepath.Abs("../../bin/kube-routerd")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		testenv.Unavailable(t, "no %s: run make build first", bin)
	}
	n := newNarrator(t, true)
	ctx := context.Background()

	n.scene("6. Service proxy (in a VM: this scene needs IPVS)")
	rc, cs := testenv.APIServer(t)
	n.say("Inside a qemu VM running Debian's kernel; the API server is the host's, forwarded into the VM.")
	ns := testenv.Namespace(t, cs)
	node := netns.NewNode(t, netns.NodeOptions{Name: testenv.UniqueName("demo-node"), Client: cs})
	webA := node.AddPod(t, netns.PodOptions{Name: "web-a", Namespace: ns, Labels: map[string]string{"app": "web"}})
	webB := node.AddPod(t, netns.PodOptions{Name: "web-b", Namespace: ns, Labels: map[string]string{"app": "web"}})
	client := node.AddPod(t, netns.PodOptions{Name: "client", Namespace: ns})
	webA.ServeHTTP(t, 8080)
	webB.ServeHTTP(t, 8080)
	n.say("Node %s (pod CIDR %s) runs two web pods, web-a %s and web-b %s, and a client pod %s.",
		node.Name, node.PodCIDRv4, webA.IPv4, webB.IPv4, client.IPv4)

	dir := filepath.Join(demoDir(t), node.Name)
	cfg := writeDaemonConfig(t, node, rc, dir, fmt.Sprintf(`
[service_proxy]
# The pod network: traffic to a Service from outside it is masqueraded.
cluster_cidrs = [%q]

[network_policy]
enabled = false   # shown on the host

[routing]
enabled = false   # shown on the host
`, netip.PrefixFrom(node.PodCIDRv4.Addr(), 16).Masked()))
	n.show(node.Name, "cat "+cfg, readFile(t, cfg))
	d := startDaemon(t, node, bin, cfg)
	n.show(node.Name, "kube-routerd run --config "+cfg+" &", "")
	d.ready(3 * time.Minute)

	svc := &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	n.apply("Service web", svc)
	created, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr(created.Spec.ClusterIP)
	slice := &discoveryv1.EndpointSlice{
		TypeMeta:    metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}
	for _, p := range []*netns.Pod{webA, webB} {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.IPv4.String()},
			NodeName:   ptr.To(node.Name),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name},
		})
	}
	n.say("This control plane runs no controller-manager, so the demo writes the EndpointSlice its\nendpointslice controller would:")
	n.apply("EndpointSlice web-1", slice)
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	virtual := fmt.Sprintf("%s:80", vip)
	testenv.Eventually(t, "IPVS to balance over both pods", time.Minute, func() bool {
		out, _ := node.Command(ctx, "ipvsadm", "-Ln", "-t", virtual).Output()
		return strings.Contains(string(out), webA.IPv4.String()) && strings.Contains(string(out), webB.IPv4.String())
	})
	n.say("kube-routerd put the cluster IP %s on its dummy interface and made an IPVS virtual service\nwith both pods behind it:", vip)
	n.run(node.NS, "ipvsadm", "-Ln")

	target := netip.AddrPortFrom(vip, 80)
	n.say("Requests from the client pod alternate between the pods (scheduler rr):")
	seen := map[string]int{}
	for range 4 {
		r, err := n.probe(client.NS, httpProto, target)
		if err != nil {
			t.Fatalf("the client cannot reach the Service: %v", err)
		}
		seen[r.Server]++
	}
	if seen["web-a"] != 2 || seen["web-b"] != 2 {
		t.Errorf("replies per pod = %v, want 2 each", seen)
	}

	n.say("Now with session affinity, each client sticks to one pod:")
	patch := []byte(`{"spec":{"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":600}}}}`)
	n.show("api", "kubectl patch service web -p '"+string(patch)+"'", "")
	if _, err := cs.CoreV1().Services(ns).Patch(ctx, "web", "application/merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "IPVS persistence", time.Minute, func() bool {
		out, _ := node.Command(ctx, "ipvsadm", "-Ln", "-t", virtual).Output()
		return strings.Contains(string(out), "persistent 600")
	})
	n.run(node.NS, "ipvsadm", "-Ln", "-t", virtual)
	seen = map[string]int{}
	for range 4 {
		r, err := n.probe(client.NS, httpProto, target)
		if err != nil {
			t.Fatalf("the client cannot reach the Service with affinity: %v", err)
		}
		seen[r.Server]++
	}
	if len(seen) != 1 {
		t.Errorf("with session affinity replies came from %v, want one pod", seen)
	}
	n.run(node.NS, bin, "status", "--config", cfg)

	n.say("Teardown: stop the daemon, then `kube-routerd cleanup` removes its IPVS services, dummy\ninterface, rules and sets:")
	d.stop()
	n.show(node.Name, "systemctl stop kube-routerd   # here: SIGTERM", "")
	n.run(node.NS, bin, "cleanup", "--config", cfg)
	if out := n.run(node.NS, "ipvsadm", "-Ln"); strings.Contains(out, vip.String()) {
		t.Errorf("cleanup left the virtual service %s:\n%s", virtual, out)
	}
}
