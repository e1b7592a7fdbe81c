package daemon

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// daemonMetrics are the per-controller figures every controller gets for free.
type daemonMetrics struct {
	syncDuration *prometheus.HistogramVec
	syncErrors   *prometheus.CounterVec
	ready        *prometheus.GaugeVec
	alive        *prometheus.GaugeVec
	lastSync     *prometheus.GaugeVec
}

func newDaemonMetrics(reg prometheus.Registerer) *daemonMetrics {
	m := &daemonMetrics{
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kube_routerd_sync_duration_seconds",
			Help:    "Duration of controller syncs, by controller and kind (full or partial).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"controller", "kind"}),
		syncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kube_routerd_sync_errors_total",
			Help: "Controller syncs that failed.",
		}, []string{"controller"}),
		ready: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_controller_ready",
			Help: "1 once the controller finished its first full sync.",
		}, []string{"controller"}),
		alive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_controller_alive",
			Help: "1 while the controller's loop beats within the stall timeout.",
		}, []string{"controller"}),
		lastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_last_successful_sync_timestamp_seconds",
			Help: "Unix time of the controller's last successful sync.",
		}, []string{"controller"}),
	}
	reg.MustRegister(m.syncDuration, m.syncErrors, m.ready, m.alive, m.lastSync)
	return m
}

func (m *daemonMetrics) observer(controller string) func(full bool, d time.Duration, err error) {
	return func(full bool, d time.Duration, err error) {
		kind := "partial"
		if full {
			kind = "full"
		}
		m.syncDuration.WithLabelValues(controller, kind).Observe(d.Seconds())
		if err != nil {
			m.syncErrors.WithLabelValues(controller).Inc()
			return
		}
		m.lastSync.WithLabelValues(controller).SetToCurrentTime()
		if full {
			m.ready.WithLabelValues(controller).Set(1)
		}
	}
}

func (m *daemonMetrics) update(beats []*Heartbeat, stall time.Duration) {
	for _, hb := range beats {
		v := 0.0
		if hb.Alive(stall) {
			v = 1
		}
		m.alive.WithLabelValues(hb.Name()).Set(v)
	}
}
