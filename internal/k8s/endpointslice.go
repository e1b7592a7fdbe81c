package k8s

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// LabelServiceProxyName names the proxy that implements a Service; kube-proxy
// ignores every Service and EndpointSlice carrying it, whatever the value.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// EndpointSlice is how the informer cache holds an EndpointSlice: the fields the
// service proxy and routing read, about 90 to 115 bytes an endpoint where a stripped
// discoveryv1.EndpointSlice cost 275 to 375 (the API's pointers, a 112-byte target
// reference, the slice's metadata and labels over a few endpoints).
//
// Cached objects are shared: never modify one.
type EndpointSlice struct {
	readOnlyMeta
	Namespace, Name string
	// ResourceVersion tells client-go an update from a resync of the same object.
	ResourceVersion string
	// ServiceName is the kubernetes.io/service-name label: the Service the slice
	// belongs to.
	ServiceName string
	// OtherProxy and Headless say the slice carries the service-proxy-name or
	// the headless label, whatever its value; the service proxy leaves such slices alone.
	OtherProxy, Headless bool
	AddressType          discoveryv1.AddressType
	// Ports are shared by every slice with the same ports: compare them, never
	// write to them.
	Ports     []EndpointPort
	Endpoints []Endpoint

	// ports keeps the interned Ports alive while this slice holds them.
	ports *[]EndpointPort
}

// EndpointPort is one port of a slice with the API's defaults applied: an unset
// name is "", an unset protocol TCP. Ports without a number (all ports) are left
// out, as no Service port maps to them.
type EndpointPort struct {
	Name     string
	Protocol corev1.Protocol
	Port     int32
}

// Endpoint is one endpoint of a slice, 64 bytes.
type Endpoint struct {
	// Addr is the first address, unmapped; it is not valid when the endpoint has no
	// address or the address does not parse (see UnparsableAddr).
	Addr netip.Addr
	// NodeName is shared by every endpoint on the node; nil when unset.
	NodeName *string
	// TargetName is the name of the target (a pod): the weights annotation names pods.
	TargetName string
	// Hints are shared by every endpoint with the same hints; nil when there are none.
	Hints *discoveryv1.EndpointHints
	// The conditions with the API's defaults applied: unset Ready is ready, unset
	// Serving is Ready's value, unset Terminating is not terminating.
	Ready, Serving, Terminating bool
	// UnparsableAddr is set when the first address is not an IP (an FQDN slice's,
	// say): Addr is not valid, yet health checks count the endpoint.
	UnparsableAddr bool
}

// Equal reports whether two slices read the same to every controller. Node names
// and hints are interned, so equal endpoints hold the same pointers.
func (s *EndpointSlice) Equal(o *EndpointSlice) bool {
	return s.Namespace == o.Namespace && s.Name == o.Name && s.ServiceName == o.ServiceName &&
		s.OtherProxy == o.OtherProxy && s.Headless == o.Headless && s.AddressType == o.AddressType &&
		slices.Equal(s.Ports, o.Ports) && slices.Equal(s.Endpoints, o.Endpoints)
}

// UnchangedEndpointSlice reports whether an update left a cached slice reading the
// same to every controller. Many updates change only what the cache drops (the
// trigger-time annotation, the resource version), and resyncs change nothing.
func UnchangedEndpointSlice(old, updated any) bool {
	o, oldCompact := old.(*EndpointSlice)
	n, newCompact := updated.(*EndpointSlice)
	return oldCompact && newCompact && o.Equal(n)
}

// CachedEndpointSlice returns a cached object as a compact slice: the daemon's
// informers hold compact ones, tests that feed informers directly whole ones. It is
// nil for any other object.
func CachedEndpointSlice(obj any) *EndpointSlice {
	switch o := obj.(type) {
	case *EndpointSlice:
		return o
	case *discoveryv1.EndpointSlice:
		return CompactEndpointSlice(o)
	}
	return nil
}

