package lballoc

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/loop"
)

// harness is a controller whose informer cache the test fills by hand, so it lags
// the API server as long as the test says, and whose status writes a fake API
// server answers (with a new resourceVersion) and records.
type harness struct {
	t      *testing.T
	c      *Controller
	store  cache.Indexer
	writes []string // "ns/name rv=<resourceVersion the patch carried> ingress=<ips>"
	nextRV int
}

func newHarness(t *testing.T, v4Pool string) *harness {
	t.Helper()
	h := &harness{t: t, nextRV: 100}
	cs := fake.NewClientset()
	cs.PrependReactor("patch", "services", h.answerPatch)
	factory := informers.NewSharedInformerFactory(cs, 0)
	cfg := config.Default().LoadBalancer
	cfg.Enabled = true
	var p config.IPPool
	if err := p.UnmarshalText([]byte(v4Pool)); err != nil {
		t.Fatal(err)
	}
	cfg.IPv4Pools = []config.IPPool{p}
	c, err := New(daemon.Env{Client: cs, Informers: factory, NodeName: "a", Log: slog.New(slog.DiscardHandler)}, Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	h.c, h.store = c, factory.Core().V1().Services().Informer().GetIndexer()
	return h
}

// answerPatch records a status patch and answers it with the patched Service.
func (h *harness) answerPatch(a k8stesting.Action) (bool, runtime.Object, error) {
	p := a.(k8stesting.PatchAction)
	var body struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Status corev1.ServiceStatus `json:"status"`
	}
	if err := json.Unmarshal(p.GetPatch(), &body); err != nil {
		h.t.Fatal(err)
	}
	var ips []string
	for _, in := range body.Status.LoadBalancer.Ingress {
		ips = append(ips, in.IP)
	}
	h.writes = append(h.writes, p.GetNamespace()+"/"+p.GetName()+" rv="+body.Metadata.ResourceVersion+" ingress="+strings.Join(ips, ","))
	obj, _, _ := h.store.GetByKey(p.GetNamespace() + "/" + p.GetName())
	got := obj.(*corev1.Service).DeepCopy()
	got.Status = body.Status
	h.nextRV++
	got.ResourceVersion = strconv.Itoa(h.nextRV)
	return true, got, nil
}

// cache puts a LoadBalancer Service of the default class into the informer cache
// only, created minute minutes after the epoch.
func (h *harness) cache(name string, minute int, rv string, ingress ...string) {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, ResourceVersion: rv,
			CreationTimestamp: metav1.NewTime(epoch.Add(time.Duration(minute) * time.Minute))},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicySingleStack)},
	}
	for _, ip := range ingress {
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
	if err := h.store.Update(s); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) sync() []string {
	h.t.Helper()
	h.writes = nil
	if _, err := h.c.sync(context.Background(), true); err != nil {
		h.t.Fatal(err)
	}
	return h.writes
}

func TestSyncWritesWithTheDecidedVersionAndLosersFirst(t *testing.T) {
	h := newHarness(t, "192.0.2.0/31")
	// m moves to the address it asks for; a, newer but first by name, gets the one
	// m gives up. m's write goes first, so no moment shows 192.0.2.0 twice.
	h.cache("m", 1, "11", "192.0.2.0")
	obj, _, _ := h.store.GetByKey("ns/m")
	obj.(*corev1.Service).Spec.LoadBalancerIP = "192.0.2.1"
	h.cache("a", 2, "12")
	want := []string{"ns/m rv=11 ingress=192.0.2.1", "ns/a rv=12 ingress=192.0.2.0"}
	if got := h.sync(); !slices.Equal(got, want) {
		t.Errorf("writes:\n got %q\nwant %q", got, want)
	}
}

// After a write, the cache may show the Service's old version for a while; the
// next decision must not hand the written address to another Service meanwhile.
func TestSyncRemembersItsWritesUntilTheCacheShowsThem(t *testing.T) {
	h := newHarness(t, "192.0.2.0/30")
	h.cache("x", 2, "20")
	if got, want := h.sync(), []string{"ns/x rv=20 ingress=192.0.2.0"}; !slices.Equal(got, want) {
		t.Fatalf("first writes %q, want %q", got, want)
	}
	// y, older than x (created in the same second, say), arrives while the cache
	// still shows x without its address.
	h.cache("y", 1, "21")
	if got, want := h.sync(), []string{"ns/y rv=21 ingress=192.0.2.1"}; !slices.Equal(got, want) {
		t.Errorf("writes with the cache behind %q, want %q (x keeps 192.0.2.0)", got, want)
	}
	// Once the cache caught up, the remembered write is dropped.
	h.cache("x", 2, "101", "192.0.2.0")
	h.cache("y", 1, "102", "192.0.2.1")
	if got := h.sync(); len(got) != 0 {
		t.Errorf("writes after the cache caught up: %q", got)
	}
	if len(h.c.written) != 0 {
		t.Errorf("still remembered: %v", h.c.written)
	}
}

// A new leader decides only once its cache holds every Service of the API server
// in that version or a newer one.
func TestCacheLaggingNamesAServiceTheCacheHoldsOlderOrNotAtAll(t *testing.T) {
	h := newHarness(t, "192.0.2.0/31")
	h.cache("a", 1, "10")
	h.cache("b", 1, "30")
	live := func(rvs ...string) []corev1.Service {
		var out []corev1.Service
		for i, rv := range rvs {
			out = append(out, corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: string(rune('a' + i)), ResourceVersion: rv}})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		live []corev1.Service
		want string
	}{
		{"the same versions", live("10", "30"), ""},
		{"the cache is newer", live("9", "29"), ""},
		{"the cache holds an older version", live("10", "31"), "ns/b"},
		{"the cache lacks a Service", live("10", "30", "5"), "ns/c"},
	} {
		if got := h.c.cacheLagging(context.Background(), tc.live); got != tc.want {
			t.Errorf("%s: lagging %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestOnlyChangesThatMatterToAllocationTriggerASync(t *testing.T) {
	lbSvc := func(mut func(*corev1.Service)) *corev1.Service {
		s := &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer}}
		if mut != nil {
			mut(s)
		}
		return s
	}
	plain := &corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP}}
	for _, tc := range []struct {
		name     string
		old, new *corev1.Service
		want     bool
	}{
		{"a LoadBalancer Service added", nil, lbSvc(nil), true},
		{"a ClusterIP Service added", nil, plain, false},
		{"a LoadBalancer Service deleted", lbSvc(nil), nil, true},
		{"the type changed", lbSvc(nil), plain, true},
		{"the class changed", lbSvc(nil), lbSvc(func(s *corev1.Service) { s.Spec.LoadBalancerClass = ptr.To("x") }), true},
		{"the families changed", lbSvc(nil), lbSvc(func(s *corev1.Service) { s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol} }), true},
		{"the requested address changed", lbSvc(nil), lbSvc(func(s *corev1.Service) { s.Spec.LoadBalancerIP = "192.0.2.1" }), true},
		{"the status changed", lbSvc(nil), lbSvc(func(s *corev1.Service) {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.1"}}
		}), true},
		{"only the ports changed", lbSvc(nil), lbSvc(func(s *corev1.Service) { s.Spec.Ports = []corev1.ServicePort{{Port: 81}} }), false},
	} {
		ch := loop.Change{}
		if tc.old != nil {
			ch.Old = tc.old
		}
		if tc.new != nil {
			ch.New = tc.new
		}
		if got := mattersToAllocation(ch); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
