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
	Nodes  map[string]*ClusterNode
	byNode map[string]*nodePods
	// peerSets memoises the shared peer sets of policies by name: many policies name
	// the same pods (every pod of a tier, say), and each compiled policy held its own
	// copy of their thousands of entries. A pod change forgets the sets it may move
	// in or out of.
	peerSets map[string]*memoSet
}

// memoSet is a memoised peer set and the selectors that decide its members.
type memoSet struct {
	set   ipset.SetEntries
	peers []parsedPeer
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
		for _, pp := range m.peers {
			inOld, inNew := in(old, pp), in(new, pp)
			if inOld != inNew || (!labelsOnly && (inOld || inNew)) {
				delete(x.peerSets, name)
				break
			}
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

// newIndex returns an empty index.
func newIndex() *index {
	return &index{Pods: map[string]map[string]*Pod{}, Namespaces: map[string]*Namespace{}, Nodes: map[string]*ClusterNode{}, byNode: map[string]*nodePods{}}
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
	np := x.byNode[p.NodeName]
	if np == nil {
		np = &nodePods{pos: map[podRef]int{}}
		x.byNode[p.NodeName] = np
	}
	ref := podRef{p.Namespace, p.Name}
	if i, known := np.pos[ref]; !known {
		np.pos[ref] = -1
		np.sorted = nil
	} else if np.sorted != nil {
		np.sorted[i] = p
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
	np := x.byNode[p.NodeName]
	if np == nil {
		return
	}
	delete(np.pos, podRef{p.Namespace, p.Name})
	np.sorted = nil
	if len(np.pos) == 0 {
		delete(x.byNode, p.NodeName)
	}
}

// podsOnNode returns the pods scheduled to node, by namespace and then name. The
// slice is the index's own: read it before the index changes, and do not modify it.
func (x *index) podsOnNode(node string) []*Pod {
	np := x.byNode[node]
	if np == nil {
		return nil
	}
	if np.sorted == nil {
		refs := make([]podRef, 0, len(np.pos))
		for ref := range np.pos {
			refs = append(refs, ref)
		}
		slices.SortFunc(refs, func(a, b podRef) int {
			if c := strings.Compare(a.namespace, b.namespace); c != 0 {
				return c
			}
			return strings.Compare(a.name, b.name)
		})
		np.sorted = make([]*Pod, len(refs))
		for i, ref := range refs {
			np.pos[ref] = i
			np.sorted[i] = x.Pods[ref.namespace][ref.name]
		}
	}
	return np.sorted
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
