package routing

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	api "github.com/osrg/gobgp/v3/api"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// syncHarness drives the routing controller synchronously through the fake speaker
// and the fake kernel: objects go straight into the informer stores, marked changed
// as the informer handlers would, and syncs are called directly.
type syncHarness struct {
	t       *testing.T
	c       *Controller
	factory informers.SharedInformerFactory
	speaker *fakeSpeaker
	kernel  *route.Fake
	log     *bytes.Buffer
}

// newSyncHarness builds a controller for node "a" (10.0.0.1, pod CIDR 10.244.1.0/24)
// on 10.0.0.0/24, with node "b" (10.0.0.2) beside it and c (10.0.1.3) in another subnet.
func newSyncHarness(t *testing.T, cfg config.Routing) *syncHarness {
	t.Helper()
	h := &syncHarness{t: t, speaker: newFakeSpeaker(), kernel: route.NewFake(netip.MustParsePrefix("10.0.0.0/24"))}
	h.factory, h.c = newController(t, cfg, "a", h)
	h.store(node("a", "10.0.0.1", []string{"10.244.1.0/24"}, nil))
	h.store(node("b", "10.0.0.2", []string{"10.244.2.0/24"}, nil))
	h.store(node("c", "10.0.1.3", []string{"10.244.3.0/24"}, nil))
	return h
}

// newController builds a controller for node over h's fake speaker and kernel, and
// points h.log at its log.
func newController(t *testing.T, cfg config.Routing, node string, h *syncHarness) (informers.SharedInformerFactory, *Controller) {
	t.Helper()
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	log, buf := captureLog()
	h.log = buf
	c, err := New(daemon.Env{Informers: factory, NodeName: node, Log: log}, cfg, Dataplane{Routes: h.kernel, startSpeaker: h.speaker.start})
	if err != nil {
		t.Fatal(err)
	}
	return factory, c
}

// indexer returns obj's informer store and what its events change.
func (h *syncHarness) indexer(obj any) (cache.Indexer, changeSet) {
	switch obj.(type) {
	case *corev1.Node:
		return h.factory.Core().V1().Nodes().Informer().GetIndexer(), changeSet{nodes: true}
	case *corev1.Service:
		return h.factory.Core().V1().Services().Informer().GetIndexer(), changeSet{services: true}
	case *discoveryv1.EndpointSlice, *k8s.EndpointSlice:
		return h.factory.Discovery().V1().EndpointSlices().Informer().GetIndexer(), changeSet{services: true}
	}
	h.t.Fatalf("unexpected object %T", obj)
	return nil, changeSet{}
}

func (h *syncHarness) store(obj any) {
	h.t.Helper()
	idx, changes := h.indexer(obj)
	if err := idx.Update(obj); err != nil {
		h.t.Fatal(err)
	}
	h.c.request(changes)
}

func (h *syncHarness) remove(obj any) {
	h.t.Helper()
	idx, changes := h.indexer(obj)
	if err := idx.Delete(obj); err != nil {
		h.t.Fatal(err)
	}
	h.c.request(changes)
}

func (h *syncHarness) sync(full bool) {
	h.t.Helper()
	if _, err := h.c.sync(context.Background(), full); err != nil {
		h.t.Fatalf("sync(full=%v): %v", full, err)
	}
}

// lines are the lines of the fake speaker's dump that start with prefix.
func (h *syncHarness) lines(prefix string) string {
	var out []string
	for _, l := range strings.Split(h.speaker.dump(), "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func slice(service, node string) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: service + "-" + node,
			Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}, NodeName: ptr.To(node)}},
	}
}

