package lballoc

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// metrics are the allocator's Prometheus series; the allocation gauges are the
// leader's (a node standing by keeps those of its last term).
type metrics struct {
	leader   prometheus.Gauge
	assigned *prometheus.GaugeVec
	free     *prometheus.GaugeVec
	problems *prometheus.GaugeVec
	writes   *prometheus.CounterVec
}

func newMetrics(env daemon.Env) (*metrics, error) {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_lballoc_leader", Help: "1 while this node holds the allocator's Lease and allocates, else 0.",
		}),
		assigned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_lballoc_assigned_ips", Help: "Pool addresses held by Services, by family.",
		}, []string{"family"}),
		free: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_lballoc_pool_free_ips", Help: "Pool addresses no Service holds, by family.",
		}, []string{"family"}),
		problems: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_lballoc_problems", Help: "Services the allocator cannot serve as they ask (pool exhausted, conflicts, unavailable requests), by reason.",
		}, []string{"reason"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kube_routerd_lballoc_status_writes_total", Help: "Writes of Services' load-balancer status, by result (ok, conflict, gone, error).",
		}, []string{"result"}),
	}
	return m, env.RegisterMetrics("lballoc", m.leader, m.assigned, m.free, m.problems, m.writes)
}

func (m *metrics) record(a Allocation) {
	for _, f := range ipfamily.Both {
		if a.Size[f] > 0 {
			m.assigned.WithLabelValues(f.String()).Set(float64(a.Used[f]))
			m.free.WithLabelValues(f.String()).Set(a.Free(f))
		}
	}
	m.problems.Reset()
	for _, p := range a.Problems {
		m.problems.WithLabelValues(string(p.Reason)).Inc()
	}
}
