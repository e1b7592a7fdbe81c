//go:build vm

package netns

import (
	"net/netip"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// The host kernel has no SCTP; the VM's Debian kernel loads sctp.ko.
func TestSCTPProbeBetweenPodsAndAnIptablesDropBlocksIt(t *testing.T) {
	testenv.RequireVM(t)
	node := NewNode(t, NodeOptions{})
	a := node.AddPod(t, PodOptions{Name: "a"})
	b := node.AddPod(t, PodOptions{Name: "b"})
	srv := b.Serve(t, SCTP, 0)
	for _, dst := range []netip.Addr{b.IPv4, b.IPv6} {
		r := a.ExpectReply(t, SCTP, netip.AddrPortFrom(dst, uint16(srv.Port)), "b")
		if want := a.SameFamily(dst); r.Client.Addr() != want {
			t.Errorf("SCTP to %s: server saw the probe from %s, want %s", dst, r.Client.Addr(), want)
		}
	}
	node.Run(t, "iptables", "-w", "-I", "FORWARD", "-p", "sctp", "-d", b.IPv4.String(), "-j", "DROP")
	a.ExpectBlocked(t, SCTP, netip.AddrPortFrom(b.IPv4, uint16(srv.Port)))
	a.ExpectReply(t, SCTP, netip.AddrPortFrom(b.IPv6, uint16(srv.Port)), "b")
}
