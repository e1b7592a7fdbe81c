package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
)

func TestStatusPrintsTheLoadBalancerAllocator(t *testing.T) {
	var rep daemon.StatusReport
	if err := json.Unmarshal([]byte(`{"ready": true, "time": "2026-01-02T10:00:30Z",
  "controllers": [{"name": "lballoc", "ready": true, "alive": true, "summary": "leading, 1 services with addresses"}],
  "details": {"lballoc": {"lease": "kube-system/kube-routerd-lballoc", "leader": "node-a", "leading": true,
    "pools": [{"family": "IPv4", "pools": ["192.0.2.0/30"], "size": 4, "used": 2}],
    "services": {"demo/web": ["192.0.2.0", "2001:db8::"]}, "held": {"192.0.2.3": "demo/other"},
    "problems": [{"service": "demo/late", "reason": "PoolExhausted", "message": "no free IPv4 address in the pools"}]}}}`), &rep); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	writeStatus(&b, rep)
	for _, want := range []string{
		"load-balancer allocator: allocating (Lease kube-system/kube-routerd-lballoc, leader node-a)",
		"  IPv4 pools 192.0.2.0/30: 2 of 4 addresses used",
		"  demo/web: 192.0.2.0, 2001:db8::",
		"  192.0.2.3 held by demo/other (not ours to assign)",
		"  demo/late PoolExhausted: no free IPv4 address in the pools",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, b.String())
		}
	}
}
