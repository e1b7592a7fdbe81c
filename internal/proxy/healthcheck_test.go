package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// testPorts binds every listener the proxy asks for on 127.0.0.1 with a free port,
// and remembers where each requested address ended up.
type testPorts struct {
	mu    sync.Mutex
	bound map[string]string // requested "host:port" -> bound "127.0.0.1:port"
	// refuse makes listening on these requested addresses fail, as a taken port does.
	refuse map[string]bool
}

func newTestPorts() *testPorts {
	return &testPorts{bound: map[string]string{}, refuse: map[string]bool{}}
}

func (p *testPorts) listen(addr string) (net.Listener, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refuse[addr] {
		return nil, fmt.Errorf("listen tcp %s: bind: address already in use", addr)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.bound[addr] = ln.Addr().String()
	return ln, nil
}

// url is where the listener for the requested address is, "" if never opened.
func (p *testPorts) url(addr, path string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bound[addr] == "" {
		return ""
	}
	return "http://" + p.bound[addr] + path
}

type probe struct {
	status int
	body   string
	header http.Header
	err    error
}

func get(t *testing.T, url string) probe {
	t.Helper()
	if url == "" {
		return probe{err: fmt.Errorf("never listened")}
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return probe{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return probe{status: resp.StatusCode, body: string(b), header: resp.Header, err: err}
}

// wantProbe checks status and, when wantBody is set, the JSON body field by field.
func wantProbe(t *testing.T, what string, p probe, status int, wantBody string) {
	t.Helper()
	if p.err != nil {
		t.Fatalf("%s: %v", what, p.err)
	}
	if p.status != status {
		t.Errorf("%s: status %d, want %d (body %s)", what, p.status, status, p.body)
	}
	if wantBody == "" {
		return
	}
	var got, want any
	if err := json.Unmarshal([]byte(p.body), &got); err != nil {
		t.Fatalf("%s: body %q is not JSON: %v", what, p.body, err)
	}
	if err := json.Unmarshal([]byte(wantBody), &want); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: body %s, want %s", what, strings.TrimSpace(p.body), wantBody)
	}
}

func wantClosed(t *testing.T, what, url string) {
	t.Helper()
	if p := get(t, url); p.err == nil {
		t.Errorf("%s: %s still answers (status %d)", what, url, p.status)
	}
}

// lbLocal makes a Service a LoadBalancer with externalTrafficPolicy Local and the
// given health check node port.
func lbLocal(port int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = port
	}
}

func TestDesiredHealthCheck(t *testing.T) {
	web := types.NamespacedName{Namespace: "ns", Name: "web"}
	twoPorts := func(s *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To("metrics"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](9090)})
		return s
	}
	cases := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   *healthCheck
	}{
		{
			name:   "a Local LoadBalancer counts its ready endpoints on this node only",
			svc:    service(lbLocal(32000)),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}, ep{ip: "10.2.0.1", node: "node-b"})},
			want:   &healthCheck{Service: web, Port: 32000, LocalEndpoints: 2},
		},
		{
			name: "terminating endpoints do not count, even serving ones",
			svc:  service(lbLocal(32000)),
			slices: []*discoveryv1.EndpointSlice{v4(
				ep{ip: "10.1.0.1", ready: ptr.To(false), serving: ptr.To(true), terminating: ptr.To(true)},
				ep{ip: "10.1.0.2", ready: ptr.To(false)},
			)},
			want: &healthCheck{Service: web, Port: 32000, LocalEndpoints: 0},
		},
		{
			name:   "an endpoint counts once across ports and slices",
			svc:    service(lbLocal(32000)),
			slices: []*discoveryv1.EndpointSlice{twoPorts(v4(ep{ip: "10.1.0.1"})), v4(ep{ip: "10.1.0.1"})},
			want:   &healthCheck{Service: web, Port: 32000, LocalEndpoints: 1},
		},
		{
			name: "an address that is not an IP counts; a mapped one is its IPv4 address",
			svc:  service(lbLocal(32000)),
			slices: []*discoveryv1.EndpointSlice{v4(ep{ip: "10.1.0.1"}, ep{ip: "::ffff:10.1.0.2"}, ep{ip: "10.1.0.2"}),
				endpointSlice(discoveryv1.AddressTypeFQDN, ep{ip: "web.example"})},
			want: &healthCheck{Service: web, Port: 32000, LocalEndpoints: 3},
		},
		{
			name: "a Cluster LoadBalancer has none",
			svc: service(lbLocal(32000), func(s *corev1.Service) {
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
			}),
		},
		{
			name: "a Local LoadBalancer without a health check node port has none",
			svc:  service(lbLocal(0)),
		},
		{
			name: "a NodePort Service has none",
			svc:  service(lbLocal(32000), func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }),
		},
		{
			name: "a Service left to another proxy has none",
			svc: service(lbLocal(32000), func(s *corev1.Service) {
				s.Labels = map[string]string{k8s.LabelServiceProxyName: "other"}
			}),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := desiredHealthCheck(tc.svc, compact(tc.slices...), thisNode)
			switch {
			case tc.want == nil && ok:
				t.Errorf("got %+v, want none", got)
			case tc.want != nil && (!ok || got != *tc.want):
				t.Errorf("got %+v (%v), want %+v", got, ok, *tc.want)
			}
		})
	}
}

