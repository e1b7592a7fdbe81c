package proxy

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
)

// FuzzDesiredForService feeds arbitrary annotations, addresses and ports of a Service
// to the proxy's desired state. It must not panic; a Service with a bad annotation is
// frozen (the kernel keeps what it had, no new destinations); everything else it
// returns is well formed.
func FuzzDesiredForService(f *testing.F) {
	for _, s := range []struct {
		scheduler, flags, weights, clusterIP, externalIP, proto string
		port, nodePort                                          int32
	}{
		{"rr", "flag-1", "10.1.0.1=5", "10.96.0.10", "192.0.2.10", "TCP", 80, 30080},
		{"mh", "flag-1,flag-2", "10.1.0.1=0,10.1.0.2=65535", "fd00::10", "", "UDP", 53, 0},
		{"nope", "flag-9", "=1", "10.96.0.10", "::ffff:10.96.0.10", "SCTP", 0, 65535},
		{"wrr", "", "10.1.0.1=65536,x", "None", "300.1.1.1", "ICMP", -1, -1},
		{"", ",", "a=b=c", "", "fe80::1%eth0", "", 65535, 70000},
	} {
		f.Add(s.scheduler, s.flags, s.weights, s.clusterIP, s.externalIP, s.proto, s.port, s.nodePort)
	}
	node := Node{Name: "self", NodePortAddrs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}}
	opts := options{Scheduler: "rr", IPRanges: config.ServiceIPRanges{External: []config.Prefix{{Prefix: netip.MustParsePrefix("192.0.2.0/24")}}}}
	f.Fuzz(func(t *testing.T, scheduler, flags, weights, clusterIP, externalIP, proto string, port, nodePort int32) {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "svc", Annotations: map[string]string{
				annotationScheduler: scheduler, annotationSchedFlags: flags, annotationWeights: weights,
			}},
			Spec: corev1.ServiceSpec{
				Type:        corev1.ServiceTypeLoadBalancer,
				ClusterIP:   clusterIP,
				ClusterIPs:  []string{clusterIP},
				ExternalIPs: []string{externalIP},
				Ports: []corev1.ServicePort{
					{Name: "p", Protocol: corev1.Protocol(proto), Port: port, NodePort: nodePort},
					{Name: "q", Protocol: corev1.ProtocolTCP, Port: 443},
				},
			},
		}
		tcp := corev1.ProtocolTCP
		protocol := corev1.Protocol(proto)
		ready := true
		local := "self"
		name := "p"
		// The API server only admits slice addresses of the slice's family, so the
		// fuzzed addresses go into the slice they fit.
		slices := []*discoveryv1.EndpointSlice{}
		for _, family := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
			slice := &discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "svc-" + string(family)},
				AddressType: family,
				Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &protocol, Port: &port}, {Protocol: &tcp, Port: &nodePort}},
			}
			for i, s := range []string{"10.1.0.1", "fd00:1::1", externalIP, clusterIP} {
				a, err := netip.ParseAddr(s)
				if err != nil || a.Zone() != "" || a.Is4In6() || a.Is4() != (family == discoveryv1.AddressTypeIPv4) {
					continue
				}
				ep := discoveryv1.Endpoint{Addresses: []string{s}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
				if i%2 == 0 {
					ep.NodeName = &local
				}
				slice.Endpoints = append(slice.Endpoints, ep)
			}
			slices = append(slices, slice)
		}
		got, refused, err := desiredForService(svc, compact(slices...), node, opts)
		if _, settingsErr := decodeSettings(svc, opts); settingsErr != nil {
			if err == nil {
				t.Fatalf("invalid annotations (%v) but no error", settingsErr)
			}
			for _, vs := range got {
				if !vs.Frozen || len(vs.Destinations) != 0 || vs.Scheduler != "" {
					t.Fatalf("Service with invalid annotations programs %+v", vs)
				}
			}
			return
		}
		for _, r := range refused {
			if r.Kind != ExternalIP && r.Kind != LoadBalancerIP {
				t.Fatalf("refused %s, only external and load-balancer IPs can be", r)
			}
		}
		for _, vs := range got {
			if vs.Frozen {
				t.Fatalf("frozen virtual service without an annotation problem: %+v", vs)
			}
			if !vs.Key.Addr.IsValid() || vs.Key.Addr.Is4In6() || vs.Key.Addr.Zone() != "" {
				t.Fatalf("virtual service with a bad address: %+v", vs)
			}
			if !config.IPVSSchedulers[vs.Scheduler] {
				t.Fatalf("unknown scheduler %q programmed", vs.Scheduler)
			}
			for _, d := range vs.Destinations {
				if d.Addr.Is4() != vs.Key.Addr.Is4() || d.Weight < 0 || d.Weight > 65535 {
					t.Fatalf("bad destination %+v of %+v", d, vs)
				}
			}
		}
	})
}
