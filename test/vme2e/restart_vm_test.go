//go:build vm

package vme2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// Ports of the test Service: a fresh-connection probe and a long-lived echo stream.
const (
	probePort, probeTargetPort = 80, 8080
	echoPort, echoTargetPort   = 90, 9090
)

// createService creates a ClusterIP Service with the probe and echo ports over the
// backends, and the EndpointSlice the (absent) controller-manager would write. It
// returns the cluster IP.
func createService(t *testing.T, cs kubernetes.Interface, ns, name string, backends ...*netns.Pod) netip.Addr {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{
				{Name: "probe", Protocol: corev1.ProtocolTCP, Port: probePort, TargetPort: intstr.FromInt32(probeTargetPort)},
				{Name: "echo", Protocol: corev1.ProtocolTCP, Port: echoPort, TargetPort: intstr.FromInt32(echoTargetPort)},
			},
		},
	}
	created, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("probe"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](probeTargetPort)},
			{Name: ptr.To("echo"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](echoTargetPort)},
		},
	}
	for _, p := range backends {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.IPv4.String()},
			NodeName:   ptr.To(p.Node.Name),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name},
		})
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddr(created.Spec.ClusterIP)
}

// waitIPVS waits until the node's IPVS virtual service for target has every backend.
func waitIPVS(t *testing.T, node *netns.Node, target netip.AddrPort, backends ...*netns.Pod) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("IPVS on %s to balance %s over %d pods", node.Name, target, len(backends)), 2*time.Minute, func() bool {
		out, _ := node.Command(context.Background(), "ipvsadm", "-Ln", "-t", target.String()).Output()
		for _, b := range backends {
			if !strings.Contains(string(out), b.IPv4.String()) {
				return false
			}
		}
		return true
	})
}

// TestEstablishedConnectionsSurviveRestarts: a client holds a TCP connection to a
// ClusterIP, echoing a line every 100 ms, while kube-routerd is stopped with SIGTERM
// and an upgraded binary started (the package upgrade path), and then while it is
// killed with SIGKILL and started again. The connection never breaks, no echo is lost,
// new connections work while the daemon is down and after, and the kernel state it
// programmed is the same before, during and after each restart.
func TestEstablishedConnectionsSurviveRestarts(t *testing.T) {
	testenv.RequireVM(t)
	bin := daemonBinary(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	node := netns.NewNode(t, netns.NodeOptions{Client: cs})
	labels := map[string]string{"app": "echo"}
	backendA := node.AddPod(t, netns.PodOptions{Name: "echo-a", Namespace: ns, Labels: labels})
	backendB := node.AddPod(t, netns.PodOptions{Name: "echo-b", Namespace: ns, Labels: labels})
	client := node.AddPod(t, netns.PodOptions{Name: "client", Namespace: ns})
	for _, b := range []*netns.Pod{backendA, backendB} {
		b.Serve(t, netns.TCP, probeTargetPort)
		b.ServeEcho(t, echoTargetPort)
	}

	d := newDaemon(t, node, rc, bin, fmt.Sprintf(`
[service_proxy]
cluster_cidrs = [%q]

[routing]
router_id = %q
`, netip.PrefixFrom(node.PodCIDRv4.Addr(), 16).Masked(), node.IPv4))
	t.Logf("first start: READY after %s", d.StartReady(readyTimeout).Round(time.Millisecond))

	vip := createService(t, cs, ns, "echo", backendA, backendB)
	probe, echo := netip.AddrPortFrom(vip, probePort), netip.AddrPortFrom(vip, echoPort)
	waitIPVS(t, node, probe, backendA, backendB)
	waitIPVS(t, node, echo, backendA, backendB)
	conn, err := client.DialTCP(echo, 10*time.Second)
	if err != nil {
		t.Fatalf("echo connection from %s to %s: %v", client.Label, echo, err)
	}
	stream := netns.StartEchoStream(t, conn, 100*time.Millisecond)
	t.Cleanup(func() { stream.Finish() })
	stream.WaitEchoes(t, 5, "before any restart")
	t.Logf("the echo connection %s -> %s is served by %s", client.IPv4, echo, stream.Server)
	before := dataplaneState(t, node)
	t.Logf("dataplane of %s:\n%s", node.Name, before)

	sameState := func(when string) {
		t.Helper()
		if got := dataplaneState(t, node); got != before {
			t.Fatalf("the dataplane changed %s:\nbefore:\n%s\nnow:\n%s", when, before, got)
		}
	}
	restartUnderTraffic := func(how string, down func()) {
		t.Helper()
		echoesBefore := stream.Echoed()
		downAt := time.Now()
		down()
		sameState("after " + how)
		stream.WaitEchoes(t, 5, "while kube-routerd is down after "+how)
		gapServers := []string{probeTarget(t, client.NS, probe), probeTarget(t, client.NS, probe)}
		echoesDown := stream.Echoed() - echoesBefore
		ready := d.StartReady(readyTimeout)
		gap := time.Since(downAt)
		sameState("by the restart after " + how)
		stream.WaitEchoes(t, 5, "after the restart after "+how)
		after := []string{probeTarget(t, client.NS, probe), probeTarget(t, client.NS, probe)}
		t.Logf("%s: down to READY %s (start to READY %s), %d echoes while down, new connections while down answered by %v, after by %v",
			how, gap.Round(time.Millisecond), ready.Round(time.Millisecond), echoesDown, gapServers, after)
	}

	// The package upgrade: systemctl stop, a new binary replaces the old, systemctl start.
	restartUnderTraffic("SIGTERM and an upgrade", func() {
		d.Stop()
		d.Bin = installCopy(t, bin, t.TempDir())
	})
	restartUnderTraffic("SIGKILL", d.Kill)

	echoed, err := stream.Finish()
	if err != nil {
		t.Fatalf("the echo stream broke after %d echoes: %v", echoed, err)
	}
	t.Logf("%d echoes over one connection through both restarts, none lost", echoed)
}
