package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// ErrSCTPUnsupported means the kernel has no SCTP (this host's kernel has none; the
// VM's Debian kernel loads sctp.ko).
var ErrSCTPUnsupported = errors.New("kernel has no SCTP sockets")

func unavailableSCTP(t testing.TB, err error) {
	t.Helper()
	testenv.Unavailable(t, "%v", err)
}

// Go's net package has no SCTP, so the probe uses one-to-one style SCTP sockets
// (SOCK_STREAM) through the runtime poller: os.File gives deadlines and Close that
// wakes a blocked Accept.

func sctpSocket(family int) (*os.File, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT) {
		return nil, ErrSCTPUnsupported
	}
	if err != nil {
		return nil, fmt.Errorf("sctp socket: %w", err)
	}
	return os.NewFile(uintptr(fd), "sctp"), nil
}

// sctpListener accepts SCTP associations on all IPv4 and IPv6 addresses.
type sctpListener struct {
	file *os.File
	port int
}

func listenSCTP(port int) (*sctpListener, error) {
	f, err := sctpSocket(unix.AF_INET6)
	if err != nil {
		return nil, err
	}
	err = control(f, func(fd int) error {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet6{Port: port}); err != nil {
			return err
		}
		if err := unix.Listen(fd, 64); err != nil {
			return err
		}
		sa, err := unix.Getsockname(fd)
		if err == nil {
			port = sa.(*unix.SockaddrInet6).Port
		}
		return err
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sctp listen on port %d: %w", port, err)
	}
	return &sctpListener{file: f, port: port}, nil
}

// Accept implements net.Listener.
func (l *sctpListener) Accept() (net.Conn, error) {
	rc, err := l.file.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		nfd    int
		remote unix.Sockaddr
		aerr   error
	)
	err = rc.Read(func(fd uintptr) bool {
		nfd, remote, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		return !errors.Is(aerr, unix.EAGAIN)
	})
	if err != nil {
		return nil, err
	}
	if aerr != nil {
		return nil, aerr
	}
	return &sctpConn{File: os.NewFile(uintptr(nfd), "sctp"), remote: sockaddrToAddrPort(remote)}, nil
}

// Close implements net.Listener.
func (l *sctpListener) Close() error { return l.file.Close() }

// Addr implements net.Listener.
func (l *sctpListener) Addr() net.Addr {
	return sctpAddr(netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(l.port)))
}

// sctpConn is one SCTP association.
type sctpConn struct {
	*os.File
	remote netip.AddrPort
}

func (c *sctpConn) LocalAddr() net.Addr  { return sctpAddr{} }
func (c *sctpConn) RemoteAddr() net.Addr { return sctpAddr(c.remote) }

// sctpAddr prints like a TCP address, which is what probe replies carry.
type sctpAddr netip.AddrPort

func (a sctpAddr) Network() string { return "sctp" }
func (a sctpAddr) String() string  { return netip.AddrPort(a).String() }

// dialSCTP opens an association to target, giving up at deadline.
func dialSCTP(target netip.AddrPort, deadline time.Time) (*sctpConn, error) {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(target.Port()), Addr: target.Addr().As16()})
	if target.Addr().Unmap().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(target.Port()), Addr: target.Addr().Unmap().As4()}
	}
	f, err := sctpSocket(family)
	if err != nil {
		return nil, err
	}
	if err := f.SetDeadline(deadline); err != nil {
		f.Close()
		return nil, err
	}
	var pending bool
	err = control(f, func(fd int) error {
		err := unix.Connect(fd, sa)
		pending = errors.Is(err, unix.EINPROGRESS)
		if pending {
			return nil
		}
		return err
	})
	if err == nil && pending {
		err = waitConnected(f)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &sctpConn{File: f, remote: target}, nil
}

// waitConnected waits until a non-blocking connect finishes (or the deadline passes).
func waitConnected(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var soErr error
	waited := false
	err = rc.Write(func(fd uintptr) bool {
		if !waited {
			// Returning false makes the poller wait until the socket is writable.
			waited = true
			return false
		}
		code, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			soErr = err
		} else if code != 0 {
			soErr = unix.Errno(code)
		}
		return true
	})
	if err != nil {
		return err
	}
	return soErr
}

func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func sockaddrToAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}