// CompactEndpointSlice returns the cache's form of s.
func CompactEndpointSlice(s *discoveryv1.EndpointSlice) *EndpointSlice {
	_, otherProxy := s.Labels[LabelServiceProxyName]
	_, headless := s.Labels[corev1.IsHeadlessService]
	out := &EndpointSlice{
		Namespace:       s.Namespace,
		Name:            s.Name,
		ResourceVersion: s.ResourceVersion,
		ServiceName:     s.Labels[discoveryv1.LabelServiceName],
		OtherProxy:      otherProxy,
		Headless:        headless,
		AddressType:     knownAddressType(s.AddressType),
		Endpoints:       make([]Endpoint, len(s.Endpoints)),
	}
	out.ports = internPorts(s.Ports)
	out.Ports = *out.ports
	for i, ep := range s.Endpoints {
		c := ep.Conditions
		ready := c.Ready == nil || *c.Ready
		kept := Endpoint{
			NodeName:    internString(ep.NodeName),
			Hints:       internHints(ep.Hints),
			Ready:       ready,
			Serving:     ready,
			Terminating: c.Terminating != nil && *c.Terminating,
		}
		if c.Serving != nil {
			kept.Serving = *c.Serving
		}
		if len(ep.Addresses) > 0 {
			if a, err := netip.ParseAddr(ep.Addresses[0]); err == nil {
				kept.Addr = a.Unmap()
			} else {
				kept.UnparsableAddr = true
			}
		}
		if ep.TargetRef != nil {
			kept.TargetName = ep.TargetRef.Name
		}
		out.Endpoints[i] = kept
	}
	return out
}

// knownAddressType returns the API's constant for the address types it defines, so
// slices do not each hold a copy of the text.
func knownAddressType(t discoveryv1.AddressType) discoveryv1.AddressType {
	for _, known := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN} {
		if t == known {
			return known
		}
	}
	return t
}

// endpointPorts holds the port lists of slices: most Services of a cluster expose
// the same few.
var endpointPorts internTable[string, []EndpointPort]

// internPorts returns the shared list of ports.
func internPorts(ports []discoveryv1.EndpointPort) *[]EndpointPort {
	list := make([]EndpointPort, 0, len(ports))
	for _, p := range ports {
		if p.Port == nil {
			continue
		}
		kept := EndpointPort{Protocol: corev1.ProtocolTCP, Port: *p.Port}
		if p.Name != nil {
			kept.Name = *p.Name
		}
		if p.Protocol != nil {
			kept.Protocol = *p.Protocol
		}
		list = append(list, kept)
	}
	// Port names and protocols cannot hold NUL, so NUL separates them.
	var b strings.Builder
	for _, p := range list {
		b.WriteString(p.Name)
		b.WriteByte(0)
		b.WriteString(string(p.Protocol))
		b.WriteByte(0)
		b.WriteString(strconv.Itoa(int(p.Port)))
		b.WriteByte(0)
	}
	return endpointPorts.get(b.String(), nil, func() *[]EndpointPort { return &list })
}

// endpointHints holds the hints of endpoints: one per zone (or node) hinted.
var endpointHints internTable[string, discoveryv1.EndpointHints]

// internHints returns the shared copy of h; hints naming no zone and no node read
// as none, so they are nil.
func internHints(h *discoveryv1.EndpointHints) *discoveryv1.EndpointHints {
	if h == nil || len(h.ForZones) == 0 && len(h.ForNodes) == 0 {
		return nil
	}
	// Zone and node names cannot hold NUL, so NUL ends each; z and n tell them apart.
	var b strings.Builder
	for _, z := range h.ForZones {
		b.WriteString("z" + z.Name + "\x00")
	}
	for _, n := range h.ForNodes {
		b.WriteString("n" + n.Name + "\x00")
	}
	return endpointHints.get(b.String(), nil, func() *discoveryv1.EndpointHints {
		c := &discoveryv1.EndpointHints{}
		for _, z := range h.ForZones {
			c.ForZones = append(c.ForZones, discoveryv1.ForZone{Name: z.Name})
		}
		for _, n := range h.ForNodes {
			c.ForNodes = append(c.ForNodes, discoveryv1.ForNode{Name: n.Name})
		}
		return c
	})
}
