package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the service proxy's Prometheus metrics.
type metrics struct {
	syncDuration *prometheus.HistogramVec
	syncErrors   prometheus.Counter
	services     prometheus.Gauge
	endpoints    prometheus.Gauge
	draining     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kube_routerd_proxy_sync_duration_seconds",
			Help:    "Time to bring IPVS in line with the API, by sync type (full or partial).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"type"}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kube_routerd_proxy_sync_errors_total",
			Help: "Syncs of the service proxy that failed (they are retried).",
		}),
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
	}
	if reg != nil {
		reg.MustRegister(m.syncDuration, m.syncErrors, m.services, m.endpoints, m.draining)
	}
	return m
}
