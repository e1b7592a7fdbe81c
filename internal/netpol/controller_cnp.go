package netpol

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/discovery"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	policyclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	policyinformers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions"
	policylisters "sigs.k8s.io/network-policy-api/pkg/client/listers/apis/v1beta1"

	"github.com/kube-routerd/kube-routerd/internal/loop"
)

// crdPollInterval is how often the controller asks the API server whether it serves
// ClusterNetworkPolicies yet, while it does not.
var crdPollInterval = 30 * time.Second

// clusterSource reads ClusterNetworkPolicies when the API server serves them. Most
// clusters do not have the CRD: the controller then works on NetworkPolicies alone
// and looks again every crdPollInterval, so a CRD installed later is picked up
// without a restart.
type clusterSource struct {
	client  policyclient.Interface
	log     *slog.Logger
	changes *loop.Tracker[changed]
	request func()
	// absenceLogged: the CRD's absence (or discovery's failure) was logged once.
	absenceLogged bool

	mu      sync.Mutex
	factory policyinformers.SharedInformerFactory
	lister  policylisters.ClusterNetworkPolicyLister // nil until the informer synced
	// synced is closed once lister is set.
	synced chan struct{}
	// nodePeers says some ClusterNetworkPolicy has a nodes peer: Node labels and
	// addresses matter then.
	nodePeers atomic.Bool
}

// clusterPoliciesServed asks discovery whether the API server serves ClusterNetworkPolicies.
func clusterPoliciesServed(d discovery.DiscoveryInterface) (bool, error) {
	list, err := d.ServerResourcesForGroupVersion(policyv1beta1.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == "clusternetworkpolicies" }), nil
}

// prepare registers the informer if the API server serves ClusterNetworkPolicies now,
// before the tracker starts, so that the first sync sees them. It reports whether it did.
func (s *clusterSource) prepare() bool {
	served, err := clusterPoliciesServed(s.client.Discovery())
	logged := s.absenceLogged
	s.absenceLogged = s.absenceLogged || err != nil || !served
	switch {
	case err != nil && !logged:
		s.log.Warn("cannot tell whether the API server serves ClusterNetworkPolicies; asking again periodically", "every", crdPollInterval, "err", err)
		return false
	case !served && !logged:
		s.log.Info("the API server does not serve ClusterNetworkPolicies (policy.networking.k8s.io/v1beta1): enforcing NetworkPolicies only, checking again periodically",
			"every", crdPollInterval)
		return false
	case err != nil || !served:
		return false
	}
	factory := policyinformers.NewSharedInformerFactory(s.client, 0)
	inf := factory.Policy().V1beta1().ClusterNetworkPolicies()
	if err := s.changes.Watch(inf.Informer(), loop.Both(clusterKeyOf)); err != nil {
		s.log.Error("cannot watch ClusterNetworkPolicies", "err", err)
		return false
	}
	s.mu.Lock()
	s.factory = factory
	s.mu.Unlock()
	return true
}

func clusterKeyOf(obj any) (changed, bool) {
	p, ok := obj.(*policyv1beta1.ClusterNetworkPolicy)
	if !ok {
		return changed{}, false
	}
	return changed{cluster: true, key: clusterKey(p.Name)}, true
}

// run starts the informer (preparing it first when the CRD was missing, polling
// until it is served) and makes the lister available once its cache has synced.
// Until then the controller enforces NetworkPolicies alone.
func (s *clusterSource) run(ctx context.Context, prepared bool) {
	for !prepared {
		select {
		case <-ctx.Done():
			return
		case <-time.After(crdPollInterval):
		}
		prepared = s.prepare()
		if prepared {
			s.log.Info("the API server serves ClusterNetworkPolicies now: enforcing them")
		}
	}
	s.mu.Lock()
	factory := s.factory
	s.mu.Unlock()
	factory.Start(ctx.Done())
	for _, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return
		}
	}
	s.mu.Lock()
	s.lister = factory.Policy().V1beta1().ClusterNetworkPolicies().Lister()
	s.mu.Unlock()
	close(s.synced)
	s.changes.MarkAll()
	s.request()
	<-ctx.Done()
	factory.Shutdown()
}

// waitSynced waits (bounded by ctx) until a prepared informer's cache has synced, so
// the controller's first sync includes the policies, and reports whether it has.
func (s *clusterSource) waitSynced(ctx context.Context) bool {
	select {
	case <-s.synced:
		return true
	case <-ctx.Done():
		return false
	}
}

// list returns the ClusterNetworkPolicies, sorted by name; none while they are not served.
func (s *clusterSource) list() ([]*policyv1beta1.ClusterNetworkPolicy, error) {
	if s == nil {
		return nil, nil
	}
	s.mu.Lock()
	lister := s.lister
	s.mu.Unlock()
	if lister == nil {
		return nil, nil
	}
	out, err := lister.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b *policyv1beta1.ClusterNetworkPolicy) int { return strings.Compare(a.Name, b.Name) })
	hasNodePeers := false
	for _, p := range out {
		for _, r := range p.Spec.Egress {
			for _, peer := range r.To {
				hasNodePeers = hasNodePeers || peer.Nodes != nil
			}
		}
	}
	s.nodePeers.Store(hasNodePeers)
	return out, nil
}

// nodePeersChanged reports whether a Node event changes what a nodes peer selects:
// its labels or addresses, while a ClusterNetworkPolicy has nodes peers.
func (s *clusterSource) nodePeersChanged(ch loop.Change) bool {
	if s == nil || !s.nodePeers.Load() {
		return false
	}
	o, ok1 := ch.Old.(*corev1.Node)
	n, ok2 := ch.New.(*corev1.Node)
	if !ok1 || !ok2 {
		return true
	}
	return !labels.Equals(o.Labels, n.Labels) || !slices.Equal(o.Status.Addresses, n.Status.Addresses)
}