func TestHealthServersOpenUpdateMoveAndClose(t *testing.T) {
	ports := newTestPorts()
	var unhealthy atomic.Bool
	h := newHealthServers(slog.Default(), ports.listen, func() bool { return !unhealthy.Load() })
	t.Cleanup(h.closeAll)
	a := types.NamespacedName{Namespace: "ns", Name: "a"}

	h.apply(map[uint16]healthCheck{32000: {Service: a, Port: 32000, LocalEndpoints: 1}}, nil)
	url := ports.url(":32000", "/")
	p := get(t, url)
	wantProbe(t, "one endpoint", p, 200, `{"service":{"namespace":"ns","name":"a"},"localEndpoints":1,"serviceProxyHealthy":true}`)
	if p.header.Get("Content-Type") != "application/json" || p.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v, want kube-proxy's", p.header)
	}

	// A new count is served by the same listener.
	h.apply(map[uint16]healthCheck{32000: {Service: a, Port: 32000, LocalEndpoints: 0}}, nil)
	wantProbe(t, "no endpoint", get(t, url), 503, `{"service":{"namespace":"ns","name":"a"},"localEndpoints":0,"serviceProxyHealthy":true}`)

	// An unhealthy proxy fails the probe whatever the count.
	h.apply(map[uint16]healthCheck{32000: {Service: a, Port: 32000, LocalEndpoints: 3}}, nil)
	unhealthy.Store(true)
	wantProbe(t, "proxy unhealthy", get(t, url), 503, `{"service":{"namespace":"ns","name":"a"},"localEndpoints":3,"serviceProxyHealthy":false}`)
	unhealthy.Store(false)

	// Listen addresses narrowed: one listener per address.
	h.apply(map[uint16]healthCheck{32000: {Service: a, Port: 32000, LocalEndpoints: 3}}, addrs("192.0.2.1", "2001:db8::1"))
	wantClosed(t, "listener on every address after narrowing", url)
	for _, addr := range []string{"192.0.2.1:32000", "[2001:db8::1]:32000"} {
		wantProbe(t, addr, get(t, ports.url(addr, "/")), 200, "")
	}

	h.apply(nil, nil)
	for _, addr := range []string{"192.0.2.1:32000", "[2001:db8::1]:32000"} {
		wantClosed(t, addr+" after the Service went", ports.url(addr, "/"))
	}
}

