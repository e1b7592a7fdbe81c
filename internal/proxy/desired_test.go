package proxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

const thisNode = "node-a"

// testOptions allow the external IPs of the tests (203.0.113.0/24) and every
// load-balancer IP.
func testOptions() options {
	return options{Scheduler: "rr", IPRanges: config.ServiceIPRanges{External: []config.Prefix{{Prefix: netip.MustParsePrefix("203.0.113.0/24")}}}}
}

func testNode() Node {
	return Node{Name: thisNode, NodePortAddrs: addrs("192.168.1.10", "fd00::10")}
}

// service builds a ClusterIP Service ns/web with port http 80 -> named target "web".
func service(mods ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", Annotations: map[string]string{}},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
				TargetPort: intstrName("web")}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

type ep struct {
	ip          string
	node        string
	ready       *bool
	serving     *bool
	terminating *bool
	pod         string
}

// endpointSlice builds a slice of ns/web with port http -> 8080 (the named port
// "web" as the EndpointSlice controller resolves it).
func endpointSlice(family discoveryv1.AddressType, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-" + string(family), Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: family,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}
	for _, e := range eps {
		node := e.node
		if node == "" {
			node = thisNode
		}
		pod := e.pod
		if pod == "" {
			pod = "pod-" + e.ip
		}
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.ip},
			NodeName:   ptr.To(node),
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: pod},
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating},
		})
	}
	return s
}

func v4(eps ...ep) *discoveryv1.EndpointSlice {
	return endpointSlice(discoveryv1.AddressTypeIPv4, eps...)
}

// compact gives the desired-state functions slices as the daemon's cache holds them.
func compact(whole ...*discoveryv1.EndpointSlice) []*k8s.EndpointSlice {
	out := make([]*k8s.EndpointSlice, len(whole))
	for i, s := range whole {
		out[i] = k8s.CompactEndpointSlice(s)
	}
	return out
}

// render prints virtual services one per line, destinations inline, for comparisons.
func render(vss []virtualServer) string {
	var lines []string
	for _, v := range vss {
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s", v.Kind, v.Service.String())
		if v.LocalOnly {
			b.WriteString(" local")
		}
		if v.Frozen {
			b.WriteString(" frozen")
		}
		if v.DSR {
			b.WriteString(" dsr")
		}
		for _, d := range v.Destinations {
			fmt.Fprintf(&b, " -> %s w%d", d.DestKey, d.Weight)
			if d.Terminating {
				b.WriteString(" draining")
			}
		}
		lines = append(lines, b.String())
	}
	return strings.Join(lines, "\n")
}

