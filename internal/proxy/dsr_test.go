package proxy

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
)

// dsrService is ns/web with external IP 203.0.113.5, load-balancer IP 198.51.100.7
// and node port 30080, port 80 to target port 80, annotated for DSR with value (""
// leaves the annotation out).
func dsrService(value string, mods ...func(*corev1.Service)) *corev1.Service {
	return service(append([]func(*corev1.Service){func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.ExternalIPs = []string{"203.0.113.5"}
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}}
		s.Spec.Ports[0].TargetPort = intstr.FromInt32(80)
		s.Spec.Ports[0].NodePort = 30080
		if value != "" {
			s.Annotations[annotationDSR] = value
		}
	}}, mods...)...)
}

// port80 is a v4 slice of ns/web whose endpoints listen on the Service's port 80.
func port80(eps ...ep) *discoveryv1.EndpointSlice {
	s := v4(eps...)
	*s.Ports[0].Port = 80
	return s
}

func TestDesiredDSR(t *testing.T) {
	local := []*discoveryv1.EndpointSlice{port80(ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2", node: "node-b"})}
	for _, tc := range []struct {
		name    string
		svc     *corev1.Service
		slices  []*discoveryv1.EndpointSlice
		want    string
		wantErr string
	}{
		{
			name:   "dsr tunnel serves external and load-balancer IPs by DSR, the ClusterIP and node ports by NAT",
			svc:    dsrService("tunnel"),
			slices: local,
			want: "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:80 w1 -> 10.1.0.2:80 w1\n" +
				"ExternalIP 203.0.113.5:80/TCP rr dsr -> 10.1.0.1:80 w1 -> 10.1.0.2:80 w1\n" +
				"LoadBalancer 198.51.100.7:80/TCP rr dsr -> 10.1.0.1:80 w1 -> 10.1.0.2:80 w1\n" +
				"NodePort 192.168.1.10:30080/TCP rr -> 10.1.0.1:80 w1 -> 10.1.0.2:80 w1\n" +
				"NodePort [fd00::10]:30080/TCP rr",
		},
		{
			name:    "another value is logged and the Service is served by NAT",
			svc:     dsrService("direct"),
			slices:  local,
			want:    "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:80 w1 -> 10.1.0.2:80 w1\nExternalIP 203.0.113.5:80/TCP rr -> 10.1.0.1:80 w1 -> 10.1.0.2:80 w1",
			wantErr: `annotation kube-router.io/service.dsr: "direct" is not "tunnel"`,
		},
		{
			name:    "a target port other than the port is refused: IPVS tunnels cannot remap ports",
			svc:     dsrService("tunnel"),
			slices:  []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"})},
			want:    "ClusterIP 10.96.0.10:80/TCP rr -> 10.1.0.1:8080 w1\nExternalIP 203.0.113.5:80/TCP rr -> 10.1.0.1:8080 w1",
			wantErr: `port "http" maps 80 to target port 8080, and DSR cannot remap ports; 203.0.113.5:80/TCP served by NAT`,
		},
		{
			name: "an IPv6 external IP is served by DSR too",
			svc: dsrService("tunnel", func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"2001:db8::5"}
				s.Status.LoadBalancer.Ingress = nil
			}),
			want: "ExternalIP [2001:db8::5]:80/TCP rr dsr",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions()
			opts.IPRanges.External = append(opts.IPRanges.External, opts.IPRanges.External[0])
			opts.IPRanges.External[1].Prefix = netip.MustParsePrefix("2001:db8::/64")
			vss, _, err := desiredForService(tc.svc, compact(tc.slices...), testNode(), opts)
			got := render(vss)
			for _, line := range strings.Split(tc.want, "\n") {
				if !strings.Contains(got, line) {
					t.Errorf("missing %q in\n%s", line, got)
				}
			}
			if strings.Contains(got, " dsr") != strings.Contains(tc.want, " dsr") {
				t.Errorf("DSR marks differ:\n%s\nwant:\n%s", got, tc.want)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("unexpected error %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestDSRMSSChain(t *testing.T) {
	vs := func(addr string, proto ipvs.Protocol, port uint16) *virtualServer {
		return &virtualServer{Service: ipvs.Service{Key: ipvs.Key{Addr: netip.MustParseAddr(addr), Proto: proto, Port: port}},
			Owner: types.NamespacedName{Namespace: "ns", Name: "web"}, PortName: "p", DSR: true}
	}
	for _, tc := range []struct {
		name   string
		fam    family
		local  []*virtualServer
		podMTU int
		want   []string
	}{
		{
			name:   "IPv4 leaves room for the IPIP header and the inner IPv4 and TCP headers",
			fam:    families[0],
			local:  []*virtualServer{vs("203.0.113.5", ipvs.TCP, 443)},
			podMTU: 1500,
			want: []string{`-s 203.0.113.5/32 -p tcp -m comment --comment "ns/web:p DSR" -m tcp --sport 443 ` +
				`--tcp-flags SYN,RST,ACK SYN,ACK -j TCPMSS --set-mss 1440`},
		},
		{
			name:   "IPv6 leaves room for the ip6ip6 header and the inner IPv6 and TCP headers",
			fam:    families[1],
			local:  []*virtualServer{vs("2001:db8::5", ipvs.TCP, 80)},
			podMTU: 1500,
			want: []string{`-s 2001:db8::5/128 -p tcp -m comment --comment "ns/web:p DSR" -m tcp --sport 80 ` +
				`--tcp-flags SYN,RST,ACK SYN,ACK -j TCPMSS --set-mss 1400`},
		},
		{
			name:   "UDP and SCTP have no MSS to clamp",
			fam:    families[0],
			local:  []*virtualServer{vs("203.0.113.5", ipvs.UDP, 53), vs("203.0.113.5", ipvs.SCTP, 9)},
			podMTU: 1500,
		},
		{
			name:  "without a pod found there is no MTU and no rule",
			fam:   families[0],
			local: []*virtualServer{vs("203.0.113.5", ipvs.TCP, 443)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dsrMSSChain(tc.fam, tc.local, tc.podMTU)
			if c.Table != "mangle" || c.Name != chainDSRMSS || !slices.Equal(c.Rules, tc.want) {
				t.Errorf("got %s %s %q, want mangle %s %q", c.Table, c.Name, c.Rules, chainDSRMSS, tc.want)
			}
		})
	}
}

// allowTestExternalIPs lets the harness program the tests' external IPs.
func allowTestExternalIPs(c *config.ServiceProxy) {
	c.ExternalIPRanges = []config.Prefix{{Prefix: netip.MustParsePrefix("203.0.113.0/24")}}
}

func TestDSRTunnelsFollowLocalEndpointsAndTheAnnotation(t *testing.T) {
	kernel := newFakeKernel()
	pod := netip.MustParseAddr("10.1.0.1")
	kernel.tunnels.AddPod(pod, 1450)
	h := newHarness(t, kernel, allowTestExternalIPs)
	h.store(dsrService("tunnel"))
	h.store(port80(ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2", node: "node-b"}, ep{ip: "10.1.0.3"}))
	h.sync(true)

	// Only this node's endpoints get the addresses; 10.1.0.3 has no pod namespace here.
	if got, want := kernel.tunnels.Dump(), "10.1.0.1: [198.51.100.7 203.0.113.5]\n"; got != want {
		t.Errorf("pod tunnels:\n%swant:\n%s", got, want)
	}
	dump := kernel.ipvs.Dump()
	for _, want := range []string{
		"203.0.113.5:80/TCP rr\n  -> 10.1.0.1:80 weight 1 tunnel\n  -> 10.1.0.2:80 weight 1 tunnel\n  -> 10.1.0.3:80 weight 1 tunnel\n",
		"10.96.0.10:80/TCP rr\n  -> 10.1.0.1:80 weight 1\n",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("IPVS lacks\n%s\nin\n%s", want, dump)
		}
	}
	d := h.c.Details().(Details)
	if !slices.Equal(d.DSRMissingPods, []string{"10.1.0.3"}) || len(d.DSRPods["10.1.0.1"]) != 2 {
		t.Errorf("status: dsrPods %v, dsrMissingPods %v", d.DSRPods, d.DSRMissingPods)
	}
	if got := kernel.ipsets.Dump(); !strings.Contains(got, "203.0.113.5,tcp:80") {
		t.Errorf("the DSR external IP does not keep the client address (local set): %s", got)
	}
	// The pod's SYN-ACKs advertise what fits its 1450-byte interface inside IPIP.
	wantMSS := "-A KUBE-ROUTER-DSR-MSS -s 198.51.100.7/32 -p tcp -m comment --comment \"ns/web:http DSR\" -m tcp --sport 80 --tcp-flags SYN,RST,ACK SYN,ACK -j TCPMSS --set-mss 1390\n" +
		"-A KUBE-ROUTER-DSR-MSS -s 203.0.113.5/32 -p tcp -m comment --comment \"ns/web:http DSR\" -m tcp --sport 80 --tcp-flags SYN,RST,ACK SYN,ACK -j TCPMSS --set-mss 1390\n"
	if got := kernel.ipt4.Dump(); !strings.Contains(got, wantMSS) {
		t.Errorf("MSS rules missing:\n%s\nin\n%s", wantMSS, got)
	}

	// A restarted controller reads the pods' tunnels back and changes nothing.
	h2 := newHarness(t, kernel, allowTestExternalIPs)
	h2.store(dsrService("tunnel"))
	h2.store(port80(ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2", node: "node-b"}, ep{ip: "10.1.0.3"}))
	kernel.tunnels.Writes = 0
	h2.sync(true)
	if w := h2.c.writes(); w != 0 || kernel.tunnels.Writes != 0 {
		t.Errorf("full sync after restart made %d writes (%d in pods)", w, kernel.tunnels.Writes)
	}

	// The annotation goes: the addresses leave the pod, IPVS masquerades again.
	h2.store(dsrService("tunnel", func(s *corev1.Service) { delete(s.Annotations, annotationDSR) }))
	h2.sync(false)
	if got := kernel.tunnels.Dump(); got != "" {
		t.Errorf("pod tunnels after the annotation went:\n%s", got)
	}
	if dump := kernel.ipvs.Dump(); strings.Contains(dump, "tunnel") {
		t.Errorf("IPVS still tunnels:\n%s", dump)
	}
	if got := kernel.ipt4.Dump(); strings.Contains(got, "TCPMSS") {
		t.Errorf("MSS rules left after the annotation went:\n%s", got)
	}

	// Back to DSR in a partial sync, then the local endpoint leaves: its pod loses the
	// addresses. The MSS rules come in the same sync as the tunnel.
	h2.store(dsrService("tunnel"))
	h2.sync(false)
	if kernel.tunnels.Dump() == "" {
		t.Fatal("DSR back on: no tunnel in the pod")
	}
	if got := kernel.ipt4.Dump(); !strings.Contains(got, wantMSS) {
		t.Errorf("DSR back on: MSS rules missing:\n%s\nin\n%s", wantMSS, got)
	}
	h2.store(port80(ep{ip: "10.1.0.2", node: "node-b"}))
	h2.sync(false)
	if got := kernel.tunnels.Dump(); got != "" {
		t.Errorf("pod tunnels after the endpoint left:\n%s", got)
	}
	if got := kernel.ipt4.Dump(); strings.Contains(got, "TCPMSS") {
		t.Errorf("MSS rules left without a local endpoint:\n%s", got)
	}

	// Cleanup removes tunnels it finds in pods.
	h2.store(port80(ep{ip: "10.1.0.1"}))
	h2.sync(false)
	if err := cleanup(t.Context(), kernel.dataplane(), slog.Default()); err != nil {
		t.Fatal(err)
	}
	if got := kernel.tunnels.Dump(); got != "" {
		t.Errorf("pod tunnels after cleanup:\n%s", got)
	}
}
