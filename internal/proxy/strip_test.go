package proxy

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

// TestStrippedObjectsProgramTheSameKernel loads realistic objects into one
// controller whole and into another as the daemon's informers cache them
// (k8s.Strip): both must leave the same IPVS table, firewall and health
// check ports. Services and endpoints vary every field the proxy reads. The
// controller reads EndpointSlices only in their compact form, compacting whole ones
// itself; what compaction keeps is pinned by k8s's tests and by the desired-state
// tests, which build whole slices.
func TestStrippedObjectsProgramTheSameKernel(t *testing.T) {
	size := workload.Size{Nodes: 6, Pods: 300, Namespaces: 4, Services: 40, EndpointsPerService: 12}
	local := workload.NodeName(0)
	var objects []any
	for i := range size.Services {
		svc := size.Service(i)
		varyService(svc, i)
		objects = append(objects, svc)
		for _, s := range size.EndpointSlices(i) {
			for j := range s.Endpoints {
				ep := &s.Endpoints[j]
				if *ep.NodeName == local {
					ep.NodeName = ptrTo(thisNode)
				}
				switch {
				case j%5 == 4:
					ep.Conditions.Ready = ptrTo(false)
				case j%5 == 3 && i%2 == 0: // terminating, still serving
					ep.Conditions = discoveryv1.EndpointConditions{Ready: ptrTo(false), Serving: ptrTo(true), Terminating: ptrTo(true)}
				case j%5 == 2 && i%4 == 1: // terminating, conditions otherwise unset
					ep.Conditions = discoveryv1.EndpointConditions{Terminating: ptrTo(true)}
				case j%5 == 1:
					ep.Conditions = discoveryv1.EndpointConditions{}
				}
				switch i % 7 {
				case 3:
					ep.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: *ep.Zone}}}
				case 5:
					ep.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: *ep.Zone}},
						ForNodes: []discoveryv1.ForNode{{Name: *ep.NodeName}}}
				}
			}
			if i%6 == 1 { // weights by pod name and by address
				svc.Annotations["kube-router.io/service.weights"] = s.Endpoints[0].TargetRef.Name + "=3," + s.Endpoints[1].Addresses[0] + "=2"
				s.Endpoints[2].TargetRef = nil
			}
			objects = append(objects, s)
		}
	}
	node := size.Node(0)
	node.Name = thisNode
	objects = append(objects, node)

	withRanges := func(c *config.ServiceProxy) {
		c.ExternalIPRanges = []config.Prefix{{Prefix: netip.MustParsePrefix("203.0.113.0/24")}}
	}
	run := func(transform func(any) any) string {
		kernel := newFakeKernel()
		h := newHarness(t, kernel, withRanges)
		for _, o := range objects {
			h.store(transform(o))
		}
		h.sync(true)
		return kernel.ipvs.Dump() + kernel.firewallDump() + fmt.Sprint(h.c.hcs.details())
	}
	whole := run(func(o any) any { return o })
	stripped := run(k8s.Strip)
	if whole != stripped {
		t.Fatalf("stripped objects programmed another kernel:\n--- whole\n%s\n--- stripped\n%s", whole, stripped)
	}
}

// varyService gives Service i a mix of what the proxy reads beyond the workload's
// plain ClusterIP Services: NodePorts, external and load-balancer IPs, source
// ranges, local traffic policies, session affinity and kube-router's annotations.
func varyService(svc *corev1.Service, i int) {
	switch i % 6 {
	case 1:
		svc.Spec.Type = corev1.ServiceTypeNodePort
		for j := range svc.Spec.Ports {
			svc.Spec.Ports[j].NodePort = int32(30000 + i*3 + j)
		}
		svc.Spec.ExternalIPs = []string{fmt.Sprintf("203.0.113.%d", i)}
		svc.Annotations["kube-router.io/service.scheduler"] = "sh"
	case 2:
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = int32(32000 + i)
		for j := range svc.Spec.Ports {
			svc.Spec.Ports[j].NodePort = int32(30000 + i*3 + j)
		}
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: fmt.Sprintf("198.51.100.%d", i)}}
		svc.Annotations["service.beta.kubernetes.io/load-balancer-source-ranges"] = "192.0.2.0/24"
	case 3:
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		svc.Annotations["kube-router.io/service.local"] = "true"
	case 4:
		svc.Labels["service.kubernetes.io/service-proxy-name"] = "other-proxy"
	case 5:
		svc.Spec.Type = corev1.ServiceTypeLoadBalancer
		svc.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/25"}
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: fmt.Sprintf("198.51.100.%d", i)}}
	}
}

func ptrTo[T any](v T) *T { return &v }
