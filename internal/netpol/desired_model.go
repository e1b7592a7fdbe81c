package netpol

import (
	"encoding/json"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// Pod is what the policy compiler knows of a pod: the informer cache's own object,
// shared, never modified.
type Pod = k8s.Pod

// NamedPort is one named container port.
type NamedPort = k8s.NamedPort

// Namespace is what the policy compiler needs to know about a namespace.
type Namespace struct {
	Name   string
	Labels map[string]string
	// BetaIngressIsolation is set by the pre-v1 annotation asking for DefaultDeny ingress.
	BetaIngressIsolation bool
}

// betaIsolationAnnotation is the pre-v1 namespace annotation that isolated a
// namespace's pods for ingress.
const betaIsolationAnnotation = "net.beta.kubernetes.io/network-policy"

// index is the compiler's view of the cluster: pods by namespace and name, and
// namespaces by name. Change pods only with SetPod and DeletePod, which also keep
// the pods of each node at hand.
type index struct {
	Pods       map[string]map[string]*Pod
	Namespaces map[string]*Namespace
	// Nodes are the cluster's nodes by name, for the nodes peers of
	// ClusterNetworkPolicies.
	Nodes map[string]*ClusterNode
	// local are the pods of the node this index serves, kept sorted at hand for
	// assembling its chains. Only that node's: a position map for every node of a
	// large cluster cost more than the pods it pointed at, and only explain asks
	// for another node, which walks the pods instead.
	localNode string
	local     nodePods
	// peerSets memoises the shared peer sets of policies by name: many policies name
	// the same pods (every pod of a tier, say), and each compiled policy held its own
	// copy of their thousands of entries. A pod change forgets the sets it may move
	// in or out of.
	peerSets map[string]*memoSet
}

// memoSet is a memoised peer set and the peer whose selectors decide its members.
type memoSet struct {
	set  ipset.SetEntries
	peer parsedPeer
}

// parsedPeer is a namespaces or pods peer with its selectors parsed. A peer of a
// NetworkPolicy without a namespace selector names its policy's namespace instead.
type parsedPeer struct {
	namespaces, pods labels.Selector
	namespace        string
}

// selects reports whether the peer selects p, which lives in namespace ns (nil if
// unknown).
func (pp parsedPeer) selects(p *Pod, ns *Namespace) bool {
	if pp.namespace != "" {
		return p.Namespace == pp.namespace && pp.pods.Matches(labels.Set(p.Labels))
	}
	return ns != nil && pp.namespaces.Matches(labels.Set(ns.Labels)) && pp.pods.Matches(labels.Set(p.Labels))
}

// forgetPeerSets drops the memoised sets whose members a pod's change from old to
// new (either may be nil) may move.
func (x *index) forgetPeerSets(old, new *Pod) {
	if len(x.peerSets) == 0 {
		return
	}
	labelsOnly := old != nil && new != nil && sameExceptLabels(old, new)
	in := func(p *Pod, pp parsedPeer) bool {
		if p == nil {
			return false
		}
		return pp.selects(p, x.Namespaces[p.Namespace])
	}
	for name, m := range x.peerSets {
		inOld, inNew := in(old, m.peer), in(new, m.peer)
		if inOld != inNew || (!labelsOnly && (inOld || inNew)) {
			delete(x.peerSets, name)
		}
	}
}

// nodePods are one node's pods, so that assembling a node's chains need not walk
// every pod of the cluster.
type nodePods struct {
	pos    map[podRef]int // index in sorted, or -1 while sorted is stale
	sorted []*Pod         // by namespace, then name; nil after a pod came or went
}

// podRef names a pod.
type podRef struct{ namespace, name string }

// newIndex returns an empty index serving localNode.
func newIndex(localNode string) *index {
	return &index{Pods: map[string]map[string]*Pod{}, Namespaces: map[string]*Namespace{}, Nodes: map[string]*ClusterNode{},
		localNode: localNode, local: nodePods{pos: map[podRef]int{}}}
}

// SetPod adds or replaces a pod.
func (x *index) SetPod(p *Pod) {
	x.forgetPeerSets(x.Pod(p.Namespace, p.Name), p)
	if old := x.Pod(p.Namespace, p.Name); old != nil && old.NodeName != p.NodeName {
		x.forgetOnNode(old)
	}
	byName := x.Pods[p.Namespace]
	if byName == nil {
		byName = map[string]*Pod{}
		x.Pods[p.Namespace] = byName
	}
	byName[p.Name] = p
	if p.NodeName != x.localNode {
		return
	}
	ref := podRef{p.Namespace, p.Name}
	if i, known := x.local.pos[ref]; !known {
		x.local.pos[ref] = -1
		x.local.sorted = nil
	} else if x.local.sorted != nil {
		x.local.sorted[i] = p
	}
}

// DeletePod removes a pod.
func (x *index) DeletePod(namespace, name string) {
	x.forgetPeerSets(x.Pod(namespace, name), nil)
	if old := x.Pod(namespace, name); old != nil {
		x.forgetOnNode(old)
	}
	delete(x.Pods[namespace], name)
	if len(x.Pods[namespace]) == 0 {
		delete(x.Pods, namespace)
	}
}

func (x *index) forgetOnNode(p *Pod) {
	if p.NodeName != x.localNode {
		return
	}
	delete(x.local.pos, podRef{p.Namespace, p.Name})
	x.local.sorted = nil
}

// podsOnNode returns the pods scheduled to node, by namespace and then name. For
// the local node the slice is the index's own: read it before the index changes,
// and do not modify it. Another node's pods are found by walking every pod.
func (x *index) podsOnNode(node string) []*Pod {
	if node != x.localNode {
		var refs []podRef
		for ns, byName := range x.Pods {
			for name, p := range byName {
				if p.NodeName == node {
					refs = append(refs, podRef{ns, name})
				}
			}
		}
		return x.sortedPods(refs)
	}
	if x.local.sorted == nil {
		refs := make([]podRef, 0, len(x.local.pos))
		for ref := range x.local.pos {
			refs = append(refs, ref)
		}
		x.local.sorted = x.sortedPods(refs)
		for i, p := range x.local.sorted {
			x.local.pos[podRef{p.Namespace, p.Name}] = i
		}
	}
	return x.local.sorted
}

// sortedPods sorts refs by namespace, then name, and returns their pods.
func (x *index) sortedPods(refs []podRef) []*Pod {
	slices.SortFunc(refs, func(a, b podRef) int {
		if c := strings.Compare(a.namespace, b.namespace); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	pods := make([]*Pod, len(refs))
	for i, ref := range refs {
		pods[i] = x.Pods[ref.namespace][ref.name]
	}
	return pods
}

// Pod returns the pod namespace/name, or nil.
func (x *index) Pod(namespace, name string) *Pod { return x.Pods[namespace][name] }

// policedPod returns the pod of a cached object (a compact pod from the daemon's
// informers, or a whole one), or nil for pods that can neither be policed nor be a
// peer: no IP yet, or finished (their IP may already be reused).
func policedPod(obj any) *Pod {
	var p *Pod
	switch o := obj.(type) {
	case *k8s.Pod:
		p = o
	case *corev1.Pod:
		p = k8s.CompactPod(o)
	default:
		return nil
	}
	if p.Finished || len(p.IPs) == 0 {
		return nil
	}
	return p
}

// namespaceFromAPI converts a Namespace object. A malformed beta annotation is
// reported as an error and otherwise ignored.
func namespaceFromAPI(ns *corev1.Namespace) (*Namespace, error) {
	out := &Namespace{Name: ns.Name, Labels: ns.Labels}
	raw, ok := ns.Annotations[betaIsolationAnnotation]
	if !ok {
		return out, nil
	}
	var beta struct {
		Ingress struct {
			Isolation string `json:"isolation"`
		} `json:"ingress"`
	}
	if err := json.Unmarshal([]byte(raw), &beta); err != nil {
		return out, err
	}
	out.BetaIngressIsolation = beta.Ingress.Isolation == "DefaultDeny"
	return out, nil
}
