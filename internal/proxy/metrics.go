package proxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
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