func TestDesiredForService(t *testing.T) {
	tru, fals := ptr.To(true), ptr.To(false)
	two := []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2", node: "node-b"})}
	tests := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		// opts default to testOptions().
		opts        options
		want        string
		wantErr     string
		wantRefused string
	}{
		{
			name:   "a ClusterIP Service balances round robin over its ready endpoints on the resolved named target port",
			svc:    service(),
			slices: two,
			want:   "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1",
		},
		{
			name:   "a headless Service gets no virtual service",
			svc:    service(func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }),
			slices: two,
			want:   "",
		},
		{
			name: "a Service labelled with a service proxy name belongs to another proxy, whatever the value",
			svc: service(func(s *corev1.Service) {
				s.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": ""}
			}),
			slices: two,
			want:   "",
		},
		{
			name:   "a Service labelled headless gets no virtual service even with a ClusterIP",
			svc:    service(func(s *corev1.Service) { s.Labels = map[string]string{"service.kubernetes.io/headless": ""} }),
			slices: two,
			want:   "",
		},
		{
			name: "endpoints of a slice labelled headless are not used",
			svc:  service(),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"}), func() *discoveryv1.EndpointSlice {
				s := v4(ep{ip: "10.1.0.2"})
				s.Name, s.Labels["service.kubernetes.io/headless"] = "web-headless", ""
				return s
			}()},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1",
		},
		{
			name: "an ExternalName Service gets no virtual service",
			svc:  service(func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }),
			want: "",
		},
		{
			name: "a NodePort Service is served on the ClusterIP and on every node port address of its family",
			svc: service(func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
			}),
			slices: two,
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1\n" +
				"NodePort 192.168.1.10:30080/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1\n" +
				"NodePort [fd00::10]:30080/TCP rr",
		},
		{
			name: "external IPs and load balancer ingress IPs become virtual services, ingress with ipMode Proxy does not",
			svc: service(func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeLoadBalancer
				s.Spec.ExternalIPs = []string{"203.0.113.5"}
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
					{IP: "198.51.100.7"},
					{IP: "198.51.100.8", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)},
					{Hostname: "lb.example.com"},
				}
			}),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1\n" +
				"ExternalIP 203.0.113.5:80/TCP rr -> 10.1.0.1:8080 w1\n" +
				"LoadBalancer 198.51.100.7:80/TCP rr -> 10.1.0.1:8080 w1",
		},
		{
			name: "external IPs outside external_ip_ranges are refused, those inside are programmed",
			svc: service(func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"198.51.100.9", "203.0.113.5", "10.96.0.10"}
			}),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1\n" +
				"ExternalIP 203.0.113.5:80/TCP rr -> 10.1.0.1:8080 w1",
			wantRefused: "198.51.100.9 (ExternalIP)",
		},
		{
			name: "without external_ip_ranges no external IP is programmed, IPv6 ones included",
			svc: service(func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.5", "2001:db8::5"}
			}),
			opts:        options{Scheduler: "rr"},
			slices:      []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want:        "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1",
			wantRefused: "203.0.113.5 (ExternalIP), 2001:db8::5 (ExternalIP)",
		},
		{
			name: "loadbalancer_ip_ranges, when set, refuse ingress IPs outside them",
			svc: service(func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeLoadBalancer
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}, {IP: "192.0.2.7"}}
			}),
			opts:        options{Scheduler: "rr", IPRanges: config.ServiceIPRanges{LoadBalancer: []config.Prefix{{Prefix: netip.MustParsePrefix("198.51.100.0/24")}}}},
			slices:      []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want:        "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1\nLoadBalancer 198.51.100.7:80/TCP rr -> 10.1.0.1:8080 w1",
			wantRefused: "192.0.2.7 (LoadBalancer)",
		},
		{
			name: "load balancer ingress IPs are ignored unless the Service is of type LoadBalancer",
			svc: service(func(s *corev1.Service) {
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}}
			}),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want:   "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1",
		},
		{
			name: "each port of a multi-port Service with TCP, UDP and SCTP gets its own virtual service and endpoint port",
			svc: service(func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{
					{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
					{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53},
					{Name: "sig", Protocol: corev1.ProtocolSCTP, Port: 3868},
				}
			}),
			slices: []*discoveryv1.EndpointSlice{{
				ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-x"},
				AddressType: discoveryv1.AddressTypeIPv4,
				Ports: []discoveryv1.EndpointPort{
					{Name: ptr.To("dns"), Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To[int32](5353)},
					{Name: ptr.To("dns-tcp"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](5354)},
					{Name: ptr.To("sig"), Protocol: ptr.To(corev1.ProtocolSCTP), Port: ptr.To[int32](3869)},
				},
				Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.1"}}},
			}},
			want: "ClusterIP 10.96.0.10:53/UDP rr -> 10.1.0.1:5353 w1\n" +
				"ClusterIP 10.96.0.10:53/TCP rr -> 10.1.0.1:5354 w1\n" +
				"ClusterIP 10.96.0.10:3868/SCTP rr -> 10.1.0.1:3869 w1",
		},
		{
			name: "an unsupported protocol skips that port with an error and keeps the others",
			svc: service(func(s *corev1.Service) {
				s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "odd", Protocol: "ICMP", Port: 1})
			}),
			slices:  two,
			want:    "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1",
			wantErr: `port "odd": unsupported protocol "ICMP"`,
		},
		{
			name:    "an unparsable external IP is skipped with an error",
			svc:     service(func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"not-an-ip"} }),
			slices:  two,
			want:    "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1",
			wantErr: `ExternalIP address "not-an-ip"`,
		},
		{
			name: "endpoints that are not ready and not terminating do not serve",
			svc:  service(),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2", ready: fals},
				ep{ip: "10.1.0.3", ready: fals, serving: fals})},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1",
		},
		{
			name: "terminating endpoints are drained with weight 0 while a ready endpoint serves",
			svc:  service(),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"},
				ep{ip: "10.1.0.2", ready: fals, serving: tru, terminating: tru},
				ep{ip: "10.1.0.3", ready: fals, serving: fals, terminating: tru})},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w0 draining -> 10.1.0.3:8080 w0 draining",
		},
		{
			name: "when no endpoint is ready, serving terminating endpoints keep serving and the others drain",
			svc:  service(),
			slices: []*discoveryv1.EndpointSlice{v4(
				ep{ip: "10.1.0.2", ready: fals, serving: tru, terminating: tru},
				ep{ip: "10.1.0.3", ready: fals, serving: fals, terminating: tru})},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.2:8080 w1 -> 10.1.0.3:8080 w0 draining",
		},
		{
			name: "an endpoint listed in two slices counts once, as ready if either says so",
			svc:  service(),
			slices: []*discoveryv1.EndpointSlice{
				v4(ep{ip: "10.1.0.1", ready: fals, terminating: tru}),
				v4(ep{ip: "10.1.0.1"}),
			},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1",
		},
		{
			name: "externalTrafficPolicy Local keeps only local endpoints for external kinds, the ClusterIP keeps all",
			svc: service(func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				s.Spec.ExternalIPs = []string{"203.0.113.5"}
			}),
			slices: two,
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1\n" +
				"ExternalIP 203.0.113.5:80/TCP rr local -> 10.1.0.1:8080 w1\n" +
				"NodePort 192.168.1.10:30080/TCP rr local -> 10.1.0.1:8080 w1\n" +
				"NodePort [fd00::10]:30080/TCP rr local",
		},
		{
			name: "externalTrafficPolicy Local with no local endpoint leaves the virtual service without destinations",
			svc: service(func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.5"}
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			}),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.2", node: "node-b"})},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.2:8080 w1\n" +
				"ExternalIP 203.0.113.5:80/TCP rr local",
		},
		{
			name: "the service.local annotation forces externalTrafficPolicy Local: external kinds keep only local endpoints, the ClusterIP all",
			svc: service(func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalIPs = []string{"203.0.113.5"}
				s.Annotations["kube-router.io/service.local"] = "true"
			}),
			slices: two,
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1\n" +
				"ExternalIP 203.0.113.5:80/TCP rr local -> 10.1.0.1:8080 w1\n" +
				"NodePort 192.168.1.10:30080/TCP rr local -> 10.1.0.1:8080 w1\n" +
				"NodePort [fd00::10]:30080/TCP rr local",
		},
		{
			name: "service.local false leaves externalTrafficPolicy Cluster as it is",
			svc: service(func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.5"}
				s.Annotations["kube-router.io/service.local"] = "false"
			}),
			slices: two,
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1\n" +
				"ExternalIP 203.0.113.5:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1",
		},
		{
			name: "a malformed service.local annotation is reported and ignored, the Service keeps working",
			svc: service(func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.5"}
				s.Annotations["kube-router.io/service.local"] = "yes"
			}),
			slices: two,
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1\n" +
				"ExternalIP 203.0.113.5:80/TCP rr -> 10.1.0.1:8080 w1 -> 10.1.0.2:8080 w1",
			wantErr: `annotation kube-router.io/service.local: "yes" is neither true nor false`,
		},
		{
			name: "internalTrafficPolicy Local keeps only local endpoints for the ClusterIP",
			svc: service(func(s *corev1.Service) {
				s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
			}),
			slices: two,
			want:   "ClusterIP 10.96.0.10:80/TCP rr local -> 10.1.0.1:8080 w1",
		},
		{
			name: "sessionAffinity ClientIP makes the virtual service persistent for timeoutSeconds",
			svc: service(func(s *corev1.Service) {
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
			}),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want:   "ClusterIP 10.96.0.10:80/TCP rr persistent 60s -> 10.1.0.1:8080 w1",
		},
		{
			name:   "sessionAffinity ClientIP without a timeout uses the Kubernetes default of 3 hours",
			svc:    service(func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP }),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want:   "ClusterIP 10.96.0.10:80/TCP rr persistent 10800s -> 10.1.0.1:8080 w1",
		},
		{
			name: "the scheduler annotation and scheduler flags choose source hashing with fallback",
			svc: service(func(s *corev1.Service) {
				s.Annotations[annotationScheduler] = "sh"
				s.Annotations[annotationSchedFlags] = "flag-1,flag-2"
			}),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want:   "ClusterIP 10.96.0.10:80/TCP sh flag-1 flag-2 -> 10.1.0.1:8080 w1",
		},
		{
			name: "weighted round robin takes weights by pod name or endpoint address, others weigh 1",
			svc: service(func(s *corev1.Service) {
				s.Annotations[annotationScheduler] = "wrr"
				s.Annotations[annotationWeights] = "big=5, 10.1.0.2=3"
			}),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1", pod: "big"}, ep{ip: "10.1.0.2"}, ep{ip: "10.1.0.3"})},
			want:   "ClusterIP 10.96.0.10:80/TCP wrr -> 10.1.0.1:8080 w5 -> 10.1.0.2:8080 w3 -> 10.1.0.3:8080 w1",
		},
		{
			name:    "an unknown scheduler in the annotation freezes the Service's virtual services with an error",
			svc:     service(func(s *corev1.Service) { s.Annotations[annotationScheduler] = "fastest" }),
			slices:  two,
			want:    "ClusterIP 10.96.0.10:80/TCP  frozen",
			wantErr: `unknown IPVS scheduler "fastest"`,
		},
		{
			name:    "a malformed weights annotation freezes the Service's virtual services with an error",
			svc:     service(func(s *corev1.Service) { s.Annotations[annotationWeights] = "big=lots" }),
			slices:  two,
			want:    "ClusterIP 10.96.0.10:80/TCP  frozen",
			wantErr: `malformed item "big=lots"`,
		},
		{
			name: "a dual-stack Service gets an IPv4 and an IPv6 virtual service, each with endpoints of its family",
			svc: service(func(s *corev1.Service) {
				s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
			}),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"}),
				endpointSlice(discoveryv1.AddressTypeIPv6, ep{ip: "fd00:1::1"})},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1\n" +
				"ClusterIP [fd00:96::10]:80/TCP rr -> [fd00:1::1]:8080 w1",
		},
		{
			name: "addresses that are not IPs are skipped, mapped ones unmapped",
			svc:  service(),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.01"}, ep{ip: "::ffff:10.1.0.2"}, ep{ip: "fd00:1::1"}),
				endpointSlice(discoveryv1.AddressTypeFQDN, ep{ip: "web.example"})},
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.2:8080 w1",
		},
		{
			name:   "a slice port with another name or protocol does not match the Service port",
			svc:    service(func(s *corev1.Service) { s.Spec.Ports[0].Protocol = corev1.ProtocolUDP }),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want:   "ClusterIP 10.96.0.10:80/UDP rr",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			if opts.Scheduler == "" {
				opts = testOptions()
			}
			got, refused, err := desiredForService(tt.svc, compact(tt.slices...), testNode(), opts)
			if r := strings.Join(refusedStrings(refused), ", "); r != tt.wantRefused {
				t.Errorf("refused %q, want %q", r, tt.wantRefused)
			}
			if tt.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
			if r := render(got); r != tt.want {
				t.Errorf("got\n%s\nwant\n%s", r, tt.want)
			}
		})
	}
}