func TestSyncPeersFollowNodes(t *testing.T) {
	h := newSyncHarness(t, config.Default().Routing)
	h.sync(true)
	if cfg := h.speaker.cfg; cfg.RouterID.String() != "10.0.0.1" || strings.Join(cfg.ListenAddresses, ",") != "0.0.0.0" {
		t.Errorf("speaker started with router id %s listening on %v; want our address, IPv4 wildcard", cfg.RouterID, cfg.ListenAddresses)
	}
	for _, step := range []struct {
		name   string
		change func()
		want   string
	}{
		{"every other node is a peer", func() {}, "peer 10.0.0.2 asn 64512 node b\npeer 10.0.1.3 asn 64512 node c"},
		{"a new node becomes a peer", func() { h.store(node("d", "10.0.0.4", []string{"10.244.4.0/24"}, nil)) },
			"peer 10.0.0.2 asn 64512 node b\npeer 10.0.0.4 asn 64512 node d\npeer 10.0.1.3 asn 64512 node c"},
		{"a deleted node is no peer any more", func() { h.remove(node("b", "10.0.0.2", nil, nil)) },
			"peer 10.0.0.4 asn 64512 node d\npeer 10.0.1.3 asn 64512 node c"},
		{"our peer annotations add an external peer", func() {
			h.store(node("a", "10.0.0.1", []string{"10.244.1.0/24"}, map[string]string{annotationPeerIPs: "192.0.2.1", annotationPeerASNs: "65000"}))
		}, "peer 10.0.0.4 asn 64512 node d\npeer 10.0.1.3 asn 64512 node c\npeer 192.0.2.1 asn 65000"},
		{"route reflector annotations replace the mesh", func() {
			h.store(node("a", "10.0.0.1", []string{"10.244.1.0/24"}, map[string]string{annotationRRClient: "1.1.1.1"}))
			h.store(node("c", "10.0.1.3", []string{"10.244.3.0/24"}, map[string]string{annotationRRServer: "1.1.1.1"}))
		}, "peer 10.0.1.3 asn 64512 node c"},
	} {
		step.change()
		h.sync(false)
		if got := h.lines("peer "); got != step.want {
			t.Errorf("%s: peers\n%s\nwant\n%s", step.name, got, step.want)
		}
	}
}

func TestSyncAdvertisementsFollowServicesAndConfig(t *testing.T) {
	all := config.Default().Routing
	all.AdvertiseClusterIPs, all.AdvertiseExternalIPs, all.AdvertiseLoadBalancerIPs = true, true, true
	local := func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal }
	ext := func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.10"} }
	for _, tc := range []struct {
		name    string
		cfg     config.Routing
		objects []any
		want    string
	}{
		{"defaults announce only our pod CIDR", config.Default().Routing,
			[]any{svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil)},
			"path 10.244.1.0/24"},
		{"advertise_cluster_ip and advertise_external_ip announce a Service's IPs", all,
			[]any{svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil, ext)},
			"path 10.96.0.10/32\npath 10.244.1.0/24\npath 192.0.2.10/32"},
		{"a Service annotation opts in when the config is off", config.Default().Routing,
			[]any{svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", map[string]string{annotationAdvertiseClusterIP: "true"})},
			"path 10.96.0.10/32\npath 10.244.1.0/24"},
		{"externalTrafficPolicy Local is announced with an endpoint on this node", all,
			[]any{svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil, local), slice("web", "a")},
			"path 10.96.0.10/32\npath 10.244.1.0/24"},
		{"externalTrafficPolicy Local is not announced with endpoints elsewhere only", all,
			[]any{svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil, local), slice("web", "b")},
			"path 10.244.1.0/24"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newSyncHarness(t, tc.cfg)
			h.sync(true)
			for _, o := range tc.objects {
				h.store(o)
			}
			h.sync(false)
			if got := h.lines("path "); got != tc.want {
				t.Errorf("paths\n%s\nwant\n%s", got, tc.want)
			}
			if got := h.speaker.policy.ToNodes; len(got) != 3 {
				t.Errorf("to nodes = %v, want the three nodes' pod CIDRs", got)
			}
		})
	}
}

