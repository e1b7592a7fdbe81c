package netpol

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// metrics are the controller's Prometheus series.
type metrics struct {
	phaseDuration *prometheus.HistogramVec
	driftRepairs  *prometheus.CounterVec
	policies      prometheus.Gauge
	cluster       prometheus.Gauge
	pods          *prometheus.GaugeVec
	rules         *prometheus.GaugeVec
	sets          *prometheus.GaugeVec
	entries       *prometheus.GaugeVec
}

func newMetrics(env daemon.Env) (*metrics, error) {
	fam := []string{"family"}
	m := &metrics{
		phaseDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kube_routerd_netpol_sync_phase_duration_seconds",
			Help:    "Time of each successful sync spent compiling (phase=compile) and writing the kernel (phase=apply).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}, []string{"phase"}),
		driftRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kube_routerd_netpol_drift_repairs_total",
			Help: "Chains, sets and jumps of ours that a full resync found changed by someone else, and repaired.",
		}, fam),
		policies: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_netpol_policies_enforced", Help: "NetworkPolicies compiled and enforced.",
		}),
		cluster: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_netpol_cluster_policies_enforced", Help: "ClusterNetworkPolicies compiled and enforced.",
		}),
		pods: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_netpol_pods_isolated", Help: "Local pods isolated by at least one policy direction.",
		}, fam),
		rules: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_netpol_iptables_rules", Help: "iptables rules in the policy controller's chains.",
		}, fam),
		sets: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_netpol_ipsets", Help: "ipsets the policy controller maintains.",
		}, fam),
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_netpol_ipset_entries", Help: "Entries over all of the policy controller's ipsets.",
		}, fam),
	}
	return m, env.RegisterMetrics("netpol", m.phaseDuration, m.driftRepairs, m.policies, m.cluster, m.pods, m.rules, m.sets, m.entries)
}

func (m *metrics) record(family ipfamily.Family, policies, clusterPolicies int, d *Desired) {
	f := strconv.Itoa(int(family))
	m.policies.Set(float64(policies))
	m.cluster.Set(float64(clusterPolicies))
	m.pods.WithLabelValues(f).Set(float64(d.Pods))
	m.rules.WithLabelValues(f).Set(float64(d.Rules))
	m.sets.WithLabelValues(f).Set(float64(len(d.Sets)))
	m.entries.WithLabelValues(f).Set(float64(d.SetEntriesCount()))
}
