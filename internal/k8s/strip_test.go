package k8s

import (
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

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

// TestStrippedServiceKeepsOnlyTheLabelsTheProxyReads: the labels handing a Service
// to another proxy or marking it headless stay, with their values; Helm's and the
// app's go.
func TestStrippedServiceKeepsOnlyTheLabelsTheProxyReads(t *testing.T) {
	svc := workloadObjects()["Service"].(*corev1.Service).DeepCopy()
	if got := Strip(svc).(*corev1.Service).Labels; got != nil {
		t.Errorf("labels of a Service without proxy labels: %v, want none", got)
	}
	svc.Labels[LabelServiceProxyName] = "other"
	svc.Labels[corev1.IsHeadlessService] = ""
	want := map[string]string{LabelServiceProxyName: "other", corev1.IsHeadlessService: ""}
	if got := Strip(svc).(*corev1.Service).Labels; !reflect.DeepEqual(got, want) {
		t.Errorf("labels: %v, want %v", got, want)
	}
}