func TestSyncAdvertisementsFollowServiceChanges(t *testing.T) {
	cfg := config.Default().Routing
	cfg.AdvertiseClusterIPs = true
	h := newSyncHarness(t, cfg)
	local := func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal }
	web := svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil, local)
	h.store(web)
	h.sync(true)
	for _, step := range []struct {
		name   string
		change func()
		want   string
	}{
		{"a local Service without a local endpoint is not announced", func() {}, "path 10.244.1.0/24"},
		{"its first local endpoint announces it", func() { h.store(slice("web", "a")) }, "path 10.96.0.10/32\npath 10.244.1.0/24"},
		{"a second Service is announced", func() { h.store(svc("db", corev1.ServiceTypeClusterIP, "10.96.0.20", nil)) },
			"path 10.96.0.10/32\npath 10.96.0.20/32\npath 10.244.1.0/24"},
		{"losing the local endpoint withdraws the local Service", func() { h.remove(slice("web", "a")) },
			"path 10.96.0.20/32\npath 10.244.1.0/24"},
		{"a deleted Service is withdrawn", func() { h.remove(svc("db", corev1.ServiceTypeClusterIP, "10.96.0.20", nil)) },
			"path 10.244.1.0/24"},
		{"a new pod CIDR of our node is announced", func() {
			h.store(node("a", "10.0.0.1", []string{"10.244.1.0/24", "10.245.1.0/24"}, nil))
		}, "path 10.244.1.0/24\npath 10.245.1.0/24"},
	} {
		step.change()
		h.sync(false)
		if got := h.lines("path "); got != step.want {
			t.Errorf("%s: paths\n%s\nwant\n%s", step.name, got, step.want)
		}
	}
}

func TestSyncInstallsLearnedRoutesPerOverlay(t *testing.T) {
	learned := []string{
		"10.244.2.0/24 via 10.0.0.2",   // node b, same subnet
		"10.244.3.0/24 via 10.0.1.3",   // node c, another subnet
		"172.16.0.0/16 via 10.0.0.254", // an external router
		"10.244.1.0/25 via 10.0.0.2",   // into our own pod CIDR
	}
	for _, tc := range []struct {
		overlay     string
		want        string
		unreachable bool
	}{
		{"never", "route 10.244.2.0/24 via 10.0.0.2\nroute 172.16.0.0/16 via 10.0.0.254\n", true},
		{"cross-subnet", "tunnel krt-0a000103 ipip local 10.0.0.1 remote 10.0.1.3\n" +
			"route 10.244.2.0/24 via 10.0.0.2\nroute 10.244.3.0/24 dev krt-0a000103\nroute 172.16.0.0/16 via 10.0.0.254\n", false},
		{"always", "tunnel krt-0a000002 ipip local 10.0.0.1 remote 10.0.0.2\ntunnel krt-0a000103 ipip local 10.0.0.1 remote 10.0.1.3\n" +
			"route 10.244.2.0/24 dev krt-0a000002\nroute 10.244.3.0/24 dev krt-0a000103\nroute 172.16.0.0/16 via 10.0.0.254\n", false},
	} {
		t.Run("overlay "+tc.overlay, func(t *testing.T) {
			cfg := config.Default().Routing
			cfg.Overlay = tc.overlay
			h := newSyncHarness(t, cfg)
			h.sync(true)
			h.speaker.learn(learned...)
			h.sync(false)
			if got := h.kernel.Dump(); got != tc.want {
				t.Errorf("kernel\n%s\nwant\n%s", got, tc.want)
			}
			warned := strings.Count(h.log.String(), "route not installed")
			if tc.unreachable && (warned != 1 || !strings.Contains(h.log.String(), "node=c")) {
				t.Errorf("want one warning about the route via node c, got:\n%s", h.log)
			} else if !tc.unreachable && warned != 0 {
				t.Errorf("unexpected warning:\n%s", h.log)
			}

			// Routes to nodes are withdrawn once their sessions were up (see
			// TestSyncKeepsRoutesToNodesNotHeardFromSinceStart).
			h.speaker.setState("10.0.0.2", api.PeerState_ESTABLISHED)
			h.speaker.setState("10.0.1.3", api.PeerState_ESTABLISHED)
			h.speaker.learn()
			h.sync(false)
			if got := h.kernel.Dump(); got != "" {
				t.Errorf("withdrawn routes left in the kernel:\n%s", got)
			}
		})
	}
}

