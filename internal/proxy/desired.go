package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// Annotations a Service can carry to tune its IPVS virtual services.
const (
	// annotationScheduler picks the IPVS scheduler (rr, wrr, lc, dh, sh, mh, ...).
	annotationScheduler = "kube-router.io/service.scheduler"
	// annotationSchedFlags sets scheduler flags, comma separated: flag-1, flag-2, flag-3
	// (for sh and mh: fall back to another destination, hash the source port too).
	annotationSchedFlags = "kube-router.io/service.schedflags"
	// annotationWeights sets destination weights for weighted schedulers:
	// "pod-name=3,10.1.2.3=2"; a key is a pod name or an endpoint address, others get 1.
	annotationWeights = "kube-router.io/service.weights"
	// annotationSourceRanges is the older spelling of spec.loadBalancerSourceRanges,
	// comma separated, read when the field is empty (as kube-proxy does).
	annotationSourceRanges = "service.beta.kubernetes.io/load-balancer-source-ranges"
	// annotationLocal "true" forces externalTrafficPolicy Local, as in kube-router:
	// external kinds get only this node's endpoints and keep the client address.
	annotationLocal = "kube-router.io/service.local"
	// annotationDSR "tunnel" serves the external and load-balancer IPs by direct
	// server return: IPVS tunnels requests to the endpoints, which hold the IP and
	// reply to the client themselves.
	annotationDSR = "kube-router.io/service.dsr"
)

// notOurs reports whether a Service is left to another proxy or has nothing to
// proxy, as kube-proxy decides it: labelled with a proxy name
// (k8s.LabelServiceProxyName) or labelled headless, whatever the value.
func notOurs(labels map[string]string) bool {
	_, named := labels[k8s.LabelServiceProxyName]
	_, headless := labels[corev1.IsHeadlessService]
	return named || headless
}

// sliceNotOurs is notOurs for an EndpointSlice, whose two labels the cache keeps as
// flags (the EndpointSlice controller labels the slices of headless Services).
func sliceNotOurs(s *k8s.EndpointSlice) bool { return s.OtherProxy || s.Headless }

// defaultAffinityTimeout is the Kubernetes default for sessionAffinity ClientIP (3 hours).
const defaultAffinityTimeout = 10800

// Kind says which Service field a virtual service comes from.
type Kind uint8

// The kinds of virtual services a Service produces.
const (
	ClusterIP Kind = iota
	ExternalIP
	LoadBalancerIP
	NodePort
)

func (k Kind) String() string {
	return [...]string{"ClusterIP", "ExternalIP", "LoadBalancer", "NodePort"}[k]
}

// Node is what the desired state needs to know about this node.
type Node struct {
	Name string
	// Zone is the node's topology.kubernetes.io/zone label ("" when unset).
	Zone string
	// NodePortAddrs are the node addresses NodePorts are served on.
	NodePortAddrs []netip.Addr
}

// options are the configured defaults and limits.
type options struct {
	Scheduler string
	// IPRanges are where external and load-balancer IPs may be; the others are
	// refused, so a Service author cannot capture any address.
	IPRanges config.ServiceIPRanges
}

// allows reports whether an address of the given kind may be programmed.
func (o options) allows(addr netip.Addr, kind Kind) bool {
	switch kind {
	case ExternalIP:
		return o.IPRanges.AllowsExternal(addr)
	case LoadBalancerIP:
		return o.IPRanges.AllowsLoadBalancer(addr)
	}
	return true
}

// refusedAddr is an external or load-balancer IP of a Service outside the configured
// ranges: not programmed.
type refusedAddr struct {
	Addr netip.Addr
	Kind Kind
}

func (r refusedAddr) String() string { return r.Addr.String() + " (" + r.Kind.String() + ")" }

// destination is one endpoint of a virtual service.
type destination struct {
	ipvs.DestKey
	Weight int
	// Terminating endpoints are drained: weight 0, kept while connections last.
	Terminating bool
	// Local endpoints run on this node.
	Local bool
}

