package proxy

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
)

// metrics are the service proxy's Prometheus metrics.
type metrics struct {
	services  prometheus.Gauge
	endpoints prometheus.Gauge
	draining  prometheus.Gauge
	// refused counts addresses outside the configured ranges by kind (ExternalIP,
	// LoadBalancer).
	refused *prometheus.GaugeVec
}

func newMetrics(env daemon.Env) (*metrics, error) {
	m := &metrics{
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_proxy_virtual_services",
			Help: "IPVS virtual services programmed for Kubernetes Services.",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_proxy_destinations",
			Help: "Serving IPVS destinations (endpoints) programmed, summed over virtual services.",
		}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_proxy_draining_destinations",
			Help: "IPVS destinations kept with weight 0 until their connections end.",
		}),
		refused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_proxy_refused_addresses",
			Help: "External and load-balancer IPs of Services not programmed because they are outside the configured ranges.",
		}, []string{"kind"}),
	}
	return m, env.RegisterMetrics("proxy", m.services, m.endpoints, m.draining, m.refused)
}

// trafficCollector reports the kernel's IPVS counters per Service port, summed over
// its virtual services (ClusterIP, NodePorts, external and load-balancer IPs): the
// labels are bounded by the Services, not by addresses or clients. It reads the
// kernel at scrape time.
type trafficCollector struct {
	ipvs                   ipvs.Interface
	ports                  func() map[ipvs.Key]servicePort
	log                    *slog.Logger
	connections, pkts, bts *prometheus.Desc
}

func newTrafficCollector(dp ipvs.Interface, ports func() map[ipvs.Key]servicePort, log *slog.Logger) *trafficCollector {
	labels := []string{"namespace", "service", "port"}
	return &trafficCollector{ipvs: dp, ports: ports, log: log,
		connections: prometheus.NewDesc("kube_routerd_proxy_service_connections_total",
			"Connections IPVS scheduled to a Service port's endpoints on this node.", labels, nil),
		pkts: prometheus.NewDesc("kube_routerd_proxy_service_packets_total",
			"Packets of a Service port's connections through IPVS on this node; direction in is client to endpoint.", append(labels, "direction"), nil),
		bts: prometheus.NewDesc("kube_routerd_proxy_service_bytes_total",
			"Bytes of a Service port's connections through IPVS on this node; direction in is client to endpoint.", append(labels, "direction"), nil),
	}
}

func (t *trafficCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- t.connections
	ch <- t.pkts
	ch <- t.bts
}

func (t *trafficCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := t.ipvs.Stats()
	if err != nil {
		t.log.Warn("reading IPVS counters for metrics", "err", err)
		return
	}
	sums := map[servicePort]ipvs.Stats{}
	for k, sp := range t.ports() {
		st, ok := stats[k]
		if !ok {
			continue
		}
		sum := sums[sp]
		sum.Connections += st.Connections
		sum.PacketsIn += st.PacketsIn
		sum.PacketsOut += st.PacketsOut
		sum.BytesIn += st.BytesIn
		sum.BytesOut += st.BytesOut
		sums[sp] = sum
	}
	for sp, st := range sums {
		l := []string{sp.Service.Namespace, sp.Service.Name, sp.Port}
		ch <- prometheus.MustNewConstMetric(t.connections, prometheus.CounterValue, float64(st.Connections), l...)
		ch <- prometheus.MustNewConstMetric(t.pkts, prometheus.CounterValue, float64(st.PacketsIn), append(l, "in")...)
		ch <- prometheus.MustNewConstMetric(t.pkts, prometheus.CounterValue, float64(st.PacketsOut), append(l, "out")...)
		ch <- prometheus.MustNewConstMetric(t.bts, prometheus.CounterValue, float64(st.BytesIn), append(l, "in")...)
		ch <- prometheus.MustNewConstMetric(t.bts, prometheus.CounterValue, float64(st.BytesOut), append(l, "out")...)
	}
}
