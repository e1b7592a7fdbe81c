package k8s

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informer caches hold one copy of every Pod, Node, Service, EndpointSlice,
// Namespace and NetworkPolicy of the cluster: at 150,000 pods the whole objects
// (container specs, statuses, managed fields) cost several hundred MiB. Strip
// keeps only the fields some controller reads, so the cache grows with the number of
// objects, not with what users and kubelet write into them.
//
// A field a controller starts reading must be kept here too, and for pods in
// podWire, which trims them before they are decoded; the stripped-versus-whole tests
// of each controller, and the random pods of the trimming test, fail otherwise.

// Annotation keys kept on cached objects. Everything else (kubectl's
// last-applied-configuration above all) is dropped.
const (
	kubeRouterAnnotationPrefix = "kube-router.io/"
	// sourceRangesAnnotation is the older form of spec.loadBalancerSourceRanges.
	sourceRangesAnnotation = "service.beta.kubernetes.io/load-balancer-source-ranges"
	// betaIsolationAnnotation selects the beta namespace-isolation semantics.
	betaIsolationAnnotation = "net.beta.kubernetes.io/network-policy"
)

// Strip returns a smaller copy of a Node, Service, Namespace or NetworkPolicy,
// holding what the controllers read, a Pod or EndpointSlice in its compact form, and
// any other object (a compacted one too) unchanged. It is idempotent, as
// client-go requires of a transform.
func Strip(obj any) any {
	switch o := obj.(type) {
	case *corev1.Pod:
		return CompactPod(o)
	case *corev1.Node:
		return stripNode(o)
	case *corev1.Service:
		return stripService(o)
	case *discoveryv1.EndpointSlice:
		return CompactEndpointSlice(o)
	case *corev1.Namespace:
		return &corev1.Namespace{
			ObjectMeta: stripMeta(o.ObjectMeta, func(k string) bool { return k == betaIsolationAnnotation }),
		}
	case *networkingv1.NetworkPolicy:
		return &networkingv1.NetworkPolicy{ObjectMeta: stripMeta(o.ObjectMeta, nil), Spec: o.Spec}
	}
	return obj
}

// StripForCache is Strip in the shape of an informer transform; it never fails.
func StripForCache(obj any) (any, error) { return Strip(obj), nil }

// stripMeta keeps identity, labels (selectors read them), deletion state and the
// annotations keep accepts. Owner references, finalizers and managed fields go.
func stripMeta(m metav1.ObjectMeta, keep func(annotation string) bool) metav1.ObjectMeta {
	out := metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		Generation:        m.Generation,
		Labels:            m.Labels,
		DeletionTimestamp: m.DeletionTimestamp,
	}
	if keep == nil {
		return out
	}
	for k, v := range m.Annotations {
		if keep(k) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out
}

func isKubeRouterAnnotation(k string) bool { return strings.HasPrefix(k, kubeRouterAnnotationPrefix) }

// stripNode keeps addresses, pod CIDRs, taints and kube-router's annotations; the
// node's images, conditions, capacity and system info go.
func stripNode(n *corev1.Node) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: stripMeta(n.ObjectMeta, isKubeRouterAnnotation),
		Spec: corev1.NodeSpec{
			PodCIDR:       n.Spec.PodCIDR,
			PodCIDRs:      n.Spec.PodCIDRs,
			Taints:        n.Spec.Taints,
			Unschedulable: n.Spec.Unschedulable,
		},
		Status: corev1.NodeStatus{Addresses: n.Status.Addresses},
	}
}

// stripService keeps the spec but the selector (the proxy reads most of it), the load
// balancer's ingress addresses, the creation time (the load-balancer allocator
// settles two Services claiming one address in favour of the older) and of the
// labels only the two that hand a Service to another proxy or mark it headless: the
// rest (Helm's, the app's) cost about 400 bytes a Service and nothing reads them.
func stripService(s *corev1.Service) *corev1.Service {
	out := &corev1.Service{
		ObjectMeta: stripMeta(s.ObjectMeta, func(k string) bool {
			return isKubeRouterAnnotation(k) || k == sourceRangesAnnotation
		}),
		Spec:   s.Spec,
		Status: corev1.ServiceStatus{LoadBalancer: s.Status.LoadBalancer},
	}
	out.Labels = nil
	for _, k := range []string{LabelServiceProxyName, corev1.IsHeadlessService} {
		if v, ok := s.Labels[k]; ok {
			if out.Labels == nil {
				out.Labels = map[string]string{}
			}
			out.Labels[k] = v
		}
	}
	// The EndpointSlice controller applies the selector; the proxy reads its slices.
	out.Spec.Selector = nil
	out.CreationTimestamp = s.CreationTimestamp
	return out
}
