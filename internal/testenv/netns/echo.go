package netns

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// ServeEcho starts a TCP server on port of the namespace that answers every line it
// reads on a connection with the namespace's Label and the line, until the test ends.
func (ns *NS) ServeEcho(t testing.TB, port int) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("echo server in %s: %v", ns.Label, err)
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
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(conn, "%s %s", ns.Label, line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// DialTCP opens a TCP connection from the namespace to target; the connection can be
// used from any goroutine.
func (ns *NS) DialTCP(target netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := ns.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", target.String(), timeout)
		return err
	})
	return conn, err
}

// EchoStream is one long-lived TCP connection to a ServeEcho server that sends a
// numbered line every interval and checks its echo before sending the next, so a
// lost, reordered or broken exchange ends it with an error.
type EchoStream struct {
	// Server is the label of the namespace that answered the first line (the backend a
	// load balancer chose); every later answer must come from it too.
	Server string

	conn   net.Conn
	echoed atomic.Int64
	stop   chan struct{}
	done   chan struct{}
	err    error // valid once done is closed
}

// echoLine sends a numbered line over conn and checks that it comes back, returning the
// label of the server that answered.
func echoLine(conn net.Conn, r *bufio.Reader, seq int64) (string, error) {
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	line := fmt.Sprintf("echo %d\n", seq)
	if _, err := conn.Write([]byte(line)); err != nil {
		return "", fmt.Errorf("send echo %d: %w", seq, err)
	}
	reply, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read echo %d: %w", seq, err)
	}
	server, echoed, _ := strings.Cut(reply, " ")
	if echoed != line {
		return "", fmt.Errorf("sent %q, got back %q", line, reply)
	}
	return server, nil
}

// EchoOnce exchanges one line over conn with a ServeEcho server, closes conn and returns
// the label of the server that answered.
func EchoOnce(conn net.Conn) (string, error) {
	defer conn.Close()
	return echoLine(conn, bufio.NewReader(conn), 0)
}

// StartEchoStream exchanges a first line over conn (failing the test if that does not
// work), then keeps echoing in the background until Finish, which the caller owes (a
// stream may outlive the subtest that opened it).
func StartEchoStream(t testing.TB, conn net.Conn, interval time.Duration) *EchoStream {
	t.Helper()
	s := &EchoStream{conn: conn, stop: make(chan struct{}), done: make(chan struct{})}
	r := bufio.NewReader(conn)
	server, err := echoLine(conn, r, 0)
	if err != nil {
		conn.Close()
		t.Fatalf("echo stream %s -> %s: %v", conn.LocalAddr(), conn.RemoteAddr(), err)
	}
	s.Server = server
	s.echoed.Store(1)
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for seq := int64(1); ; seq++ {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			got, err := echoLine(conn, r, seq)
			if err == nil && got != s.Server {
				err = fmt.Errorf("echo %d came from %s, the connection started on %s", seq, got, s.Server)
			}
			if err != nil {
				s.err = err
				return
			}
			s.echoed.Add(1)
		}
	}()
	return s
}

// Echoed is the number of lines echoed so far.
func (s *EchoStream) Echoed() int64 { return s.echoed.Load() }

// WaitEchoes waits for n more echoes and fails the test if the stream broke.
func (s *EchoStream) WaitEchoes(t testing.TB, n int64, what string) {
	t.Helper()
	want := s.echoed.Load() + n
	testenv.Eventually(t, fmt.Sprintf("%d more echoes %s", n, what), 2*time.Minute, func() bool {
		select {
		case <-s.done:
			t.Fatalf("the echo stream broke %s after %d echoes: %v", what, s.echoed.Load(), s.err)
		default:
		}
		return s.echoed.Load() >= want
	})
}

// Finish stops the stream and returns how many echoes came back and why it ended
// early, if it did.
func (s *EchoStream) Finish() (int64, error) {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.conn.Close()
	return s.echoed.Load(), s.err
}
