package k8s

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pod is how the informer cache holds a pod: the fields network policy reads, about
// 200 bytes where even a stripped corev1.Pod costs 2.5 KB. At the 150,000 pods of
// Kubernetes' envelope the difference is most of the daemon's memory. The policy
// controller's model points at these same objects, so a pod is held once.
//
// Cached objects are shared: never modify one.
type Pod struct {
	Namespace, Name string
	// Labels are shared by every pod with the same labels (the replicas of a
	// workload): compare them, never write to them.
	Labels      map[string]string
	NodeName    string
	HostNetwork bool
	// Finished pods (Succeeded or Failed) no longer own their addresses.
	Finished bool
	// IPs are status.podIPs (else status.podIP), unmapped; unparsable ones are left out.
	IPs []netip.Addr
	// ipTexts are IPs as text, made once: every set that lists the pod shares them.
	ipTexts []string
	// Ports are the named ports of the containers and sidecars (restartable init
	// containers), in order, for named ports in policies.
	Ports []NamedPort

	// labelsOwner keeps the interned Labels alive while this pod holds them.
	labelsOwner *labelSet
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
	if i < len(p.ipTexts) {
		return p.ipTexts[i]
	}
	return p.IPs[i].String()
}

// GetObjectMeta gives client-go's key functions (meta.Accessor) the pod's identity.
func (p *Pod) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels}
}

// Equal reports whether two pods read the same to every controller.
func (p *Pod) Equal(o *Pod) bool {
	return p.Namespace == o.Namespace && p.Name == o.Name && p.NodeName == o.NodeName &&
		p.HostNetwork == o.HostNetwork && p.Finished == o.Finished &&
		slices.Equal(p.IPs, o.IPs) && slices.Equal(p.Ports, o.Ports) && maps.Equal(p.Labels, o.Labels)
}

// CompactPod returns the cache's form of p.
func CompactPod(p *corev1.Pod) *Pod {
	out := &Pod{
		Namespace:   p.Namespace,
		Name:        p.Name,
		NodeName:    p.Spec.NodeName,
		HostNetwork: p.Spec.HostNetwork,
		Finished:    p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
	}
	out.Labels, out.labelsOwner = internLabels(p.Labels)
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
	for _, ip := range out.IPs {
		out.ipTexts = append(out.ipTexts, ip.String())
	}
	collect := func(c corev1.Container) {
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
	for _, c := range p.Spec.Containers {
		collect(c)
	}
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			collect(c)
		}
	}
	return out
}

// labelSet is one interned set of labels.
type labelSet struct{ labels map[string]string }

// podLabels interns pods' label sets: the replicas of a Deployment carry the same
// labels, and one map for all of them saves about 400 bytes a pod.
var podLabels internTable[labelSet]

// internLabels returns the shared copy of labels and the set that owns it.
func internLabels(labels map[string]string) (map[string]string, *labelSet) {
	if len(labels) == 0 {
		return nil, nil
	}
	s := podLabels.get(labelsKey(labels), func() *labelSet {
		// A copy: the caller's map is the caller's to change.
		return &labelSet{labels: maps.Clone(labels)}
	})
	return s.labels, s
}

// labelsKey is a canonical form of a label set. Keys and values cannot hold NUL.
func labelsKey(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(labels[k])
		b.WriteByte(0)
	}
	return b.String()
}
