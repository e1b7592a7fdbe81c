//go:build integration

package bfd

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// startManager runs a Manager in n's namespace with one session to peer, and returns
// the events it reports.
func startManager(t *testing.T, n *netns.Node, peer netip.Addr) (*Manager, <-chan Event) {
	t.Helper()
	events := make(chan Event, 64)
	m := NewManager(slog.New(slog.DiscardHandler), func(ev Event) { events <- ev })
	err := n.Do(func() error { return m.Set([]Peer{{Address: peer, Timers: fast}}) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m, events
}

func waitEvent(t *testing.T, events <-chan Event, what string, match func(Event) bool) Event {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-events:
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// sendFrom sends a control packet from n's namespace to peer's BFD port with ttl.
func sendFrom(t *testing.T, n *netns.Node, peer netip.Addr, ttl int, p Packet) {
	t.Helper()
	err := n.Do(func() error {
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer, Port)))
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := ipv4.NewConn(conn).SetTTL(ttl); err != nil {
			return err
		}
		_, err = conn.Write(p.Marshal())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestManagersComeUpAndRefusePacketsFromFurtherAway runs two managers on one link:
// their sessions come up; a packet that arrives with a TTL under 255 (from beyond the
// link, RFC 5881 section 5) is ignored although it would take the session down; a
// manager that closes tells its peer AdminDown.
func TestManagersComeUpAndRefusePacketsFromFurtherAway(t *testing.T) {
	testenv.RequireRoot(t)
	link := netns.NewLink(t)
	a := link.AddNode(t, netns.NodeOptions{Name: "a"})
	b := link.AddNode(t, netns.NodeOptions{Name: "b"})
	ma, eventsA := startManager(t, a, b.IPv4)
	mb, eventsB := startManager(t, b, a.IPv4)
	isUp := func(ev Event) bool { return ev.New == Up }
	waitEvent(t, eventsA, "a's session up", isUp)
	waitEvent(t, eventsB, "b's session up", isUp)
	if got := mb.States()[a.IPv4]; got != Up {
		t.Errorf("b reports its session %s, want up", got)
	}

	// AdminDown from a's address with TTL 64, then Down with TTL 255: had the first
	// counted, b's session would report the peer AdminDown.
	sendFrom(t, a, b.IPv4, 64, Packet{State: AdminDown, DetectMult: 3, MyDiscriminator: 12345})
	sendFrom(t, a, b.IPv4, ttl, Packet{State: Down, DetectMult: 3, MyDiscriminator: 12345})
	ev := waitEvent(t, eventsB, "b's session down", func(ev Event) bool { return ev.New == Down })
	if ev.RemoteState != Down || ev.Diag != DiagNeighborSignalDown {
		t.Errorf("b went down with the peer %s (%s), want down by the TTL 255 packet (neighbor signaled down)", ev.RemoteState, ev.Diag)
	}

	waitEvent(t, eventsB, "b's session up again", isUp)
	ma.Close()
	ev = waitEvent(t, eventsB, "b's session down after a closed", func(ev Event) bool { return ev.New == Down })
	if ev.RemoteState != AdminDown {
		t.Errorf("b saw the peer %s when a closed, want admin-down", ev.RemoteState)
	}
}