func TestSyncKeepsRoutesToNodesNotHeardFromSinceStart(t *testing.T) {
	h := newSyncHarness(t, config.Default().Routing)
	// A route of ours left by the previous run of the daemon.
	leftover := route.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.2")}
	if err := h.kernel.ReplaceRoute(leftover); err != nil {
		t.Fatal(err)
	}
	h.sync(true)
	if got, want := h.kernel.Dump(), "route 10.244.2.0/24 via 10.0.0.2\n"; got != want {
		t.Fatalf("a route to a node not heard from yet was removed:\n%s", got)
	}
	h.speaker.setState("10.0.0.2", api.PeerState_ESTABLISHED)
	h.sync(false)
	if got := h.kernel.Dump(); got != "" {
		t.Errorf("the node came up without announcing the route, which stayed:\n%s", got)
	}
}

// A route reflector client hears of the other clients' pod CIDRs only through its
// reflectors: a route left from before a restart is kept until a reflector's session
// is up, then follows what the reflectors announce.
func TestSyncKeepsRoutesOfReflectedNodesUntilAReflectorIsHeardFrom(t *testing.T) {
	h := newSyncHarness(t, config.Default().Routing)
	h.store(node("a", "10.0.0.1", []string{"10.244.1.0/24"}, map[string]string{annotationRRClient: "1"}))
	h.store(node("b", "10.0.0.2", []string{"10.244.2.0/24"}, map[string]string{annotationRRClient: "1"}))
	h.store(node("c", "10.0.1.3", []string{"10.244.3.0/24"}, map[string]string{annotationRRServer: "1"}))
	leftover := route.Route{Dst: netip.MustParsePrefix("10.244.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.2")}
	if err := h.kernel.ReplaceRoute(leftover); err != nil {
		t.Fatal(err)
	}
	h.sync(true)
	if got, want := h.kernel.Dump(), "route 10.244.2.0/24 via 10.0.0.2\n"; got != want {
		t.Fatalf("a route to a reflected node was removed before any reflector was heard from:\n%s", got)
	}
	h.speaker.setState("10.0.1.3", api.PeerState_ESTABLISHED)
	h.speaker.learn("10.244.2.0/24 via 10.0.0.2")
	h.sync(false)
	if got, want := h.kernel.Dump(), "route 10.244.2.0/24 via 10.0.0.2\n"; got != want {
		t.Fatalf("the reflected route is not in the kernel:\n%s", got)
	}
	h.speaker.learn() // the reflector withdraws it: node b is gone for BGP
	h.sync(false)
	if got := h.kernel.Dump(); got != "" {
		t.Errorf("a route the reflector withdrew stayed:\n%s", got)
	}
}

func TestFullSyncRepairsDrift(t *testing.T) {
	h := newSyncHarness(t, config.Default().Routing)
	h.sync(true)
	h.speaker.learn("10.244.2.0/24 via 10.0.0.2")
	h.sync(false)
	want := h.kernel.Dump()
	if err := h.kernel.DeleteRoute(route.Route{Dst: netip.MustParsePrefix("10.244.2.0/24")}); err != nil { // someone runs ip route del
		t.Fatal(err)
	}
	h.store(svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil))
	h.sync(false)
	if got := h.kernel.Dump(); got != "" {
		t.Fatalf("a Service change touched the kernel routes:\n%s", got)
	}
	h.sync(true)
	if got := h.kernel.Dump(); got != want {
		t.Errorf("full sync left\n%s\nwant\n%s", got, want)
	}
	if !strings.Contains(h.log.String(), "repaired routes or tunnels changed by someone else") {
		t.Errorf("the repair was not logged:\n%s", h.log)
	}
}

