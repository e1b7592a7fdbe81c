package netpol

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Details is what `kube-routerd status` shows about the policy controller.
type Details struct {
	Policies int `json:"policies"`
	// ClusterPolicies are the ClusterNetworkPolicies (0 where the CRD is not served).
	ClusterPolicies int `json:"clusterPolicies"`
	Pods            int `json:"isolatedPods"`
	Rules           int `json:"rules"`
	Sets            int `json:"sets"`
	Entries         int `json:"setEntries"`
	// EnforcedPods are the local pods in the enforced ledger (the larger family's).
	EnforcedPods int `json:"enforcedPods"`
	// Problems are by policy: "namespace/name", or "clusternetworkpolicy/name".
	Problems  map[string][]string                 `json:"problems,omitempty"`
	LastApply map[ipfamily.Family]netfilter.Stats `json:"lastApplyByFamily,omitempty"`
}

// Details implements daemon.StatusReporter.
func (c *Controller) Details() any {
	c.detailsMu.Lock()
	defer c.detailsMu.Unlock()
	return c.details
}

// Explain traces a new connection from pod src to pod dst ("namespace/name") on
// port/proto (tcp, udp or sctp) through the compiled state: this node's as it was
// last handed to the kernel, and, for a side another node enforces, the state that
// node compiles from the same objects. family 0 picks the first family both pods have.
func (c *Controller) Explain(src, dst, proto string, port int, family ipfamily.Family) (Verdict, error) {
	c.modelMu.Lock()
	defer c.modelMu.Unlock()
	srcPod, err := c.knownPod(src)
	if err != nil {
		return Verdict{}, err
	}
	dstPod, err := c.knownPod(dst)
	if err != nil {
		return Verdict{}, err
	}
	for _, fs := range c.families {
		if family != 0 && fs.opts.Family != family {
			continue
		}
		_, ok1 := fs.opts.podIP(srcPod)
		_, ok2 := fs.opts.podIP(dstPod)
		if !ok1 || !ok2 {
			continue
		}
		if fs.asm.last == nil {
			return Verdict{}, ErrNotSynced
		}
		return explainConnection(srcPod, dstPod, proto, port, fs.opts.Family, func(node, namespace string) (*compiledModel, error) {
			return c.modelOf(fs, node, namespace)
		})
	}
	return Verdict{}, fmt.Errorf("%w: %s and %s share no IP family this node serves", ErrUnknownPod, src, dst)
}

// ErrUnknownPod and ErrNotSynced are Explain's errors about its input and its state.
var (
	ErrUnknownPod = errors.New("unknown pod")
	ErrNotSynced  = errors.New("network policy has not synced yet")
)

func (c *Controller) knownPod(key string) (*Pod, error) {
	ns, name, ok := strings.Cut(key, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("%w: %q is not namespace/name", ErrUnknownPod, key)
	}
	p := c.idx.Pod(ns, name)
	if p == nil {
		return nil, fmt.Errorf("%w: %s (not found, finished, or without an IP yet)", ErrUnknownPod, key)
	}
	return p, nil
}

// modelOf returns node's compiled state in fs's family: this node's as applied, or
// another node's policies of namespace compiled here the way that node compiles them.
func (c *Controller) modelOf(fs *familyState, node, namespace string) (*compiledModel, error) {
	if node == c.opts.NodeName {
		m := &compiledModel{thisNode: true, ruleset: fs.asm.last}
		for _, key := range sortedKeys(fs.compiled) {
			m.policies = append(m.policies, fs.compiled[key])
		}
		return m, nil
	}
	policies, err := c.policies.NetworkPolicies(namespace).List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing network policies: %w", err)
	}
	o := fs.opts
	o.NodeName = node
	m := &compiledModel{}
	for _, p := range policies {
		m.policies = append(m.policies, compilePolicy(p, c.idx, o))
	}
	clusterPolicies, err := c.cluster.list()
	if err != nil {
		return nil, fmt.Errorf("listing cluster network policies: %w", err)
	}
	for _, p := range clusterPolicies {
		m.policies = append(m.policies, compileCluster(p, c.idx, o))
	}
	slices.SortFunc(m.policies, func(a, b *compiledPolicy) int { return strings.Compare(a.Key, b.Key) })
	m.ruleset = assemble(m.policies, c.idx, o)
	return m, nil
}

// Handlers implements daemon.HandlerProvider: GET /explain?src=ns/pod&dst=ns/pod&port=80/TCP
// (and &family=4 or 6) answers a Verdict in JSON.
func (c *Controller) Handlers() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{"GET /explain": c.serveExplain}
}

func (c *Controller) serveExplain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	proto, port, err := ParsePortProto(q.Get("port"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var family ipfamily.Family
	switch q.Get("family") {
	case "":
	case "4":
		family = ipfamily.IPv4
	case "6":
		family = ipfamily.IPv6
	default:
		http.Error(w, "family must be 4 or 6", http.StatusBadRequest)
		return
	}
	v, err := c.Explain(q.Get("src"), q.Get("dst"), proto, port, family)
	switch {
	case errors.Is(err, ErrUnknownPod):
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	case errors.Is(err, ErrNotSynced):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ParsePortProto reads "80/TCP", "53/udp" or "80" (TCP) into a lower-case protocol
// and a port.
func ParsePortProto(s string) (string, int, error) {
	num, proto, found := strings.Cut(s, "/")
	if !found {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	switch proto {
	case "tcp", "udp", "sctp":
	default:
		return "", 0, fmt.Errorf("protocol %q: want tcp, udp or sctp", proto)
	}
	port, err := strconv.Atoi(num)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("port %q: want a number from 1 to 65535", num)
	}
	return proto, port, nil
}
