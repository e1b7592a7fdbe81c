package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
)

// Env is what every controller is built from. Controllers register their informer
// event handlers in their constructor; the daemon starts Informers and waits for the
// caches to sync before it calls any controller's Run.
type Env struct {
	Client    kubernetes.Interface
	Informers informers.SharedInformerFactory
	// NodeName is the name of this node's Node object.
	NodeName string
	// Registry is where controllers register their Prometheus metrics.
	Registry prometheus.Registerer
}

// StatusReporter is implemented by controllers that can describe what they have
// programmed in more detail (services, policies, BGP peers) for `kube-routerd status`.
// Details must be safe to call concurrently with Run and return JSON-encodable data.
type StatusReporter interface {
	Details() any
}
