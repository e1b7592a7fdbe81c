package k8s

import (
	"context"
	"reflect"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/tools/cache"
	clientmetrics "k8s.io/client-go/tools/metrics"
)

// APIMetrics count what the daemon asks of the API server and what it receives, so
// an operator sees its load on the control plane: requests by method and result,
// and objects received (list items and watch events) by kind.
type APIMetrics struct {
	requests *prometheus.CounterVec
	received *prometheus.CounterVec
}

// NewAPIMetrics registers the counters on reg and makes client-go's REST clients
// count their requests in them. client-go takes only the first such hook of a
// process; the daemon's main sets it before any other package could.
func NewAPIMetrics(reg prometheus.Registerer) *APIMetrics {
	m := &APIMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kube_routerd_api_requests_total",
			Help: "Requests to the API server by HTTP method and result code.",
		}, []string{"method", "code"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kube_routerd_api_objects_received_total",
			Help: "Objects received from the API server by the informers (list items and watch events), by kind.",
		}, []string{"kind"}),
	}
	reg.MustRegister(m.requests, m.received)
	clientmetrics.Register(clientmetrics.RegisterOpts{RequestResult: requestCounter{m.requests}})
	return m
}

type requestCounter struct{ c *prometheus.CounterVec }

func (r requestCounter) Increment(_ context.Context, code, method, _ string) {
	r.c.WithLabelValues(method, code).Inc()
}

// CountingTransform wraps an informer transform so every object the informers
// receive is counted by kind before it is transformed.
func (m *APIMetrics) CountingTransform(transform cache.TransformFunc) cache.TransformFunc {
	return func(obj any) (any, error) {
		kind := "unknown"
		if t := reflect.TypeOf(obj); t != nil {
			kind = strings.TrimPrefix(t.String(), "*")
		}
		m.received.WithLabelValues(kind).Inc()
		return transform(obj)
	}
}
