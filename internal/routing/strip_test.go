package routing

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

// TestStrippedObjectsGiveTheSamePeersAndRoutes loads realistic Nodes, Services and
// EndpointSlices into one controller whole and into another as the daemon's
// informers cache them (k8s.Strip): both must configure the same peers,
// advertisements and kernel routes. Nodes and Services carry kube-router's
// annotations; endpoints are ready, not ready or unset. The controller reads
// EndpointSlices only in their compact form, compacting whole ones itself.
func TestStrippedObjectsGiveTheSamePeersAndRoutes(t *testing.T) {
	size := workload.Size{Nodes: 12, Pods: 120, Namespaces: 3, Services: 20, EndpointsPerService: 4}
	var objects []any
	for i := range size.Nodes {
		n := size.Node(i)
		switch i % 4 {
		case 0:
			n.Annotations[annotationNodeASN] = "64601"
			n.Annotations[annotationPrependAS] = "64601"
			n.Annotations[annotationPrependRepeat] = "2"
			n.Annotations[annotationCommunities] = "64601:100"
			n.Annotations[annotationImportReject] = "172.21.0.0/16"
			n.Annotations[annotationPeers] = fmt.Sprintf("- {remoteip: 192.0.2.%d, remoteasn: 65000, port: 1179}", 100+i)
		case 1:
			n.Annotations[annotationPeerIPs] = fmt.Sprintf("192.0.2.%d", i)
			n.Annotations[annotationPeerASNs] = "64512"
		case 2:
			n.Annotations[annotationRRClient] = "1.2.3.4"
		case 3:
			n.Annotations[annotationRRServer] = "1.2.3.4"
		}
		objects = append(objects, n)
	}
	for i := range size.Services {
		svc := size.Service(i)
		switch i % 3 {
		case 1:
			svc.Spec.ExternalIPs = []string{fmt.Sprintf("203.0.113.%d", i)}
			svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		case 2:
			svc.Spec.Type = corev1.ServiceTypeLoadBalancer
			svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: fmt.Sprintf("198.51.100.%d", i)}}
			svc.Annotations[annotationAdvertiseClusterIP] = "false"
		}
		objects = append(objects, svc)
		for _, s := range size.EndpointSlices(i) {
			for j := range s.Endpoints {
				switch (i + j) % 3 {
				case 1:
					s.Endpoints[j].Conditions.Ready = ptr.To(false)
				case 2:
					s.Endpoints[j].Conditions = discoveryv1.EndpointConditions{} // unset: ready
				}
			}
			objects = append(objects, s)
		}
	}
	cfg := config.Default().Routing
	cfg.AdvertiseClusterIPs, cfg.AdvertiseExternalIPs, cfg.AdvertiseLoadBalancerIPs = true, true, true

	run := func(transform func(any) any) string {
		h := &syncHarness{t: t, speaker: newFakeSpeaker(), kernel: route.NewFake(netip.MustParsePrefix("10.128.0.0/14"))}
		h.factory, h.c = newController(t, cfg, workload.NodeName(0), h)
		for _, o := range objects {
			h.store(transform(o))
		}
		h.sync(true)
		return h.speaker.dump() + h.kernel.Dump()
	}
	whole := run(func(o any) any { return o })
	stripped := run(k8s.Strip)
	if whole != stripped {
		t.Fatalf("stripped objects gave other peers or routes:\n--- whole\n%s\n--- stripped\n%s", whole, stripped)
	}
}
