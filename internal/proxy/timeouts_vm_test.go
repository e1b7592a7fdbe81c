//go:build vm

package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestKernelIPVSTimeoutsAreSetOnceAndReadBackByIpvsadm checks, with ipvsadm as the
// independent reader, that a full sync gives the kernel the configured timeouts,
// leaves an unset one as it was, and that a second full sync writes nothing.
func TestKernelIPVSTimeoutsAreSetOnceAndReadBackByIpvsadm(t *testing.T) {
	testenv.RequireVM(t)
	ns := netns.NewNS(t, "node", "timeouts")
	dp := testKernelDataplane(t, ns)
	timeouts := func() string {
		t.Helper()
		out := strings.TrimSpace(ns.Run(t, "ipvsadm", "-L", "--timeout"))
		if !strings.HasPrefix(out, "Timeout (tcp tcpfin udp): ") {
			t.Fatalf("ipvsadm -L --timeout: unexpected output %q", out)
		}
		return strings.TrimPrefix(out, "Timeout (tcp tcpfin udp): ")
	}
	before := strings.Fields(timeouts())
	if len(before) != 3 {
		t.Fatalf("ipvsadm shows %q, want three timeouts", before)
	}

	h := newHarnessOn(t, dp, withTimeouts(time.Hour, 30*time.Second, 0))
	h.store(namedService("web", "10.96.0.10"))
	h.store(sliceFor("web", ep{ip: "10.1.0.1"}))
	h.sync(true)
	if got, want := timeouts(), "3600 30 "+before[2]; got != want {
		t.Errorf("after a full sync ipvsadm shows timeouts %q, want %q (udp unset: the kernel's)", got, want)
	}
	d := h.c.Details().(Details).IPVSTimeouts
	if d.TCP.Duration != time.Hour || d.TCPFin.Duration != 30*time.Second {
		t.Errorf("status shows %+v, want tcp 1h, tcpfin 30s", d)
	}

	h.sync(true)
	if h.c.rec.writes != 0 {
		t.Errorf("a second full sync made %d IPVS writes, want none", h.c.rec.writes)
	}
}
