package netns

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Proto is a transport protocol a probe can use.
type Proto string

// The protocols Serve and Probe speak.
const (
	TCP  Proto = "tcp"
	UDP  Proto = "udp"
	SCTP Proto = "sctp" // needs the sctp kernel module: the VM has it, the host does not
)

// DefaultProbeTimeout bounds a probe whose context has no deadline. A probe that must
// fail (blocked by a rule) takes this long, so keep it short.
const DefaultProbeTimeout = 2 * time.Second

// probeRequest is what a probe sends; servers answer any request line.
const probeRequest = "probe\n"

// Reply is a server's answer to a probe: who answered, and from which address it saw
// the probe come (to check SNAT and source preservation).
type Reply struct {
	Server string
	Client netip.AddrPort
}

func (r Reply) String() string { return r.Server + " " + r.Client.String() }

// replyTo formats the answer a server sends to a client it saw at remote.
func replyTo(label string, remote net.Addr) string {
	return label + " " + remote.String() + "\n"
}

// parseReply reads a server's answer.
func parseReply(line string) (Reply, error) {
	server, client, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok {
		return Reply{}, fmt.Errorf("malformed probe reply %q", line)
	}
	ap, err := netip.ParseAddrPort(client)
	if err != nil {
		return Reply{}, fmt.Errorf("malformed probe reply %q: %w", line, err)
	}
	return Reply{Server: server, Client: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// Server is a probe server running inside a namespace until the test ends.
type Server struct {
	// Proto is what it speaks (TCP, UDP, or "http").
	Proto Proto
	// Port is the port it listens on, on all addresses of the namespace.
	Port int
}

// Serve starts a probe server on port (0 picks one) on all IPv4 and IPv6 addresses of
// the namespace. It answers each probe with the namespace's Label and the client
// address it saw. It stops when the test ends.
func (ns *NS) Serve(t testing.TB, proto Proto, port int) *Server {
	t.Helper()
	var (
		stop func() error
		got  int
	)
	err := ns.Do(func() error {
		var err error
		switch proto {
		case TCP:
			var ln net.Listener
			if ln, err = net.Listen("tcp", ":"+strconv.Itoa(port)); err == nil {
				got, stop = ln.Addr().(*net.TCPAddr).Port, ln.Close
				go serveStream(ln, ns.Label)
			}
		case UDP:
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp", ":"+strconv.Itoa(port)); err == nil {
				got, stop = pc.LocalAddr().(*net.UDPAddr).Port, pc.Close
				go serveDatagrams(pc, ns.Label)
			}
		case SCTP:
			var ln net.Listener
			if ln, err = listenSCTP(port); err == nil {
				got, stop = ln.Addr().(*net.TCPAddr).Port, ln.Close
				go serveStream(ln, ns.Label)
			}
		default:
			err = fmt.Errorf("unknown protocol %q", proto)
		}
		return err
	})
	if err != nil {
		t.Fatalf("%s server on port %d in %s: %v", proto, port, ns.Label, err)
	}
	t.Cleanup(func() { _ = stop() })
	return &Server{Proto: proto, Port: got}
}

// ServeHTTP starts an HTTP server on port (0 picks one) whose every response body is
// the probe reply (namespace Label and the client address it saw).
func (ns *NS) ServeHTTP(t testing.TB, port int) *Server {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", ":"+strconv.Itoa(port))
		return err
	})
	if err != nil {
		t.Fatalf("http server on port %d in %s: %v", port, ns.Label, err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, ns.Label+" "+r.RemoteAddr+"\n")
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { _ = srv.Close() })
	return &Server{Proto: "http", Port: ln.Addr().(*net.TCPAddr).Port}
}

func serveStream(ln net.Listener, label string) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
				return
			}
			_, _ = io.WriteString(conn, replyTo(label, conn.RemoteAddr()))
		}()
	}
}

func serveDatagrams(pc net.PacketConn, label string) {
	buf := make([]byte, 1500)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(replyTo(label, from)), from)
	}
}