// The sync's cost follows the change: each kind of event redoes only what depends
// on it, seen in the speaker calls and the kernel reads it makes.
func TestSyncRedoesOnlyWhatTheChangeTouches(t *testing.T) {
	const (
		advertiseCalls = "SetPolicy SetPaths"
		kernelCalls    = "Learned PeerStates"
		allCalls       = "SetPolicy SetPeers SetPaths Learned PeerStates"
	)
	h := newSyncHarness(t, config.Default().Routing)
	h.sync(true)
	for _, tc := range []struct {
		name   string
		full   bool
		change func()
		want   string
	}{
		{"a Service change redoes only the advertisements", false,
			func() { h.store(svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil)) }, advertiseCalls},
		{"an EndpointSlice change redoes only the advertisements", false,
			func() { h.store(slice("web", "a")) }, advertiseCalls},
		{"a learned route redoes only the kernel routes", false,
			func() { h.speaker.learn("10.244.2.0/24 via 10.0.0.2") }, kernelCalls},
		{"a session state change redoes only the kernel routes", false,
			func() { h.speaker.setState("10.0.0.2", api.PeerState_ESTABLISHED) }, kernelCalls},
		{"a Node change redoes peers, advertisements and kernel routes", false,
			func() { h.store(node("d", "10.0.0.4", []string{"10.244.4.0/24"}, nil)) }, allCalls},
		{"a full sync redoes everything", true, func() {}, allCalls},
		{"a sync without changes does nothing", false, func() {}, ""},
	} {
		h.speaker.takeCalls()
		tc.change()
		h.sync(tc.full)
		if got := h.speaker.takeCalls(); got != tc.want {
			t.Errorf("%s: speaker calls %q, want %q", tc.name, got, tc.want)
		}
	}
	if got, want := h.c.Details().(Details).Routes, []string{"10.244.2.0/24 via 10.0.0.2"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("status routes %v, want %v: a partial sync must keep what it did not recompute", got, want)
	}
}

func TestBadAdvertiseAnnotationIsLoggedOnceWhileItLasts(t *testing.T) {
	h := newSyncHarness(t, config.Default().Routing)
	bad := svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", map[string]string{annotationAdvertiseClusterIP: "maybe"})
	warnings := func() int { return strings.Count(h.log.String(), "ignoring invalid advertise annotation") }
	h.store(bad)
	h.sync(true)
	h.sync(true)
	h.store(slice("other", "a"))
	h.sync(false)
	h.store(node("a", "10.0.0.1", []string{"10.244.1.0/24"}, map[string]string{"touched": "yes"}))
	h.sync(false)
	if warnings() != 1 || !strings.Contains(h.log.String(), "service=default/web") {
		t.Fatalf("want one warning naming the Service over four syncs, got:\n%s", h.log)
	}
	h.store(svc("web", corev1.ServiceTypeClusterIP, "10.96.0.10", nil))
	h.sync(false)
	h.store(bad)
	h.sync(false)
	if warnings() != 2 {
		t.Errorf("an annotation broken again after a fix is logged again; got:\n%s", h.log)
	}
}

