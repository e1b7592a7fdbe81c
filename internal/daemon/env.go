package daemon

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	policyclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
)

// Env is what every controller is built from. Controllers register their informer
// event handlers in their constructor; the daemon starts Informers and waits for the
// caches to sync before it calls any controller's Run.
type Env struct {
	Client    kubernetes.Interface
	Informers informers.SharedInformerFactory
	// PolicyClient reads policy.networking.k8s.io objects (ClusterNetworkPolicies);
	// nil leaves them unread.
	PolicyClient policyclient.Interface
	// NodeName is the name of this node's Node object.
	NodeName string
	// Registry is where controllers register their Prometheus metrics.
	Registry prometheus.Registerer
	// Log is the daemon's logger; nil means slog.Default().
	Log *slog.Logger
}

// Logger returns the logger a controller passes down to everything it builds: every
// line it writes names the controller.
func (e Env) Logger(controller string) *slog.Logger {
	log := e.Log
	if log == nil {
		log = slog.Default()
	}
	return log.With("controller", controller)
}

// RegisterMetrics registers a controller's collectors with Registry (none when
// Registry is nil, as in tests that do not look at metrics).
func (e Env) RegisterMetrics(controller string, collectors ...prometheus.Collector) error {
	if e.Registry == nil {
		return nil
	}
	for _, c := range collectors {
		if err := e.Registry.Register(c); err != nil {
			return fmt.Errorf("registering %s metrics: %w", controller, err)
		}
	}
	return nil
}

// StatusReporter is implemented by controllers that can describe what they have
// programmed in more detail (services, policies, BGP peers) for `kube-routerd status`.
// Details must be safe to call concurrently with Run and return JSON-encodable data.
type StatusReporter interface {
	Details() any
}

// HandlerProvider is implemented by controllers that answer questions of their own
// on the health listener (netpol's /explain). Handlers maps a ServeMux pattern
// ("GET /explain") to its handler, which must be safe to call concurrently with Run.
type HandlerProvider interface {
	Handlers() map[string]http.HandlerFunc
}
