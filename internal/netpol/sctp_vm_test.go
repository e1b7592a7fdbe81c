//go:build vm

package netpol

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
		serveSCTP(t, server.NS, port)
	}
	type probe struct {
		proto string
		port  int
		v6    bool
	}
	probes := []probe{{"sctp", 80, false}, {"sctp", 81, false}, {"tcp", 80, false}, {"sctp", 80, true}, {"sctp", 81, true}, {"tcp", 80, true}}
	verdicts := func() string {
		var out []string
		for _, p := range probes {
			addr := server.IPv4
			if p.v6 {
				addr = server.IPv6
			}
			target := netip.AddrPortFrom(addr, uint16(p.port))
			var err error
			if p.proto == "sctp" {
				err = probeSCTP(client.NS, target)
			} else {
				_, err = client.Probe(t.Context(), tnetns.TCP, target)
			}
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
	waitFor("policy allows SCTP 80 only", want(func(p probe) bool { return p.proto == "sctp" && p.port == 80 }))
}

// serveSCTP answers SCTP probes on port of every address of ns (IPv4 and IPv6) with
// "<label> <client address>", like the netns probe servers. Go has no SCTP in net,
// but a one-to-one style SCTP socket behaves as a stream socket, so net.FileListener
// can accept on it.
func serveSCTP(t *testing.T, ns *tnetns.NS, port int) {
	t.Helper()
	var fd int
	err := ns.Do(func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet6{Port: port}); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.Listen(fd, 16); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	})
	if err != nil {
		testenv.Unavailable(t, "SCTP listener in %s (sctp module?): %v", ns.Label, err)
	}
	f := os.NewFile(uintptr(fd), "sctp")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatalf("SCTP listener in %s: %v", ns.Label, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := conn.Read(make([]byte, 64)); err == nil {
					fmt.Fprintf(conn, "%s %s\n", ns.Label, conn.RemoteAddr())
				}
			}()
		}
	}()
}

// probeSCTP opens an SCTP association from ns to target, sends a probe and waits for
// the answer; it fails when the association or the answer does not come within
// tnetns.DefaultProbeTimeout.
func probeSCTP(ns *tnetns.NS, target netip.AddrPort) error {
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(target.Port()), Addr: target.Addr().As16()}
	if target.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(target.Port()), Addr: target.Addr().As4()}
	}
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		return err
	}); err != nil {
		return fmt.Errorf("SCTP socket in %s: %w", ns.Label, err)
	}
	defer unix.Close(fd)
	timeout := unix.NsecToTimeval(tnetns.DefaultProbeTimeout.Nanoseconds())
	for _, opt := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &timeout); err != nil {
			return err
		}
	}
	if err := unix.Connect(fd, sa); err != nil {
		return fmt.Errorf("SCTP connect from %s to %s: %w", ns.Label, target, err)
	}
	if _, err := unix.Write(fd, []byte("probe\n")); err != nil {
		return fmt.Errorf("SCTP send from %s to %s: %w", ns.Label, target, err)
	}
	buf := make([]byte, 256)
	n, err := unix.Read(fd, buf)
	if err != nil || n == 0 {
		return fmt.Errorf("SCTP probe from %s to %s: no answer: %v", ns.Label, target, err)
	}
	if !strings.HasSuffix(string(buf[:n]), "\n") {
		return fmt.Errorf("SCTP probe from %s to %s: malformed answer %q", ns.Label, target, buf[:n])
	}
	return nil
}