func TestSyncFollowsTheNodesBGPShapeLiveAndRestartsTheSpeakerOnlyForListenAddresses(t *testing.T) {
	h := newSyncHarness(t, config.Default().Routing)
	self := func(ann map[string]string) { h.store(node("a", "10.0.0.1", []string{"10.244.1.0/24"}, ann)) }
	shape := map[string]string{
		annotationPeers:         "- {remoteip: 192.0.2.1, remoteasn: 65000, port: 1179}",
		annotationNodeASN:       "64601",
		annotationPrependAS:     "64601",
		annotationPrependRepeat: "2",
		annotationCommunities:   "64601:100",
		annotationImportReject:  "10.10.0.0/16",
	}
	self(shape)
	h.store(node("b", "10.0.0.2", []string{"10.244.2.0/24"}, map[string]string{annotationNodeASN: "64601"}))
	h.sync(true)
	if h.speaker.cfg.ASN != 64601 {
		t.Errorf("speaker started with AS %d, want the node's 64601", h.speaker.cfg.ASN)
	}
	want := "peer 10.0.0.2 asn 64601 node b\npeer 10.0.1.3 asn 64512 node c\npeer 192.0.2.1 asn 65000"
	if got := h.lines("peer "); got != want {
		t.Errorf("peers\n%s\nwant\n%s", got, want)
	}
	policy := func() advertisements {
		h.speaker.mu.Lock()
		defer h.speaker.mu.Unlock()
		return h.speaker.policy
	}
	if p := policy(); p.Prepend != (asPrepend{ASN: 64601, Repeat: 2}) || strings.Join(p.Communities, ",") != "64601:100" || fmt.Sprint(p.ImportReject) != "[10.10.0.0/16]" {
		t.Errorf("policy %+v, want the node's prepend, community and import reject", p)
	}

	// Another AS for our node: every session is re-made with it, the speaker keeps running.
	shape[annotationNodeASN] = "64700"
	shape[annotationCommunities] = "64700:1"
	delete(shape, annotationPrependAS)
	delete(shape, annotationPrependRepeat)
	self(shape)
	h.sync(false)
	want = "peer 10.0.0.2 asn 64601 local-asn 64700 node b\npeer 10.0.1.3 asn 64512 local-asn 64700 node c\npeer 192.0.2.1 asn 65000 local-asn 64700"
	if got := h.lines("peer "); got != want {
		t.Errorf("after the AS change, peers\n%s\nwant\n%s", got, want)
	}
	if p := policy(); p.Prepend != (asPrepend{}) || strings.Join(p.Communities, ",") != "64700:1" {
		t.Errorf("policy %+v, want no prepend and the new community", p)
	}
	if !strings.Contains(h.log.String(), "this node's AS number changed") {
		t.Errorf("the AS change is not logged:\n%s", h.log)
	}
	// Another node's AS changes only its session.
	h.store(node("c", "10.0.1.3", []string{"10.244.3.0/24"}, map[string]string{annotationNodeASN: "64700"}))
	h.sync(false)
	if got := h.lines("peer 10.0.1.3"); got != "peer 10.0.1.3 asn 64700 local-asn 64700 node c" {
		t.Errorf("c's session = %q, want iBGP in AS 64700", got)
	}
	if h.speaker.starts != 1 {
		t.Fatalf("speaker started %d times, want once: AS changes need no restart", h.speaker.starts)
	}

	// New listen addresses restart the speaker, which gets everything again.
	shape[annotationLocalAddresses] = "10.0.0.1"
	self(shape)
	h.sync(false)
	if h.speaker.starts != 2 || strings.Join(h.speaker.cfg.ListenAddresses, ",") != "10.0.0.1" || h.speaker.cfg.ASN != 64700 {
		t.Errorf("starts %d, listen %v, AS %d: want a restart listening on 10.0.0.1 in AS 64700", h.speaker.starts, h.speaker.cfg.ListenAddresses, h.speaker.cfg.ASN)
	}
	if got := h.lines("peer "); got != "peer 10.0.0.2 asn 64601 node b\npeer 10.0.1.3 asn 64700 node c\npeer 192.0.2.1 asn 65000" {
		t.Errorf("after the restart, peers\n%s", got)
	}
	if got := h.lines("path "); got != "path 10.244.1.0/24" {
		t.Errorf("after the restart, paths\n%s", got)
	}
	h.sync(false)
	if h.speaker.starts != 2 {
		t.Errorf("speaker restarted again without a change")
	}
}

func TestPeerPasswordComesFromItsFileAndAnOpenFileIsRefused(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "peer.secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default().Routing
	cfg.Peers = []config.Peer{{Address: config.Addr{Addr: netip.MustParseAddr("192.0.2.1")}, ASN: 65000, PasswordFile: secret}}
	h := newSyncHarness(t, cfg)
	h.sync(true)
	h.speaker.mu.Lock()
	var got string
	for _, p := range h.speaker.peers {
		if p.External() {
			got = p.Password
		}
	}
	h.speaker.mu.Unlock()
	if got != "s3cret" {
		t.Errorf("external peer's password = %q, want the file's content without its newline", got)
	}

	if err := os.Chmod(secret, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(daemon.Env{Informers: informers.NewSharedInformerFactory(fake.NewClientset(), 0), NodeName: "a", Log: slog.New(slog.DiscardHandler)}, cfg,
		Dataplane{Routes: route.NewFake(), startSpeaker: newFakeSpeaker().start})
	if err == nil || !strings.Contains(err.Error(), "mode 0644") || !strings.Contains(err.Error(), "192.0.2.1") {
		t.Errorf("New with a world-readable password file: %v, want an error naming the peer and the mode", err)
	}
}
