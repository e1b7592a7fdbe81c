package proxy

import (
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
)

func TestTimeoutsDiffer(t *testing.T) {
	kernel := ipvs.Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second}
	tests := []struct {
		name string
		want ipvs.Timeouts
		diff bool
	}{
		{"nothing configured never differs", ipvs.Timeouts{}, false},
		{"configured values equal to the kernel's do not differ", ipvs.Timeouts{TCP: 900 * time.Second, UDP: 300 * time.Second}, false},
		{"one configured value the kernel lacks differs", ipvs.Timeouts{TCPFin: 30 * time.Second}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := timeoutsDiffer(kernel, tt.want); got != tt.diff {
				t.Errorf("timeoutsDiffer(%s, %s) = %v, want %v", kernel, tt.want, got, tt.diff)
			}
		})
	}
}

func withTimeouts(tcp, tcpFin, udp time.Duration) func(*config.ServiceProxy) {
	return func(c *config.ServiceProxy) {
		c.IPVSTCPTimeout.Duration, c.IPVSTCPFinTimeout.Duration, c.IPVSUDPTimeout.Duration = tcp, tcpFin, udp
	}
}

func TestFullSyncSetsConfiguredIPVSTimeoutsOnlyWhenTheyDiffer(t *testing.T) {
	h := newHarness(t, newFakeKernel(), withTimeouts(time.Hour, 30*time.Second, 0))
	h.sync(true)
	h.wantWrites("set timeouts tcp 3600s tcpfin 30s udp 0s")
	want := ipvs.Timeouts{TCP: time.Hour, TCPFin: 30 * time.Second, UDP: 300 * time.Second} // UDP: the kernel's
	if got, _ := h.kernel.ipvs.Timeouts(); got != want {
		t.Errorf("kernel timeouts = %s, want %s", got, want)
	}
	d := h.c.Details().(Details).IPVSTimeouts
	if d.TCP.Duration != want.TCP || d.TCPFin.Duration != want.TCPFin || d.UDP.Duration != want.UDP {
		t.Errorf("status shows %+v, want %s", d, want)
	}

	h.sync(true)
	h.wantWrites()

	// Someone runs ipvsadm --set: the next full sync puts the configured value back,
	// a partial sync leaves timeouts alone.
	if err := h.kernel.ipvs.SetTimeouts(ipvs.Timeouts{TCP: 900 * time.Second}); err != nil {
		t.Fatal(err)
	}
	h.kernel.ipvs.ResetWrites()
	h.sync(false)
	h.wantWrites()
	h.sync(true)
	h.wantWrites("set timeouts tcp 3600s tcpfin 30s udp 0s")
}

func TestUnsetIPVSTimeoutsLeaveTheKernelsAndAreShown(t *testing.T) {
	h := newHarness(t, newFakeKernel())
	h.sync(true)
	h.wantWrites()
	d := h.c.Details().(Details).IPVSTimeouts
	if d.TCP.Duration != 900*time.Second || d.TCPFin.Duration != 120*time.Second || d.UDP.Duration != 300*time.Second {
		t.Errorf("status shows %+v, want the kernel's 900s, 120s, 300s", d)
	}
}
