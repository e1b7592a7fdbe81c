//go:build vm

package proxy

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestZoneHintsKeepTrafficInTheZone: on a node of zone a, a client reaches only the
// zone-a endpoint of a Service whose EndpointSlice carries zone hints while that
// endpoint is ready, and every endpoint once it is not.
func TestZoneHintsKeepTrafficInTheZone(t *testing.T) {
	cs, namespace, _, node := vmCluster(t)
	ctx := t.Context()
	near := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	far1 := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	far2 := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	client := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	for _, p := range []*netns.Pod{near, far1, far2} {
		p.Serve(t, netns.TCP, 8080)
	}
	n, err := cs.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels[corev1.LabelTopologyZone] = "zone-a"
	if _, err := cs.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	dp := testKernelDataplane(t, node.NS)
	rc := startController(t, cs, node.Name, config.Default().ServiceProxy, dp)
	svc := apiService{name: "web", proto: corev1.ProtocolTCP, port: 80, target: 8080}.create(t, cs, namespace, node, near, far1, far2)
	slice, err := cs.DiscoveryV1().EndpointSlices(namespace).Get(ctx, "web-ipv4", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	zoneOf := map[netip.Addr]string{near.IPv4: "zone-a", far1.IPv4: "zone-b", far2.IPv4: "zone-b"}
	for i := range slice.Endpoints {
		zone := zoneOf[netip.MustParseAddr(slice.Endpoints[i].Addresses[0])]
		slice.Endpoints[i].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}}
	}
	if slice, err = cs.DiscoveryV1().EndpointSlices(namespace).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	key := ipvs.Key{Addr: netip.MustParseAddr(svc.Spec.ClusterIP), Proto: ipvs.TCP, Port: 80}
	testenv.Eventually(t, "only the zone-a endpoint programmed", vmWait, func() bool {
		d, _ := dp.IPVS.Destinations(key)
		return len(d) == 1 && d[0].Addr == near.IPv4
	})
	target := netip.AddrPortFrom(key.Addr, 80)
	for range 4 {
		r, err := client.Probe(ctx, netns.TCP, target)
		if err != nil {
			t.Fatal(err)
		}
		if r.Server != near.Name {
			t.Errorf("reply from %s, want only %s (zone a)", r.Server, near.Name)
		}
	}

	for i := range slice.Endpoints {
		if slice.Endpoints[i].Addresses[0] == near.IPv4.String() {
			slice.Endpoints[i].Conditions.Ready = ptr.To(false)
		}
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(namespace).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the zone-b endpoints take over", vmWait, func() bool {
		d, _ := dp.IPVS.Destinations(key)
		return len(d) == 2
	})
	seen := map[string]int{}
	for range 4 {
		r, err := client.Probe(ctx, netns.TCP, target)
		if err != nil {
			t.Fatal(err)
		}
		seen[r.Server]++
	}
	if seen[far1.Name] != 2 || seen[far2.Name] != 2 {
		t.Errorf("replies %v, want 2 from each zone-b endpoint", seen)
	}

	t.Run("the kernel's counters reach the Service's traffic metrics", func(t *testing.T) {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(newTrafficCollector(dp.IPVS, rc.c.desired.portsOf, rc.c.log))
		values := map[string]float64{}
		scrape := func() {
			families, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range families {
				for _, m := range f.GetMetric() {
					// The API server holds other tests' Services too, and this node
					// programs them all: keep only this test's.
					name, ours := f.GetName(), 0
					for _, l := range m.GetLabel() {
						switch {
						case l.GetName() == "direction":
							name += " " + l.GetValue()
						case l.GetName() == "namespace" && l.GetValue() == namespace,
							l.GetName() == "service" && l.GetValue() == svc.Name:
							ours++
						}
					}
					if ours == 2 {
						values[name] = m.GetCounter().GetValue()
					}
				}
			}
		}
		deadline := time.Now().Add(vmWait)
		for scrape(); values["kube_routerd_proxy_service_connections_total"] < 1; scrape() {
			if time.Now().After(deadline) {
				st, err := dp.IPVS.Stats()
				t.Fatalf("the kernel's counters did not move within %s: metrics %v; Stats %v %v; /proc/net/ip_vs_stats:\n%s",
					vmWait, values, st, err, node.NS.Run(t, "cat", "/proc/net/ip_vs_stats"))
			}
			time.Sleep(200 * time.Millisecond)
		}
		if c := values["kube_routerd_proxy_service_connections_total"]; c > 8 {
			t.Errorf("connections %v, more than the 8 probes made", c)
		}
		for _, name := range []string{"kube_routerd_proxy_service_bytes_total in", "kube_routerd_proxy_service_bytes_total out", "kube_routerd_proxy_service_packets_total in"} {
			if values[name] == 0 {
				t.Errorf("%s is 0 after 8 connections: %v", name, values)
			}
		}
	})
}