func TestLoadBalancerSourceRanges(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.0.2.50"), netip.MustParseAddr("2001:db8::50")
	for _, tc := range []struct {
		name       string
		spec       []string
		annotation string
		want4      []string
		restrict4  bool
		restrict6  bool
		errors     int
	}{
		{name: "none: every client", restrict4: false},
		{name: "the field, per family", spec: []string{"10.0.0.0/8", "2001:db8:1::/48"}, want4: []string{"10.0.0.0/8"}, restrict4: true, restrict6: true},
		{name: "ranges of one family leave the other open, as in kube-proxy", spec: []string{"10.0.0.1/8"}, want4: []string{"10.0.0.0/8"}, restrict4: true},
		{name: "the annotation when the field is empty", annotation: "10.0.0.0/8, 172.16.0.0/12", want4: []string{"10.0.0.0/8", "172.16.0.0/12"}, restrict4: true},
		{name: "the field wins over the annotation", spec: []string{"10.0.0.0/8"}, annotation: "172.16.0.0/12", want4: []string{"10.0.0.0/8"}, restrict4: true},
		{name: "a malformed entry is reported and left out", spec: []string{"10.0.0.0/8", "nonsense"}, want4: []string{"10.0.0.0/8"}, restrict4: true, errors: 1},
		{name: "only malformed entries admit nobody", annotation: "nonsense", restrict4: true, restrict6: true, errors: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := &corev1.Service{Spec: corev1.ServiceSpec{LoadBalancerSourceRanges: tc.spec}}
			if tc.annotation != "" {
				svc.Annotations = map[string]string{annotationSourceRanges: tc.annotation}
			}
			r, errs := loadBalancerSourceRanges(svc)
			if len(errs) != tc.errors {
				t.Errorf("errors %v, want %d", errs, tc.errors)
			}
			got4, restrict4 := r.forAddr(v4)
			_, restrict6 := r.forAddr(v6)
			var got []string
			for _, p := range got4 {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tc.want4) || restrict4 != tc.restrict4 || restrict6 != tc.restrict6 {
				t.Errorf("IPv4 %v restricted %v, IPv6 restricted %v; want %v %v %v", got, restrict4, restrict6, tc.want4, tc.restrict4, tc.restrict6)
			}
		})
	}
}

