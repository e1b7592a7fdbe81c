package proxy

import (
	"bytes"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
)

func TestExternalIPOutsideTheRangesIsNotProgrammedAndIsReportedOnce(t *testing.T) {
	var logs bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })

	h := newHarness(t, newFakeKernel(), func(c *config.ServiceProxy) {
		c.ExternalIPRanges = []config.Prefix{{Prefix: netip.MustParsePrefix("203.0.113.0/24")}}
	})
	withIPs := func(ips ...string) func(*corev1.Service) {
		return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
	}
	h.store(namedService("web", "10.96.0.10", withIPs("203.0.113.5", "198.51.100.9")))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}))
	h.sync(true)
	h.sync(true) // a resync does not log it again
	h.wantIPVS(`
10.96.0.10:80/TCP rr
  -> 10.1.0.1:8080 weight 1
203.0.113.5:80/TCP rr
  -> 10.1.0.1:8080 weight 1`)
	if got, _ := h.kernel.dummy.Addrs(); slices.Contains(got, netip.MustParseAddr("198.51.100.9")) {
		t.Errorf("the refused external IP is on the dummy interface: %v", got)
	}
	if d := h.c.Details().(Details).RefusedAddresses; strings.Join(d["ns/web"], ",") != "198.51.100.9 (ExternalIP)" || len(d) != 1 {
		t.Errorf("status lists refused addresses %v, want ns/web: 198.51.100.9 (ExternalIP)", d)
	}
	if n := gaugeValue(t, h, "ExternalIP"); n != 1 {
		t.Errorf("refused ExternalIP gauge = %v, want 1", n)
	}
	if n := strings.Count(logs.String(), "not programming addresses outside"); n != 1 || !strings.Contains(logs.String(), "service=ns/web") {
		t.Errorf("want the refusal logged once with the Service's name, got %d lines:\n%s", n, logs.String())
	}

	// The Service drops the address: nothing is refused any more.
	h.store(namedService("web", "10.96.0.10", withIPs("203.0.113.5")))
	h.sync(false)
	if d := h.c.Details().(Details).RefusedAddresses; len(d) != 0 {
		t.Errorf("status still lists refused addresses %v", d)
	}
	if n := gaugeValue(t, h, "ExternalIP"); n != 0 {
		t.Errorf("refused ExternalIP gauge = %v, want 0", n)
	}
}

// gaugeValue reads the refused-address gauge of one kind as a scrape would.
func gaugeValue(t *testing.T, h *harness, kind string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(h.c.metrics.refused)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s sample of %s", kind, "kube_routerd_proxy_refused_addresses")
	return 0
}
