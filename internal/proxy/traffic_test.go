package proxy

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
)

// The traffic counters of a Service port are the kernel's, summed over its virtual
// services, with the Service and port as labels and nothing per address.
func TestTrafficMetricsSumAServicePortsVirtualServices(t *testing.T) {
	kernel := newFakeKernel()
	h := newHarness(t, kernel)
	h.store(namedService("web", "10.96.0.10", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	}))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}))
	h.sync(true)
	clusterIP := ipvs.Key{Addr: netip.MustParseAddr("10.96.0.10"), Proto: ipvs.TCP, Port: 80}
	nodePort := ipvs.Key{Addr: netip.MustParseAddr("192.168.1.10"), Proto: ipvs.TCP, Port: 30080}
	kernel.ipvs.SetStats(clusterIP, ipvs.Stats{Connections: 3, PacketsIn: 30, PacketsOut: 20, BytesIn: 3000, BytesOut: 9000})
	kernel.ipvs.SetStats(nodePort, ipvs.Stats{Connections: 1, PacketsIn: 10, PacketsOut: 5, BytesIn: 1000, BytesOut: 500})

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newTrafficCollector(kernel.ipvs, h.c.desired.portsOf, h.c.log))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += " " + l.GetName() + "=" + l.GetValue()
			}
			got[key] = m.GetCounter().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"kube_routerd_proxy_service_connections_total namespace=ns port=http service=web":           4,
		"kube_routerd_proxy_service_packets_total direction=in namespace=ns port=http service=web":  40,
		"kube_routerd_proxy_service_packets_total direction=out namespace=ns port=http service=web": 25,
		"kube_routerd_proxy_service_bytes_total direction=in namespace=ns port=http service=web":    4000,
		"kube_routerd_proxy_service_bytes_total direction=out namespace=ns port=http service=web":   9500,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v", key, got[key], want)
		}
	}
	if len(got) != 5 {
		t.Errorf("%d series, want 5 (one Service port): %v", len(got), got)
	}
}
