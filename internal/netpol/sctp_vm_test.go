//go:build vm

package netpol

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// The host kernel has no SCTP, so a policy's SCTP ports are proven with real
// associations here: a policy allowing SCTP 80 to A/a lets SCTP 80 through and keeps
// SCTP 81 and TCP 80 out, over IPv4 and IPv6.
func TestSCTPPortPolicy(t *testing.T) {
	testenv.RequireVM(t)
	c := startCluster(t)
	server, client := c.pods["A/a"], c.pods["B/c"]
	for _, port := range []int{80, 81} {
		server.Serve(t, tnetns.SCTP, port)
	}
	type probe struct {
		proto tnetns.Proto
		port  int
		v6    bool
	}
	probes := []probe{
		{tnetns.SCTP, 80, false}, {tnetns.SCTP, 81, false}, {tnetns.TCP, 80, false},
		{tnetns.SCTP, 80, true}, {tnetns.SCTP, 81, true}, {tnetns.TCP, 80, true},
	}
	verdicts := func() string {
		var out []string
		for _, p := range probes {
			addr := server.IPv4
			if p.v6 {
				addr = server.IPv6
			}
			target := netip.AddrPortFrom(addr, uint16(p.port))
			_, err := client.Probe(t.Context(), p.proto, target)
			verdict := "ok"
			if err != nil {
				verdict = "blocked"
			}
			out = append(out, fmt.Sprintf("%s %s: %s", p.proto, target, verdict))
		}
		return strings.Join(out, "\n")
	}
	want := func(allowed func(probe) bool) string {
		var out []string
		for _, p := range probes {
			addr := server.IPv4
			if p.v6 {
				addr = server.IPv6
			}
			verdict := "blocked"
			if allowed(p) {
				verdict = "ok"
			}
			out = append(out, fmt.Sprintf("%s %s: %s", p.proto, netip.AddrPortFrom(addr, uint16(p.port)), verdict))
		}
		return strings.Join(out, "\n")
	}
	waitFor := func(step, expected string) {
		t.Helper()
		var got string
		testenv.Eventually(t, step, 60*time.Second, func() bool {
			got = verdicts()
			return got == expected
		})
		t.Logf("%s:\n%s", step, got)
	}

	waitFor("no policy: every server answers", want(func(probe) bool { return true }))
	c.setPolicies(t, policy(c.nsA, "sctp-80", map[string]string{"app": "a"}, ingress(port(sctp, intstr.FromInt32(80)))))
	waitFor("policy allows SCTP 80 only", want(func(p probe) bool { return p.proto == tnetns.SCTP && p.port == 80 }))
}