// virtualServer is one IPVS virtual service kube-routerd wants, with its destinations.
type virtualServer struct {
	ipvs.Service
	// Owner is the Kubernetes Service this virtual service implements.
	Owner    types.NamespacedName
	PortName string
	Kind     Kind
	// LocalOnly is set when a traffic policy Local restricts this virtual service to
	// endpoints on this node (and, for external kinds, keeps the client address).
	LocalOnly bool
	// Restricted load-balancer IPs admit only clients in SourceRanges (of their
	// family; none admits nobody): loadBalancerSourceRanges.
	Restricted   bool
	SourceRanges []netip.Prefix
	Destinations []destination // sorted by address, port
	// Frozen marks a virtual service of a Service whose settings are invalid: the
	// kernel keeps whatever it has for this key until the Service is fixed.
	Frozen bool
	// DSR virtual services reach their destinations through an IPIP tunnel; each
	// local destination's pod holds the virtual address and replies directly.
	DSR bool
}

// forward is the IPVS forwarding method of the virtual service's destinations.
func (v *virtualServer) forward() ipvs.Forward {
	if v.DSR {
		return ipvs.Tunnel
	}
	return ipvs.Masquerade
}

// OnDummy reports whether the virtual address belongs on the dummy interface (every
// kind but NodePort, which uses the node's own addresses).
func (v *virtualServer) OnDummy() bool { return v.Kind != NodePort }

// serviceSettings are the per-Service IPVS options decoded from spec and annotations.
type serviceSettings struct {
	scheduler string
	flags     uint32
	timeout   uint32
	weights   map[string]int
}

func decodeSettings(svc *corev1.Service, opts options) (serviceSettings, error) {
	s := serviceSettings{scheduler: opts.Scheduler}
	var errs []error
	if v, ok := svc.Annotations[annotationScheduler]; ok {
		if config.IPVSSchedulers[v] {
			s.scheduler = v
		} else {
			errs = append(errs, fmt.Errorf("annotation %s: unknown IPVS scheduler %q", annotationScheduler, v))
		}
	}
	if v, ok := svc.Annotations[annotationSchedFlags]; ok {
		for _, f := range strings.Split(v, ",") {
			switch strings.TrimSpace(f) {
			case "flag-1":
				s.flags |= ipvs.FlagSched1
			case "flag-2":
				s.flags |= ipvs.FlagSched2
			case "flag-3":
				s.flags |= ipvs.FlagSched3
			default:
				errs = append(errs, fmt.Errorf("annotation %s: unknown flag %q (want flag-1, flag-2 or flag-3)", annotationSchedFlags, f))
			}
		}
	}
	if v, ok := svc.Annotations[annotationWeights]; ok {
		s.weights = map[string]int{}
		for _, item := range strings.Split(v, ",") {
			name, num, found := strings.Cut(strings.TrimSpace(item), "=")
			w, err := strconv.Atoi(num)
			if !found || name == "" || err != nil || w < 0 || w > 65535 {
				errs = append(errs, fmt.Errorf("annotation %s: malformed item %q (want name=weight, weight 0-65535)", annotationWeights, item))
				continue
			}
			s.weights[name] = w
		}
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.flags |= ipvs.FlagPersistent
		s.timeout = defaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			s.timeout = uint32(*c.ClientIP.TimeoutSeconds)
		}
	}
	return s, errors.Join(errs...)
}

func protocolOf(p corev1.Protocol) (ipvs.Protocol, bool) {
	switch p {
	case corev1.ProtocolTCP, "":
		return ipvs.TCP, true
	case corev1.ProtocolUDP:
		return ipvs.UDP, true
	case corev1.ProtocolSCTP:
		return ipvs.SCTP, true
	}
	return 0, false
}

// vipAddr is one virtual address of a Service and the kind it comes from.
type vipAddr struct {
	addr netip.Addr
	kind Kind
}

