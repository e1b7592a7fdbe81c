//go:build integration

package netpol

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestRestartFindsNothingToWrite applies policies of every kind (selector, namespace
// and ipBlock peers, named and numeric ports and ranges, TCP/UDP/SCTP, egress, beta
// isolation, drop logging, pods isolated until enforced) to the kernel for both
// families, then applies them again with a fresh writer, as a restarted daemon does.
// Every rule is written in the form iptables-save reads back, so the restart writes
// nothing: not even the enforced ledger changes.
func TestRestartFindsNothingToWrite(t *testing.T) {
	ns := tnetns.NewNS(t, "restart", t.Name())
	dp, err := KernelDataplane(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	idx := fixture()
	for _, byName := range idx.Pods {
		for _, p := range byName {
			p.IPs = append(p.IPs, netip.MustParseAddr("fd00::"+strings.ReplaceAll(p.IPs[0].String(), ".", ":")))
		}
	}
	policies := []*networkingv1.NetworkPolicy{
		policy("x", "web", l("app", "a"),
			ingress(port(tcp, intstr.FromString("http")), pods(l("app", "b")), nss(l("team", "b"))),
			ingress(port(udp, intstr.FromInt32(5000), 5100), block("203.0.113.0/24", "203.0.113.0/29"), block("2001:db8::/32", "2001:db8::/48"))),
		policy("y", "egress", nil, types(networkingv1.PolicyTypeEgress),
			egress(port(sctp, intstr.FromInt32(9)), both(l("app", "a"), l("ns", "x"))),
			egress(port(udp, intstr.FromString("dns")))),
		policy("y", "deny", nil),
	}
	for _, ipt := range dp.IPTables {
		o := opts()
		o.Family = ipt.Family()
		o.LogDrops, o.NFLOGGroup, o.LogRatePerMinute = true, 100, 10
		o.BetaNamespaceIsolation = true
		o.IsolateUntilEnforced, o.PodCIDRs = true, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
		if o.Family == ipfamily.IPv6 {
			o.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00::/64")}
		}
		d := compileAll(idx, o, policies)
		if _, err := newWriter(ipt, dp.IPSets, slog.Default()).Apply(&d.Ruleset, true); err != nil {
			t.Fatal(err)
		}
		// A restart reads the kernel in its first full sync, or ahead of it while the
		// informers list (Controller.Prepare); either way it finds nothing to write.
		for _, readAhead := range []bool{false, true} {
			w := newWriter(ipt, dp.IPSets, slog.Default())
			if readAhead {
				if err := w.ReadAhead(); err != nil {
					t.Fatal(err)
				}
			}
			st, err := w.Apply(&d.Ruleset, true)
			if err != nil {
				t.Fatal(err)
			}
			if st.Writes() != 0 {
				t.Errorf("%s, read ahead %v: the restart rewrote %+v", o.Family, readAhead, st)
			}
		}
		if o.Family == ipfamily.IPv6 && d.Rules < 20 {
			t.Errorf("IPv6: only %d rules; the pods' IPv6 addresses were not used", d.Rules)
		}
	}
}