// Probe connects from this namespace to target, sends a probe and returns the reply.
// It fails when nothing answers before ctx ends (or DefaultProbeTimeout without a
// deadline), which is how a blocked path shows.
func (ns *NS) Probe(ctx context.Context, proto Proto, target netip.AddrPort) (Reply, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var conn io.ReadWriteCloser
	err := ns.Do(func() error {
		var err error
		switch proto {
		case TCP, UDP:
			var d net.Dialer
			var c net.Conn
			if c, err = d.DialContext(ctx, string(proto), target.String()); err == nil {
				err = c.SetDeadline(deadline)
				conn = c
			}
		case SCTP:
			var c net.Conn
			if c, err = dialSCTP(deadline, target); err == nil {
				err = c.SetDeadline(deadline)
				conn = c
			}
		default:
			err = fmt.Errorf("unknown protocol %q", proto)
		}
		return err
	})
	if err != nil {
		return Reply{}, fmt.Errorf("%s probe from %s to %s: %w", proto, ns.Label, target, err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, probeRequest); err != nil {
		return Reply{}, fmt.Errorf("%s probe from %s to %s: send: %w", proto, ns.Label, target, err)
	}
	var line string
	if proto == UDP {
		buf := make([]byte, 1500)
		var n int
		n, err = conn.Read(buf)
		line = string(buf[:n])
	} else {
		line, err = bufio.NewReader(conn).ReadString('\n')
	}
	if err != nil {
		return Reply{}, fmt.Errorf("%s probe from %s to %s: no reply: %w", proto, ns.Label, target, err)
	}
	return parseReply(line)
}

// HTTPGet fetches url from inside this namespace and returns the reply of a ServeHTTP
// server. A status other than 200 is an error.
func (ns *NS) HTTPGet(ctx context.Context, url string) (Reply, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := ns.Do(func() error {
				var d net.Dialer
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Reply{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return Reply{}, fmt.Errorf("GET %s from %s: %w", url, ns.Label, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return Reply{}, fmt.Errorf("GET %s from %s: read body: %w", url, ns.Label, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Reply{}, fmt.Errorf("GET %s from %s: status %s", url, ns.Label, resp.Status)
	}
	return parseReply(string(body))
}

// ExpectReply probes target and fails the test unless the server named server answers.
func (ns *NS) ExpectReply(t testing.TB, proto Proto, target netip.AddrPort, server string) Reply {
	t.Helper()
	r, err := ns.Probe(context.Background(), proto, target)
	if err != nil {
		t.Fatalf("expected %s to reach %s: %v", ns.Label, server, err)
	}
	if r.Server != server {
		t.Fatalf("%s probe from %s to %s: answered by %q, want %q", proto, ns.Label, target, r.Server, server)
	}
	return r
}

// ExpectBlocked probes target and fails the test if anything answers within
// DefaultProbeTimeout.
func (ns *NS) ExpectBlocked(t testing.TB, proto Proto, target netip.AddrPort) {
	t.Helper()
	if r, err := ns.Probe(context.Background(), proto, target); err == nil {
		t.Fatalf("%s probe from %s to %s: want blocked, answered by %s", proto, ns.Label, target, r)
	}
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultProbeTimeout)
}

// Go's net package has no SCTP, but a one-to-one style SCTP socket reads and writes
// like a TCP one, so the net package serves it once it holds the descriptor.

// listenSCTP listens for SCTP associations on port of every IPv4 and IPv6 address.
func listenSCTP(port int) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return nil, fmt.Errorf("SCTP socket (is the sctp module loaded?): %w", err)
	}
	f := os.NewFile(uintptr(fd), "sctp-listener")
	defer f.Close()
	if err := unix.Bind(fd, &unix.SockaddrInet6{Port: port}); err != nil {
		return nil, err
	}
	if err := unix.Listen(fd, 64); err != nil {
		return nil, err
	}
	return net.FileListener(f)
}

// dialSCTP opens an SCTP association to target, giving up at deadline.
func dialSCTP(deadline time.Time, target netip.AddrPort) (net.Conn, error) {
	var (
		family int
		sa     unix.Sockaddr
	)
	if a := target.Addr(); a.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(target.Port()), Addr: a.As4()}
	} else {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Port: int(target.Port()), Addr: a.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return nil, fmt.Errorf("SCTP socket (is the sctp module loaded?): %w", err)
	}
	f := os.NewFile(uintptr(fd), "sctp")
	defer f.Close()
	// The send timeout bounds a blocking connect; zero would mean no bound at all.
	timeout := unix.NsecToTimeval(max(time.Until(deadline), time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &timeout); err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return net.FileConn(f)
}