// serviceAddrs returns the ClusterIPs, external IPs and load-balancer ingress IPs of
// svc, and separately those the options do not allow. Unparsable addresses are
// reported and skipped.
func serviceAddrs(svc *corev1.Service, opts options) ([]vipAddr, []refusedAddr, []error) {
	var out []vipAddr
	var refused []refusedAddr
	var errs []error
	add := func(s string, kind Kind) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s address %q: %w", kind, s, err))
			return
		}
		a = a.Unmap()
		for _, o := range out {
			if o.addr == a {
				return
			}
		}
		if !opts.allows(a, kind) {
			refused = append(refused, refusedAddr{a, kind})
			return
		}
		out = append(out, vipAddr{a, kind})
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 && svc.Spec.ClusterIP != "" {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	for _, ip := range clusterIPs {
		if ip != corev1.ClusterIPNone && ip != "" {
			add(ip, ClusterIP)
		}
	}
	for _, ip := range svc.Spec.ExternalIPs {
		add(ip, ExternalIP)
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			// With ipMode Proxy the load balancer does not keep the destination
			// address, so traffic reaches the node port instead.
			if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy) {
				continue
			}
			add(ing.IP, LoadBalancerIP)
		}
	}
	return out, refused, errs
}

// desiredForService computes the virtual services of one Service from its
// EndpointSlices, and the addresses it was refused (outside the configured ranges).
// It is pure. A Service or slice that is not ours (see notOurs) gets nothing. The
// error lists what was skipped or ignored (bad addresses, unsupported protocols, a
// malformed service.local annotation) or, for invalid IPVS settings annotations, why
// every virtual service of the Service is returned Frozen.
func desiredForService(svc *corev1.Service, epSlices []*k8s.EndpointSlice, node Node, opts options) ([]virtualServer, []refusedAddr, error) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName || notOurs(svc.Labels) {
		return nil, nil, nil
	}
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	settings, settingsErr := decodeSettings(svc, opts)
	addrs, refused, errs := serviceAddrs(svc, opts)
	externalLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	switch v, ok := svc.Annotations[annotationLocal]; {
	case !ok || v == "false":
	case v == "true":
		externalLocal = true
	default:
		errs = append(errs, fmt.Errorf("annotation %s: %q is neither true nor false, ignored", annotationLocal, v))
	}
	dsr := false
	switch v, ok := svc.Annotations[annotationDSR]; {
	case !ok:
	case v == "tunnel":
		dsr = true
	default:
		errs = append(errs, fmt.Errorf("annotation %s: %q is not \"tunnel\", served without DSR", annotationDSR, v))
	}
	ranges, rangeErrs := loadBalancerSourceRanges(svc)
	errs = append(errs, rangeErrs...)
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	hasNodePorts := svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer

	var out []virtualServer
	for _, sp := range svc.Spec.Ports {
		proto, ok := protocolOf(sp.Protocol)
		if !ok {
			errs = append(errs, fmt.Errorf("port %q: unsupported protocol %q", sp.Name, sp.Protocol))
			continue
		}
		mk := func(addr netip.Addr, port uint16, kind Kind) virtualServer {
			local := internalLocal
			if kind != ClusterIP {
				local = externalLocal
			}
			vs := virtualServer{
				Service: ipvs.Service{
					Key:       ipvs.Key{Addr: addr, Proto: proto, Port: port},
					Scheduler: settings.scheduler,
					Flags:     settings.flags,
					Timeout:   settings.timeout,
				},
				Owner:     name,
				PortName:  sp.Name,
				Kind:      kind,
				LocalOnly: local,
			}
			if kind == LoadBalancerIP {
				vs.SourceRanges, vs.Restricted = ranges.forAddr(addr)
			}
			vs.Destinations = destinations(sp, addr.Is4(), epSlices, node, local, settings.weights)
			if dsr && (kind == ExternalIP || kind == LoadBalancerIP) {
				if err := dsrRefusal(vs); err != nil {
					errs = append(errs, err)
				} else {
					vs.DSR = true
				}
			}
			return vs
		}
		for _, a := range addrs {
			out = append(out, mk(a.addr, uint16(sp.Port), a.kind))
		}
		if hasNodePorts && sp.NodePort != 0 {
			for _, a := range node.NodePortAddrs {
				out = append(out, mk(a, uint16(sp.NodePort), NodePort))
			}
		}
	}
	if settingsErr != nil {
		for i := range out {
			out[i] = virtualServer{Service: ipvs.Service{Key: out[i].Key}, Owner: name,
				PortName: out[i].PortName, Kind: out[i].Kind, LocalOnly: out[i].LocalOnly, Frozen: true,
				// The firewall is not IPVS's settings: a frozen Service stays restricted.
				Restricted: out[i].Restricted, SourceRanges: out[i].SourceRanges}
		}
		errs = append(errs, settingsErr)
	}
	return out, refused, errors.Join(errs...)
}

