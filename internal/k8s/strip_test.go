package k8s

import (
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

func workloadObjects() map[string]any {
	s := workload.Size{Nodes: 3, Pods: 10, Namespaces: 2, Services: 2, EndpointsPerService: 150, Policies: 1}
	return map[string]any{
		"Pod": s.Pod(4), "Node": s.Node(1), "Service": s.Service(1), "EndpointSlice": s.EndpointSlices(1)[1],
		"Namespace": s.Namespace(1), "NetworkPolicy": s.NetworkPolicy(0),
	}
}

// TestStripIsIdempotentAndShrinks checks what client-go requires of a
// transform (applying it twice changes nothing) and logs how much each kind shrinks.
func TestStripIsIdempotentAndShrinks(t *testing.T) {
	for kind, obj := range workloadObjects() {
		once := Strip(obj)
		twice := Strip(once)
		if !reflect.DeepEqual(once, twice) {
			t.Errorf("%s: stripping twice differs from once", kind)
		}
		whole, _ := json.Marshal(obj)
		stripped, _ := json.Marshal(once)
		if len(stripped) >= len(whole) {
			t.Errorf("%s: stripped object is not smaller (%d >= %d bytes of JSON)", kind, len(stripped), len(whole))
		}
		t.Logf("%-13s %6d -> %5d bytes of JSON", kind, len(whole), len(stripped))
	}
}

// TestStrippedNodeHasTheSameAddresses covers what podnet and takeover read of a Node.
func TestStrippedNodeHasTheSameAddresses(t *testing.T) {
	node := workloadObjects()["Node"]
	stripped := Strip(node)
	log := slog.New(slog.DiscardHandler)
	whole, got := ParseNodeAddresses(node.(*corev1.Node), log), ParseNodeAddresses(stripped.(*corev1.Node), log)
	if !reflect.DeepEqual(whole, got) || !whole.IPv4.IsValid() || len(whole.PodCIDRs) != 1 {
		t.Fatalf("addresses: whole %+v, stripped %+v", whole, got)
	}
}

// TestStrippedEndpointsShareNodeNamesAndConditions: endpoints on one node point at
// one copy of its name, and conditions at shared values, whatever slice they are in.
func TestStrippedEndpointsShareNodeNamesAndConditions(t *testing.T) {
	s := workload.Size{Nodes: 3, Pods: 10, Namespaces: 2, Services: 2, EndpointsPerService: 150, Policies: 1}
	var all []discoveryv1.Endpoint
	for svc := range 2 {
		for _, slice := range s.EndpointSlices(svc) {
			all = append(all, Strip(slice).(*discoveryv1.EndpointSlice).Endpoints...)
		}
	}
	byName := map[string]*string{}
	for _, ep := range all {
		if ep.NodeName == nil || ep.Conditions.Ready == nil {
			t.Fatalf("endpoint %v lost its node or readiness", ep.Addresses)
		}
		if first, seen := byName[*ep.NodeName]; seen && first != ep.NodeName {
			t.Fatalf("two copies of node name %q", *ep.NodeName)
		}
		byName[*ep.NodeName] = ep.NodeName
		if ready := all[0].Conditions.Ready; *ready == *ep.Conditions.Ready && ready != ep.Conditions.Ready {
			t.Fatal("two copies of one readiness")
		}
	}
	if len(byName) < 2 {
		t.Fatalf("the workload's endpoints sit on %d node(s); the test needs several", len(byName))
	}
}
