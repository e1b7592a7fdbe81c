package netpol

import (
	"encoding/json"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
)

// Pod is what the policy compiler needs to know about a pod.
type Pod struct {
	Namespace   string
	Name        string
	Labels      map[string]string
	IPs         []netip.Addr
	NodeName    string
	HostNetwork bool
	// Ports are the pod's named container ports, for named ports in policies.
	Ports []NamedPort
}

// Key is "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// NamedPort is one named container port.
type NamedPort struct {
	Name     string
	Protocol corev1.Protocol
	Port     int32
}

// Namespace is what the policy compiler needs to know about a namespace.
type Namespace struct {
	Name   string
	Labels map[string]string
	// BetaIngressIsolation is set by the pre-v1 annotation asking for DefaultDeny ingress.
	BetaIngressIsolation bool
}

// BetaIsolationAnnotation is the pre-v1 namespace annotation that isolated a
// namespace's pods for ingress.
const BetaIsolationAnnotation = "net.beta.kubernetes.io/network-policy"

// Index is the compiler's view of the cluster: pods by namespace and name, and
// namespaces by name.
type Index struct {
	Pods       map[string]map[string]*Pod
	Namespaces map[string]*Namespace
}

// NewIndex returns an empty Index.
func NewIndex() *Index {
	return &Index{Pods: map[string]map[string]*Pod{}, Namespaces: map[string]*Namespace{}}
}

// SetPod adds or replaces a pod.
func (x *Index) SetPod(p *Pod) {
	byName := x.Pods[p.Namespace]
	if byName == nil {
		byName = map[string]*Pod{}
		x.Pods[p.Namespace] = byName
	}
	byName[p.Name] = p
}

// DeletePod removes a pod.
func (x *Index) DeletePod(namespace, name string) {
	delete(x.Pods[namespace], name)
	if len(x.Pods[namespace]) == 0 {
		delete(x.Pods, namespace)
	}
}

// Pod returns the pod namespace/name, or nil.
func (x *Index) Pod(namespace, name string) *Pod { return x.Pods[namespace][name] }

// PodFromAPI converts a Pod object. It returns nil for pods that can neither be
// policed nor be a peer: no IP yet, or finished (their IP may already be reused).
func PodFromAPI(p *corev1.Pod) *Pod {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	out := &Pod{
		Namespace:   p.Namespace,
		Name:        p.Name,
		Labels:      p.Labels,
		NodeName:    p.Spec.NodeName,
		HostNetwork: p.Spec.HostNetwork,
	}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out.IPs = append(out.IPs, a.Unmap())
		}
	}
	if len(out.IPs) == 0 {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out.IPs = append(out.IPs, a.Unmap())
		}
	}
	if len(out.IPs) == 0 {
		return nil
	}
	containers := p.Spec.Containers
	for _, c := range p.Spec.InitContainers {
		// Sidecars (restartable init containers) serve ports like regular containers.
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			containers = append(containers, c)
		}
	}
	for _, c := range containers {
		for _, port := range c.Ports {
			if port.Name == "" {
				continue
			}
			proto := port.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			out.Ports = append(out.Ports, NamedPort{Name: port.Name, Protocol: proto, Port: port.ContainerPort})
		}
	}
	return out
}

// NamespaceFromAPI converts a Namespace object. A malformed beta annotation is
// reported as an error and otherwise ignored.
func NamespaceFromAPI(ns *corev1.Namespace) (*Namespace, error) {
	out := &Namespace{Name: ns.Name, Labels: ns.Labels}
	raw, ok := ns.Annotations[BetaIsolationAnnotation]
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
