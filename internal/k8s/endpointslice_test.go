package k8s

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

func TestCompactEndpointSliceKeepsWhatIsRead(t *testing.T) {
	zoneA := &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "a"}}}
	whole := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-x1", ResourceVersion: "7",
			Labels:      map[string]string{discoveryv1.LabelServiceName: "web", LabelServiceProxyName: "", "app": "web"},
			Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "then"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)},
			{Port: ptr.To[int32](9090)},      // unnamed, protocol unset
			{Name: ptr.To("all"), Port: nil}, // every port: no Service port maps to it
			{Name: ptr.To("dns"), Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To[int32](53)},
		},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1", "10.0.0.9"}, NodeName: ptr.To("node-a"), Zone: ptr.To("a"), Hints: zoneA,
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "web-1", UID: "u1"}},
			{Addresses: []string{"::ffff:10.0.0.2"}, Hints: &discoveryv1.EndpointHints{ForNodes: []discoveryv1.ForNode{{Name: "a"}}},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}},
			{Addresses: []string{"web.example"}, Hints: &discoveryv1.EndpointHints{}},
			{},
		},
	}
	got := CompactEndpointSlice(whole)
	want := &EndpointSlice{Namespace: "shop", Name: "web-x1", ServiceName: "web", OtherProxy: true, AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []EndpointPort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 8080}, {Protocol: corev1.ProtocolTCP, Port: 9090},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}},
		Endpoints: []Endpoint{
			{Addr: netip.MustParseAddr("10.0.0.1"), NodeName: got.Endpoints[0].NodeName, TargetName: "web-1", Hints: got.Endpoints[0].Hints,
				Ready: true, Serving: true},
			{Addr: netip.MustParseAddr("10.0.0.2"), Hints: got.Endpoints[1].Hints, Serving: true, Terminating: true},
			{UnparsableAddr: true, Ready: true, Serving: true},
			{Ready: true, Serving: true},
		}}
	if !got.Equal(want) {
		t.Errorf("compact slice\n%+v, want\n%+v", got, want)
	}
	if n := got.Endpoints[0].NodeName; n == nil || *n != "node-a" {
		t.Errorf("node name %v, want node-a", n)
	}
	if h := got.Endpoints[0].Hints; h == zoneA || len(h.ForZones) != 1 || h.ForZones[0].Name != "a" || len(h.ForNodes) != 0 {
		t.Errorf("zone hints %+v: want a copy of the zone a hint", h)
	}
	if h := got.Endpoints[1].Hints; h == got.Endpoints[0].Hints || len(h.ForNodes) != 1 || len(h.ForZones) != 0 {
		t.Errorf("node hints %+v: want node a's, apart from zone a's", h)
	}
	if got.Endpoints[2].Hints != nil {
		t.Error("empty hints are kept")
	}
	if key, err := cache.MetaNamespaceKeyFunc(got); err != nil || key != "shop/web-x1" {
		t.Errorf("cache key %q (%v)", key, err)
	}
	if m, err := meta.Accessor(got); err != nil || m.GetNamespace() != "shop" || m.GetName() != "web-x1" {
		t.Errorf("meta.Accessor: %v, %v", m, err)
	}
	if Strip(got) != any(got) || !Strip(whole).(*EndpointSlice).Equal(got) {
		t.Error("Strip does not return the compact slice, or changes it when given again")
	}

	// An update the cache keeps nothing of reads the same; a condition does not.
	whole.ResourceVersion, whole.Annotations = "8", nil
	updated := CompactEndpointSlice(whole)
	if !UnchangedEndpointSlice(got, updated) {
		t.Error("a new resource version and annotation changed the compact slice")
	}
	whole.Endpoints[0].Conditions.Ready = ptr.To(false)
	if UnchangedEndpointSlice(got, CompactEndpointSlice(whole)) {
		t.Error("an endpoint no longer ready left the compact slice equal")
	}
	if UnchangedEndpointSlice(whole, whole) {
		t.Error("whole slices, which the cache never holds, read as unchanged")
	}
	delete(whole.Labels, LabelServiceProxyName)
	whole.Labels[corev1.IsHeadlessService] = ""
	if s := CompactEndpointSlice(whole); s.OtherProxy || !s.Headless {
		t.Errorf("labels read as other proxy %v, headless %v", s.OtherProxy, s.Headless)
	}
}