func TestHealthCheckPortThatCannotBeBoundIsRetried(t *testing.T) {
	ports := newTestPorts()
	h := newHealthServers(slog.Default(), ports.listen, func() bool { return true })
	t.Cleanup(h.closeAll)
	a := types.NamespacedName{Namespace: "ns", Name: "a"}
	b := types.NamespacedName{Namespace: "ns", Name: "b"}
	want := map[uint16]healthCheck{
		32000: {Service: a, Port: 32000, LocalEndpoints: 1},
		32001: {Service: b, Port: 32001, LocalEndpoints: 1},
	}
	ports.refuse[":32000"] = true
	h.apply(want, nil)
	if ports.url(":32000", "/") != "" {
		t.Fatal("a refused port was bound")
	}
	if d := h.details(); len(d) != 2 || d[0].Error == "" || d[1].Error != "" {
		t.Errorf("details %+v, want port 32000 not open and why", d)
	}
	wantProbe(t, "the other Service's port", get(t, ports.url(":32001", "/")), 200, "")

	delete(ports.refuse, ":32000")
	h.apply(want, nil)
	wantProbe(t, "the port once free", get(t, ports.url(":32000", "/")), 200, "")
}

func TestHealthCheckPortClashKeepsTheFirstService(t *testing.T) {
	a := types.NamespacedName{Namespace: "ns", Name: "a"}
	b := types.NamespacedName{Namespace: "ns", Name: "b"}
	got, clashes := byPort(map[types.NamespacedName]healthCheck{
		b: {Service: b, Port: 32000}, a: {Service: a, Port: 32000},
	})
	if got[32000].Service != a || len(clashes) != 1 || clashes[0].Service != b {
		t.Errorf("got %v, clashes %v; want a to keep the port", got, clashes)
	}
}

func TestHealthCheckNodePortFollowsTheService(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	h.store(namedService("web", "10.96.0.10", lbLocal(32000)))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}, ep{ip: "10.1.0.2"}, ep{ip: "10.2.0.1", node: "node-b"}))
	h.sync(true)
	url := h.ports.url(":32000", "/")
	p := get(t, url)
	wantProbe(t, "two local endpoints", p, 200, `{"service":{"namespace":"ns","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}`)
	if p.header.Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type %q", p.header.Get("Content-Type"))
	}

	// The local endpoints go; the remote one does not count.
	h.store(sliceFor("web", ep{ip: "10.2.0.1", node: "node-b"}))
	h.sync(false)
	wantProbe(t, "no local endpoint", get(t, url), 503, `{"service":{"namespace":"ns","name":"web"},"localEndpoints":0,"serviceProxyHealthy":true}`)

	h.store(sliceFor("web", ep{ip: "10.1.0.3"}))
	h.sync(false)
	wantProbe(t, "an endpoint back", get(t, url), 200, `{"service":{"namespace":"ns","name":"web"},"localEndpoints":1,"serviceProxyHealthy":true}`)

	// A new port moves the listener.
	h.store(namedService("web", "10.96.0.10", lbLocal(32001)))
	h.sync(false)
	wantClosed(t, "old port", url)
	url = h.ports.url(":32001", "/")
	wantProbe(t, "new port", get(t, url), 200, `{"service":{"namespace":"ns","name":"web"},"localEndpoints":1,"serviceProxyHealthy":true}`)

	// Cluster policy: no health check node port.
	h.store(namedService("web", "10.96.0.10", lbLocal(0), func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}))
	h.sync(false)
	wantClosed(t, "port after the switch to Cluster", url)

	h.store(namedService("web", "10.96.0.10", lbLocal(32002)))
	h.sync(false)
	url = h.ports.url(":32002", "/")
	wantProbe(t, "Local again", get(t, url), 200, "")
	h.remove(namedService("web", "10.96.0.10"))
	h.sync(false)
	wantClosed(t, "port after the Service was deleted", url)
}

func TestHealthCheckNodePortListensOnNodePortAddresses(t *testing.T) {
	h := newHarness(t, newFakeKernel(), func(c *config.ServiceProxy) {
		c.NodePortAddresses = []config.Prefix{{Prefix: netip.MustParsePrefix("192.168.1.0/24")}}
	})
	h.store(namedService("web", "10.96.0.10", lbLocal(32000)))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}))
	h.sync(true)
	if u := h.ports.url(":32000", "/"); u != "" {
		t.Errorf("listened on every address with nodeport_addresses set")
	}
	wantProbe(t, "node address", get(t, h.ports.url("192.168.1.10:32000", "/")), 200, "")
}

