package podnet

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
)

// metrics are the pod network's Prometheus series.
type metrics struct {
	mtu                 prometheus.Gauge
	clusterDestinations *prometheus.GaugeVec
}

func newMetrics(env daemon.Env) (*metrics, error) {
	m := &metrics{
		mtu: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_podnet_pod_mtu", Help: "The MTU pods get through the CNI configuration.",
		}),
		clusterDestinations: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_podnet_cluster_destinations",
			Help: "Networks pod traffic reaches without masquerading (pod CIDRs, node addresses, cluster and service CIDRs), by family; absent families are not masqueraded.",
		}, []string{"family"}),
	}
	return m, env.RegisterMetrics("podnet", m.mtu, m.clusterDestinations)
}

func (m *metrics) record(want desired) {
	m.mtu.Set(float64(want.MTU))
	m.clusterDestinations.Reset()
	for _, f := range want.Egress {
		m.clusterDestinations.WithLabelValues(strconv.Itoa(int(f.Family))).Set(float64(len(f.ClusterDestinations)))
	}
}