// dsrRefusal says why a virtual service cannot be served by DSR (it is then served
// by NAT), or nil. IPVS tunnels the packet unchanged, so the endpoint must listen on
// the Service's own port.
func dsrRefusal(vs virtualServer) error {
	for _, d := range vs.Destinations {
		if d.Port != vs.Port {
			return fmt.Errorf("annotation %s: port %q maps %d to target port %d, and DSR cannot remap ports; %s served by NAT",
				annotationDSR, vs.PortName, vs.Port, d.Port, vs.Key)
		}
	}
	return nil
}

// sourceRanges are the client networks a Service's load-balancer IPs admit.
type sourceRanges struct {
	set      bool // the Service restricts its clients
	prefixes []netip.Prefix
}

// loadBalancerSourceRanges reads spec.loadBalancerSourceRanges, or the older
// annotation when the field is empty. A malformed entry is reported and left out; a
// Service whose every entry is malformed admits no client rather than every client.
func loadBalancerSourceRanges(svc *corev1.Service) (sourceRanges, []error) {
	raw := svc.Spec.LoadBalancerSourceRanges
	if v := svc.Annotations[annotationSourceRanges]; len(raw) == 0 && v != "" {
		raw = strings.Split(v, ",")
	}
	r := sourceRanges{set: len(raw) > 0}
	var errs []error
	for _, s := range raw {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, fmt.Errorf("loadBalancerSourceRanges: %q is not a CIDR, ignored", s))
			continue
		}
		r.prefixes = append(r.prefixes, p.Masked())
	}
	return r, errs
}

// forAddr returns the ranges that restrict clients of a, and whether any do. As in
// kube-proxy, ranges given only for the other family leave a unrestricted.
func (r sourceRanges) forAddr(a netip.Addr) ([]netip.Prefix, bool) {
	if !r.set {
		return nil, false
	}
	var out []netip.Prefix
	for _, p := range r.prefixes {
		if p.Addr().Is4() == a.Is4() {
			out = append(out, p)
		}
	}
	return out, len(out) > 0 || len(r.prefixes) == 0
}