func TestProxyHealthz(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	h.c.openHealthz() // as Run does, before the first sync
	url := h.ports.url("0.0.0.0:10256", "/healthz")
	p := get(t, url)
	wantProbe(t, "before the first sync", p, 503, "")
	if !strings.Contains(p.body, `"nodeEligible":true`) {
		t.Errorf("body %s, want kube-proxy's fields", p.body)
	}
	h.store(namedService("web", "10.96.0.10"))
	h.sync(true)
	p = get(t, url)
	wantProbe(t, "after the first sync", p, 200, "")
	for _, field := range []string{`"lastUpdated":`, `"currentTime":`, `"nodeEligible":true`} {
		if !strings.Contains(p.body, field) {
			t.Errorf("body %s lacks %s", p.body, field)
		}
	}

	node := func(mod func(*corev1.Node)) {
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: thisNode},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "192.168.1.10"},
			}},
		}
		mod(n)
		h.store(n)
	}
	node(func(n *corev1.Node) { n.Spec.Unschedulable = true })
	wantProbe(t, "cordoned, as kube-proxy", get(t, url), 200, "")
	node(func(n *corev1.Node) {
		n.Spec.Taints = []corev1.Taint{{Key: toBeDeletedTaint, Effect: corev1.TaintEffectNoSchedule}}
	})
	p = get(t, url)
	wantProbe(t, "tainted for deletion", p, 503, "")
	if !strings.Contains(p.body, `"nodeEligible":false`) {
		t.Errorf("body %s, want nodeEligible false", p.body)
	}
	wantProbe(t, "livez ignores the node", get(t, h.ports.url("0.0.0.0:10256", "/livez")), 200, "")
	node(func(n *corev1.Node) { n.DeletionTimestamp = ptr.To(metav1.Now()) })
	wantProbe(t, "being deleted", get(t, url), 503, "")
	node(func(n *corev1.Node) {})
	wantProbe(t, "back in service", get(t, url), 200, "")

	// A change not synced within two sync periods makes the proxy unhealthy.
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	h.c.health.now = func() time.Time { return time.Unix(0, now.Load()) }
	h.c.health.queued()
	wantProbe(t, "a change waiting", get(t, url), 200, "")
	now.Add(int64(2 * h.c.cfg.SyncPeriod.Duration))
	wantProbe(t, "a change waiting too long", get(t, url), 503, "")
	h.sync(false)
	wantProbe(t, "synced again", get(t, url), 200, "")
}

func TestProxyHealthKeepsChangesOfAFailedSyncWaiting(t *testing.T) {
	now := time.Unix(1000, 0)
	p := &proxyHealth{now: func() time.Time { return now }, timeout: time.Minute}
	p.synced(p.syncing(), nil)
	p.queued()
	since := p.syncing()
	now = now.Add(30 * time.Second)
	p.queued() // arrives during the sync
	p.synced(since, fmt.Errorf("boom"))
	now = now.Add(31 * time.Second)
	if ok, _ := p.healthy(); ok {
		t.Error("healthy although the oldest change waited over the timeout")
	}
	p.synced(p.syncing(), nil)
	if ok, _ := p.healthy(); !ok {
		t.Error("unhealthy after a successful sync")
	}
}

func TestHealthzPortThatCannotBeBoundIsRetriedAtTheNextSync(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	h.ports.refuse["0.0.0.0:10256"] = true
	h.c.openHealthz()
	h.sync(true)
	delete(h.ports.refuse, "0.0.0.0:10256")
	h.sync(false)
	wantProbe(t, "healthz once the port is free", get(t, h.ports.url("0.0.0.0:10256", "/healthz")), 200, "")
}