// TestCompactConditionsApplyTheAPIDefaults checks every combination of set and unset
// conditions against the API's rules: unset Ready is ready, unset Serving follows
// Ready, unset Terminating is not terminating.
func TestCompactConditionsApplyTheAPIDefaults(t *testing.T) {
	values := []*bool{nil, ptr.To(false), ptr.To(true)}
	or := func(b *bool, unset bool) bool {
		if b == nil {
			return unset
		}
		return *b
	}
	for _, ready := range values {
		for _, serving := range values {
			for _, terminating := range values {
				c := discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
				got := CompactEndpointSlice(&discoveryv1.EndpointSlice{Endpoints: []discoveryv1.Endpoint{{Conditions: c}}}).Endpoints[0]
				wantReady := or(ready, true)
				if got.Ready != wantReady || got.Serving != or(serving, wantReady) || got.Terminating != or(terminating, false) {
					t.Errorf("ready %v serving %v terminating %v: compact %v %v %v", condition(ready), condition(serving), condition(terminating),
						got.Ready, got.Serving, got.Terminating)
				}
			}
		}
	}
}

func condition(b *bool) string {
	if b == nil {
		return "unset"
	}
	return fmt.Sprint(*b)
}

// TestCompactEndpointsShareNodeNamesHintsAndPorts: endpoints on one node point at
// one copy of its name, endpoints with the same hints at one copy of them, and
// slices with the same ports at one list, whatever slice they are in.
func TestCompactEndpointsShareNodeNamesHintsAndPorts(t *testing.T) {
	s := workload.Size{Nodes: 3, Pods: 10, Namespaces: 2, Services: 2, EndpointsPerService: 150}
	var cached []*EndpointSlice
	for svc := range 2 {
		for _, slice := range s.EndpointSlices(svc) {
			for i := range slice.Endpoints {
				slice.Endpoints[i].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: *slice.Endpoints[i].Zone}}}
			}
			cached = append(cached, Strip(slice).(*EndpointSlice))
		}
	}
	names := map[string]*string{}
	hints := map[string]*discoveryv1.EndpointHints{}
	for _, slice := range cached {
		if &slice.Ports[0] != &cached[0].Ports[0] {
			t.Fatal("two slices with the same ports hold two lists")
		}
		for _, ep := range slice.Endpoints {
			if ep.NodeName == nil || ep.Hints == nil {
				t.Fatalf("endpoint %v lost its node or hints", ep.Addr)
			}
			if first, seen := names[*ep.NodeName]; seen && first != ep.NodeName {
				t.Fatalf("two copies of node name %q", *ep.NodeName)
			}
			names[*ep.NodeName] = ep.NodeName
			zone := ep.Hints.ForZones[0].Name
			if first, seen := hints[zone]; seen && first != ep.Hints {
				t.Fatalf("two copies of the hints for zone %q", zone)
			}
			hints[zone] = ep.Hints
		}
	}
	if len(cached) < 2 || len(names) < 2 || len(hints) < 2 {
		t.Fatalf("the workload has %d slices, %d nodes and %d zones; the test needs several", len(cached), len(names), len(hints))
	}
}

// TestCompactEndpointSliceMemory measures what the cache keeps per endpoint, in
// slices of 10 endpoints as Services mostly have. A stripped
// discoveryv1.EndpointSlice kept 374 bytes an endpoint here.
func TestCompactEndpointSliceMemory(t *testing.T) {
	const perSlice = 10
	size := workload.Size{Nodes: 200, Pods: 20000, Namespaces: 20, Services: 20000 / perSlice, EndpointsPerService: perSlice}
	before := liveHeap()
	var cached []*EndpointSlice
	endpoints := 0
	for i := range size.Services {
		for _, s := range size.EndpointSlices(i) {
			endpoints += len(s.Endpoints)
			cached = append(cached, CompactEndpointSlice(s))
		}
	}
	perEndpoint := (int64(liveHeap()) - int64(before)) / int64(endpoints)
	runtime.KeepAlive(cached)
	t.Logf("%d endpoints in slices of %d: %d bytes an endpoint", endpoints, perSlice, perEndpoint)
	if perEndpoint > 200 {
		t.Errorf("the cache keeps %d bytes an endpoint, want at most 200", perEndpoint)
	}
}

// liveHeap is the heap's allocated bytes after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