func TestTopologyHints(t *testing.T) {
	zones := func(z ...string) *discoveryv1.EndpointHints {
		h := &discoveryv1.EndpointHints{}
		for _, n := range z {
			h.ForZones = append(h.ForZones, discoveryv1.ForZone{Name: n})
		}
		return h
	}
	nodes := func(h *discoveryv1.EndpointHints, n ...string) *discoveryv1.EndpointHints {
		for _, name := range n {
			h.ForNodes = append(h.ForNodes, discoveryv1.ForNode{Name: name})
		}
		return h
	}
	type ep struct {
		ip    string
		hints *discoveryv1.EndpointHints
		ready bool
	}
	here := Node{Name: thisNode, Zone: "a"}
	for _, tc := range []struct {
		name      string
		node      Node
		localOnly bool
		eps       []ep
		want      []string
	}{
		{"zone hints: this zone's endpoints only", here,
			false, []ep{{"10.0.0.1", zones("a"), true}, {"10.0.0.2", zones("b"), true}, {"10.0.0.3", zones("a", "b"), true}}, []string{"10.0.0.1", "10.0.0.3"}},
		{"an endpoint without hints: all of them", here,
			false, []ep{{"10.0.0.1", zones("a"), true}, {"10.0.0.2", nil, true}}, []string{"10.0.0.1", "10.0.0.2"}},
		{"no endpoint for this zone: all of them", here,
			false, []ep{{"10.0.0.1", zones("b"), true}, {"10.0.0.2", zones("c"), true}}, []string{"10.0.0.1", "10.0.0.2"}},
		{"a node without a zone label ignores zone hints", Node{Name: thisNode},
			false, []ep{{"10.0.0.1", zones(""), true}, {"10.0.0.2", zones("b"), true}}, []string{"10.0.0.1", "10.0.0.2"}},
		{"only not-ready endpoints carry the missing hints: they do not count", here,
			false, []ep{{"10.0.0.1", zones("a"), true}, {"10.0.0.2", zones("b"), true}, {"10.0.0.3", nil, false}}, []string{"10.0.0.1"}},
		{"node hints before zone hints", here,
			false, []ep{{"10.0.0.1", nodes(zones("a"), "other"), true}, {"10.0.0.2", nodes(zones("a"), thisNode), true}}, []string{"10.0.0.2"}},
		{"node hints for other nodes only: zone hints", here,
			false, []ep{{"10.0.0.1", nodes(zones("a"), "other"), true}, {"10.0.0.2", nodes(zones("b"), "another"), true}}, []string{"10.0.0.1"}},
		{"a local traffic policy ignores hints", here,
			true, []ep{{"10.0.0.1", zones("b"), true}, {"10.0.0.2", zones("a"), true}}, []string{"10.0.0.1", "10.0.0.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slice := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4,
				Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}}}
			for _, e := range tc.eps {
				slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.ip}, NodeName: ptr.To(thisNode),
					Hints: e.hints, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready)}})
			}
			sp := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}
			var got []string
			for _, d := range destinations(sp, true, compact(slice), tc.node, tc.localOnly, nil) {
				got = append(got, d.Addr.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("destinations %v, want %v", got, tc.want)
			}
		})
	}
}