// destinations selects the endpoints of one Service port in one address family.
// Ready endpoints serve; when none is ready, serving terminating ones do (as
// kube-proxy does); other terminating endpoints are listed for draining.
func destinations(sp corev1.ServicePort, v4 bool, epSlices []*k8s.EndpointSlice, node Node, localOnly bool, weights map[string]int) []destination {
	nodeName := node.Name
	family := discoveryv1.AddressTypeIPv6
	if v4 {
		family = discoveryv1.AddressTypeIPv4
	}
	type candidate struct {
		dest             destination
		ready, servingTm bool
		hints            *discoveryv1.EndpointHints
	}
	seen := map[ipvs.DestKey]*candidate{}
	var order []ipvs.DestKey
	anyReady := false
	for _, slice := range epSlices {
		if slice.AddressType != family || sliceNotOurs(slice) {
			continue
		}
		port, ok := slicePort(slice, sp)
		if !ok {
			continue
		}
		for _, ep := range slice.Endpoints {
			if !ep.Addr.IsValid() || ep.Addr.Is4() != v4 {
				continue // the API server validates this; never mix families in IPVS
			}
			local := ep.NodeName != nil && *ep.NodeName == nodeName
			if localOnly && !local {
				continue
			}
			if !ep.Ready && !ep.Terminating {
				continue
			}
			ready := ep.Ready && !ep.Terminating
			key := ipvs.DestKey{Addr: ep.Addr, Port: port}
			c := &candidate{
				dest:      destination{DestKey: key, Weight: weightOf(ep, weights), Terminating: !ready, Local: local},
				ready:     ready,
				servingTm: ep.Terminating && ep.Serving,
				hints:     ep.Hints,
			}
			// The same endpoint can sit in two slices while they are rebalanced.
			if old, dup := seen[key]; dup {
				if old.ready || !c.ready {
					continue
				}
			} else {
				order = append(order, key)
			}
			seen[key] = c
			anyReady = anyReady || ready
		}
	}
	// Topology: a Service whose traffic may go to any node prefers this node's or
	// this zone's ready endpoints when the EndpointSlice controller hinted them
	// (trafficDistribution, topology-mode); kube-proxy's rules decide when hints count.
	var ready []*discoveryv1.EndpointHints
	for _, k := range order {
		if c := seen[k]; c.ready {
			ready = append(ready, c.hints)
		}
	}
	near := func(*discoveryv1.EndpointHints) bool { return true }
	if !localOnly {
		near = topologyFilter(ready, node)
	}
	out := make([]destination, 0, len(order))
	for _, k := range order {
		c := seen[k]
		if c.ready && !near(c.hints) {
			continue
		}
		d := c.dest
		if d.Terminating {
			if !anyReady && c.servingTm {
				d.Terminating = false
			} else {
				d.Weight = 0
			}
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b destination) int { return ipvs.CompareDestKeys(a.DestKey, b.DestKey) })
	return out
}

// topologyFilter returns which ready endpoints this node uses, given the hints of all
// of them, by kube-proxy's rules: node hints count when every ready endpoint has
// some and one names this node; otherwise zone hints count when every ready endpoint
// has some and one names this node's zone; otherwise every endpoint is used. Hints
// that would leave this node nothing never apply.
func topologyFilter(ready []*discoveryv1.EndpointHints, node Node) func(*discoveryv1.EndpointHints) bool {
	allNode, allZone, forNode, forZone := len(ready) > 0, len(ready) > 0, false, false
	for _, h := range ready {
		if h == nil || len(h.ForNodes) == 0 {
			allNode = false
		} else if slices.ContainsFunc(h.ForNodes, func(n discoveryv1.ForNode) bool { return n.Name == node.Name }) {
			forNode = true
		}
		if h == nil || len(h.ForZones) == 0 {
			allZone = false
		} else if slices.ContainsFunc(h.ForZones, func(z discoveryv1.ForZone) bool { return z.Name == node.Zone }) {
			forZone = true
		}
	}
	switch {
	case allNode && forNode:
		return func(h *discoveryv1.EndpointHints) bool {
			return h != nil && slices.ContainsFunc(h.ForNodes, func(n discoveryv1.ForNode) bool { return n.Name == node.Name })
		}
	case allZone && forZone && node.Zone != "":
		return func(h *discoveryv1.EndpointHints) bool {
			return h != nil && slices.ContainsFunc(h.ForZones, func(z discoveryv1.ForZone) bool { return z.Name == node.Zone })
		}
	}
	return func(*discoveryv1.EndpointHints) bool { return true }
}

// slicePort finds the port of a slice that serves sp: same name, same protocol. The
// EndpointSlice controller has already resolved named target ports to numbers.
func slicePort(slice *k8s.EndpointSlice, sp corev1.ServicePort) (uint16, bool) {
	for _, p := range slice.Ports {
		if p.Name == sp.Name && p.Protocol == sp.Protocol {
			return uint16(p.Port), true
		}
	}
	return 0, false
}

// weightOf returns the weight the weights annotation gives an endpoint, by address
// or by pod name (no name is empty: decodeSettings rejects those), else 1.
func weightOf(ep k8s.Endpoint, weights map[string]int) int {
	if w, ok := weights[ep.Addr.String()]; ok {
		return w
	}
	if w, ok := weights[ep.TargetName]; ok {
		return w
	}
	return 1
}
