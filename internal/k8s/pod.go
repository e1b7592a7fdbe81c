package k8s

import (
	"hash/maphash"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Pod is how the informer cache holds a pod: the fields network policy reads, about
// 200 bytes where even a stripped corev1.Pod costs 2.5 KB. At the 150,000 pods of
// Kubernetes' envelope the difference is most of the daemon's memory. The policy
// controller's model points at these same objects, so a pod is held once.
//
// Cached objects are shared: never modify one.
type Pod struct {
	readOnlyMeta
	Namespace, Name string
	// ResourceVersion tells client-go an update from a resync of the same object.
	ResourceVersion string
	// Labels are shared by every pod with the same labels (the replicas of a
	// workload): compare them, never write to them.
	Labels      map[string]string
	NodeName    string
	HostNetwork bool
	// Finished pods (Succeeded or Failed) no longer own their addresses.
	Finished bool
	// IPs are status.podIPs (else status.podIP), unmapped; unparsable ones are left out.
	IPs []netip.Addr
	// ipText is IPs as text, joined by commas, made once: every set that lists the
	// pod shares its bytes. One string, not a slice of them: no slice header and no
	// array behind it in every cached pod.
	ipText string

	// shape holds the named ports, and keeps the interned Namespace and Labels alive
	// while this pod holds them.
	shape *podShape
}

// Ports are the named ports of the containers and sidecars (restartable init
// containers), in order, for named ports in policies. They live in the shared shape
// only: a field of their own made every cached pod a size class larger.
func (p *Pod) Ports() []NamedPort {
	if p.shape == nil {
		return nil
	}
	return p.shape.ports
}

// WithPorts gives p, while it is being built, the named ports ports, and returns it.
func (p *Pod) WithPorts(ports []NamedPort) *Pod {
	p.shape = internShape(p.Namespace, p.Labels, ports)
	p.Namespace, p.Labels = p.shape.namespace, p.shape.labels
	return p
}

// NamedPort is one named container port; an empty protocol is TCP.
type NamedPort struct {
	Name     string
	Protocol corev1.Protocol
	Port     int32
}

// Key is "namespace/name", the informer cache's key.
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// IPText is IPs[i] as text.
func (p *Pod) IPText(i int) string {
	rest := p.ipText
	for range i {
		_, rest, _ = strings.Cut(rest, ",")
	}
	if text, _, _ := strings.Cut(rest, ","); text != "" {
		return text
	}
	return p.IPs[i].String()
}

// Equal reports whether two pods read the same to every controller.
func (p *Pod) Equal(o *Pod) bool {
	return p.Namespace == o.Namespace && p.Name == o.Name && p.NodeName == o.NodeName &&
		p.HostNetwork == o.HostNetwork && p.Finished == o.Finished &&
		slices.Equal(p.IPs, o.IPs) && slices.Equal(p.Ports(), o.Ports()) && maps.Equal(p.Labels, o.Labels)
}

// CompactPod returns the cache's form of p.
func CompactPod(p *corev1.Pod) *Pod {
	out := &Pod{
		Name:            p.Name,
		ResourceVersion: p.ResourceVersion,
		NodeName:        p.Spec.NodeName,
		HostNetwork:     p.Spec.HostNetwork,
		Finished:        p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
	}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out.IPs = append(out.IPs, a.Unmap())
		}
	}
	if len(out.IPs) == 0 {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out.IPs = []netip.Addr{a.Unmap()}
		}
	}
	switch len(out.IPs) {
	case 0:
	case 1:
		out.ipText = out.IPs[0].String()
	default:
		texts := make([]string, len(out.IPs))
		for i, ip := range out.IPs {
			texts[i] = ip.String()
		}
		out.ipText = strings.Join(texts, ",")
	}
	out.Namespace, out.Labels = p.Namespace, p.Labels
	return out.WithPorts(namedPorts(p.Spec))
}

// namedPorts lists the named ports of the containers and sidecars of spec.
func namedPorts(spec corev1.PodSpec) []NamedPort {
	var ports []NamedPort
	collect := func(c corev1.Container) {
		for _, port := range c.Ports {
			if port.Name == "" {
				continue
			}
			proto := port.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			ports = append(ports, NamedPort{Name: port.Name, Protocol: proto, Port: port.ContainerPort})
		}
	}
	for _, c := range spec.Containers {
		collect(c)
	}
	for _, c := range spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			collect(c)
		}
	}
	return ports
}

// podShape is what the replicas of a workload have in common: namespace, labels and
// named ports. One shared copy saves about 500 bytes a pod at the envelope's shapes.
type podShape struct {
	namespace string
	labels    map[string]string
	ports     []NamedPort
}

// podShapes is keyed by a hash of the shape: the canonical text of labels and ports
// as a key cost about 200 bytes a shape, more than the label map it stood for.
var podShapes internTable[uint64, podShape]

// shapeSeed keys the hashes of this process: whoever chooses labels cannot choose
// collisions, and a collision would only leave a shape unshared.
var shapeSeed = maphash.MakeSeed()

// internShape returns the shared shape with these contents; the caller's values are
// copied, as they are the caller's to change.
func internShape(namespace string, labels map[string]string, ports []NamedPort) *podShape {
	fits := func(s *podShape) bool {
		return s.namespace == namespace && maps.Equal(s.labels, labels) && slices.Equal(s.ports, ports)
	}
	return podShapes.get(shapeHash(namespace, labels, ports), fits, func() *podShape {
		s := &podShape{namespace: strings.Clone(namespace), ports: slices.Clip(ports)}
		if len(labels) > 0 {
			s.labels = maps.Clone(labels)
		}
		return s
	})
}

// shapeHash hashes a canonical form of a shape. Names, label keys and values cannot
// hold NUL, so NUL separates them.
func shapeHash(namespace string, labels map[string]string, ports []NamedPort) uint64 {
	var h maphash.Hash
	h.SetSeed(shapeSeed)
	h.WriteString(namespace)
	h.WriteByte(0)
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		h.WriteString(k)
		h.WriteByte(0)
		h.WriteString(labels[k])
		h.WriteByte(0)
	}
	for _, p := range ports {
		// A port's fields cannot be empty; the extra NUL ends the labels.
		h.WriteByte(0)
		h.WriteString(p.Name)
		h.WriteByte(0)
		h.WriteString(string(p.Protocol))
		h.WriteByte(0)
		maphash.WriteComparable(&h, p.Port)
	}
	return h.Sum64()
}
