package netpol

import (
	"net/netip"
	"slices"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// selectorParser parses a label selector: metav1.LabelSelectorAsSelector, or a
// selectorCache's parse.
type selectorParser func(*metav1.LabelSelector) (labels.Selector, error)

// selectorCache remembers the parsed selectors of cached policies by address. Deciding
// which policies a pod's change touches parsed each policy's selectors again for
// every changed pod: under a churn of 100 pod changes/s at 1,000 policies, over
// 100 MB of garbage every 10 s. A cached policy never changes, so a selector's address
// parses the same way while its policy lives (the key keeps it alive, so the address
// is not reused); reset forgets policies replaced since.
type selectorCache struct {
	parsed map[*metav1.LabelSelector]parsedSelector
}

type parsedSelector struct {
	sel labels.Selector
	err error
}

func (c *selectorCache) parse(s *metav1.LabelSelector) (labels.Selector, error) {
	if p, ok := c.parsed[s]; ok {
		return p.sel, p.err
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if c.parsed == nil {
		c.parsed = map[*metav1.LabelSelector]parsedSelector{}
	}
	c.parsed[s] = parsedSelector{sel: sel, err: err}
	return sel, err
}

func (c *selectorCache) reset() { c.parsed = nil }

// affects reports whether a pod's change from old to new (either may be nil for an
// added or deleted pod) may change what policy p compiles to. ns is the pod's
// namespace. When only the labels changed, a selector matters only if it matched
// one version of the pod but not the other.
func affects(p *networkingv1.NetworkPolicy, old, new *Pod, ns *Namespace, parse selectorParser) bool {
	pod := new
	if pod == nil {
		pod = old
	}
	if pod == nil {
		return false
	}
	if pod.Namespace != p.Namespace && !reachesOtherNamespaces(p) {
		return false // the cheap answer for most policies, without parsing selectors
	}
	labelsOnly := old != nil && new != nil && sameExceptLabels(old, new)
	var nsLabels labels.Set
	if ns != nil {
		nsLabels = ns.Labels
	}
	changed := func(matches func(*Pod) (bool, error)) bool {
		mOld, errOld := matchesPod(matches, old)
		mNew, errNew := matchesPod(matches, new)
		if errOld != nil || errNew != nil {
			return true // cannot tell: recompile
		}
		if labelsOnly {
			return mOld != mNew
		}
		return mOld || mNew
	}
	if pod.Namespace == p.Namespace && changed(func(x *Pod) (bool, error) {
		sel, err := parse(&p.Spec.PodSelector)
		return err == nil && sel.Matches(labels.Set(x.Labels)), err
	}) {
		return true
	}
	peerChanged := func(peer networkingv1.NetworkPolicyPeer) bool {
		if peer.IPBlock != nil || (labelsOnly && peer.PodSelector == nil) {
			return false // a namespace-wide peer does not care about pod labels
		}
		return changed(func(x *Pod) (bool, error) {
			if peer.NamespaceSelector == nil {
				if x.Namespace != p.Namespace {
					return false, nil
				}
			} else {
				nsSel, err := parse(peer.NamespaceSelector)
				if err != nil || !nsSel.Matches(nsLabels) {
					return false, err
				}
			}
			if peer.PodSelector == nil {
				return true, nil
			}
			sel, err := parse(peer.PodSelector)
			return err == nil && sel.Matches(labels.Set(x.Labels)), err
		})
	}
	for _, r := range p.Spec.Ingress {
		for _, peer := range r.From {
			if peerChanged(peer) {
				return true
			}
		}
	}
	for _, r := range p.Spec.Egress {
		namedPorts := hasNamedPort(r.Ports) && !labelsOnly
		if len(r.To) == 0 && namedPorts {
			return true // named ports resolve on every pod of the cluster
		}
		for _, peer := range r.To {
			if namedPorts && peer.IPBlock != nil && (inBlock(peer.IPBlock, old) || inBlock(peer.IPBlock, new)) {
				return true // named ports resolve on the pods inside the block
			}
			if peerChanged(peer) {
				return true
			}
		}
	}
	return false
}

// inBlock reports whether one of pod's addresses is in the block's CIDR (excepts
// aside: a pod in them costs a recompile, no more). A malformed CIDR holds no pod.
func inBlock(block *networkingv1.IPBlock, pod *Pod) bool {
	cidr, err := netip.ParsePrefix(block.CIDR)
	return err == nil && pod != nil && slices.ContainsFunc(pod.IPs, cidr.Contains)
}

// reachesOtherNamespaces reports whether pods outside p's namespace can change what
// p compiles to: through a namespaceSelector peer, or a named port of an egress rule
// to everyone or to an ipBlock.
func reachesOtherNamespaces(p *networkingv1.NetworkPolicy) bool {
	for _, r := range p.Spec.Ingress {
		for _, peer := range r.From {
			if peer.NamespaceSelector != nil {
				return true
			}
		}
	}
	for _, r := range p.Spec.Egress {
		if len(r.To) == 0 && hasNamedPort(r.Ports) {
			return true
		}
		for _, peer := range r.To {
			if peer.NamespaceSelector != nil || (peer.IPBlock != nil && hasNamedPort(r.Ports)) {
				return true
			}
		}
	}
	return false
}

func matchesPod(matches func(*Pod) (bool, error), p *Pod) (bool, error) {
	if p == nil {
		return false, nil
	}
	return matches(p)
}

func hasNamedPort(ports []networkingv1.NetworkPolicyPort) bool {
	for _, port := range ports {
		if port.Port != nil && port.Port.Type == intstr.String {
			return true
		}
	}
	return false
}

// sameExceptLabels reports whether two versions of a pod differ at most in labels.
func sameExceptLabels(a, b *Pod) bool {
	return a.NodeName == b.NodeName && a.HostNetwork == b.HostNetwork &&
		slices.Equal(a.IPs, b.IPs) && slices.Equal(a.Ports(), b.Ports())
}

// affectsCluster reports whether a pod's change from old to new may change what
// ClusterNetworkPolicy p compiles to: the pod is (or was) in its subject or one of
// its namespaces or pods peers. ns is the pod's namespace. Named ports resolve on
// subject pods (ingress) and peer pods (egress), so they are covered too.
func affectsCluster(p *policyv1beta1.ClusterNetworkPolicy, old, new *Pod, ns *Namespace, parse selectorParser) bool {
	labelsOnly := old != nil && new != nil && sameExceptLabels(old, new)
	var nsLabels labels.Set
	if ns != nil {
		nsLabels = ns.Labels
	}
	selects := func(nsSel, podSel *metav1.LabelSelector) bool {
		if labelsOnly && podSel == nil {
			return false // a namespace-wide selector does not care about pod labels
		}
		matches := func(x *Pod) (bool, error) {
			nsS, err := parse(nsSel)
			if err != nil || !nsS.Matches(nsLabels) {
				return false, err
			}
			if podSel == nil {
				return true, nil
			}
			s, err := parse(podSel)
			return err == nil && s.Matches(labels.Set(x.Labels)), err
		}
		mOld, errOld := matchesPod(matches, old)
		mNew, errNew := matchesPod(matches, new)
		switch {
		case errOld != nil || errNew != nil:
			return true // cannot tell: recompile
		case labelsOnly:
			return mOld != mNew
		}
		return mOld || mNew
	}
	peer := func(namespaces *metav1.LabelSelector, pods *policyv1beta1.NamespacedPod) bool {
		switch {
		case namespaces != nil:
			return selects(namespaces, nil)
		case pods != nil:
			return selects(&pods.NamespaceSelector, &pods.PodSelector)
		}
		return false
	}
	if peer(p.Spec.Subject.Namespaces, p.Spec.Subject.Pods) {
		return true
	}
	for _, r := range p.Spec.Ingress {
		for _, from := range r.From {
			if peer(from.Namespaces, from.Pods) {
				return true
			}
		}
	}
	for _, r := range p.Spec.Egress {
		for _, to := range r.To {
			if peer(to.Namespaces, to.Pods) {
				return true
			}
		}
	}
	return false
}
