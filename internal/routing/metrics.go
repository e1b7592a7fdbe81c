package routing

import (
	api "github.com/osrg/gobgp/v3/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
)

// metrics are the routing controller's Prometheus series.
type metrics struct {
	peers        *prometheus.GaugeVec
	advertised   prometheus.Gauge
	received     prometheus.Gauge
	installed    prometheus.Gauge
	flaps        prometheus.Counter
	driftRepairs prometheus.Counter
	// bfdTransitions counts BFD session state changes by the state entered.
	bfdTransitions *prometheus.CounterVec
}

func newMetrics(env daemon.Env) (*metrics, error) {
	m := &metrics{
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_routing_bgp_peers", Help: "BGP peers by session state.",
		}, []string{"state"}),
		advertised: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_routing_routes_advertised", Help: "Prefixes this node announces (pod CIDRs and Service IPs) before export policy.",
		}),
		received: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_routing_routes_received", Help: "Routes accepted from BGP peers, summed over peers.",
		}),
		installed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_routing_routes_installed", Help: "Routes kube-routerd installed in the kernel.",
		}),
		flaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kube_routerd_routing_bgp_session_flaps_total", Help: "Times an established BGP session went down.",
		}),
		driftRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kube_routerd_routing_drift_repairs_total",
			Help: "Routes and tunnels of ours that someone else removed or changed, and a sync repaired.",
		}),
		bfdTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kube_routerd_routing_bfd_transitions_total",
			Help: "BFD session state changes, by the state entered (down, init, up, admin-down).",
		}, []string{"state"}),
	}
	return m, env.RegisterMetrics("routing", m.peers, m.advertised, m.received, m.installed, m.flaps, m.driftRepairs, m.bfdTransitions)
}

func (m *metrics) update(states map[string]peerState, originated, installed int) {
	counts := map[string]int{}
	for name := range api.PeerState_SessionState_value {
		counts[name] = 0
	}
	var received uint64
	for _, st := range states {
		counts[st.State]++
		received += st.Received
	}
	for state, n := range counts {
		m.peers.WithLabelValues(state).Set(float64(n))
	}
	m.advertised.Set(float64(originated))
	m.received.Set(float64(received))
	m.installed.Set(float64(installed))
}

// reportUnreachable warns once about each route the kernel refused because its next
// hop is on no connected network (a node in another subnet with overlay = "never"),
// naming the node behind it.
