package bfd

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Port is the single-hop control port (RFC 5881 section 4).
const Port = 3784

// Source ports of our sessions (RFC 5881 section 4).
const (
	minSourcePort = 49152
	maxSourcePort = 65535
)

// ttl is what single-hop packets carry and must arrive with (GTSM, RFC 5881 section 5):
// a packet from further away arrives with less.
const ttl = 255

// Peer is a directly connected neighbour to run a session with.
type Peer struct {
	Address netip.Addr
	Timers  Timers
}

// Event reports a session's change of state.
type Event struct {
	Peer     netip.Addr
	Old, New State
	// Diag says why the session went down.
	Diag Diag
	// RemoteState is the peer's last reported state: AdminDown when the peer took the
	// session down on purpose, which is no sign of a dead link (RFC 5882 section 3.2).
	RemoteState State
}

// Manager runs one session per peer over UDP: a goroutine per session sends and
// times out, a listener per IP family receives and hands each packet to the session
// of its source address.
type Manager struct {
	log      *slog.Logger
	onChange func(Event)

	mu        sync.Mutex
	sessions  map[netip.Addr]*runner
	listeners map[bool]*net.UDPConn // by "is IPv4"
	wg        sync.WaitGroup
}

// NewManager returns a Manager without sessions. onChange is called on a session's
// goroutine for every state change and must be quick.
func NewManager(log *slog.Logger, onChange func(Event)) *Manager {
	return &Manager{log: log, onChange: onChange, sessions: map[netip.Addr]*runner{}, listeners: map[bool]*net.UDPConn{}}
}

// Set makes the sessions exactly peers: new peers get a session, removed ones are
// told AdminDown and end, a peer whose timers changed gets a new session. A peer
// whose socket cannot be opened is reported in the error; the others still run.
func (m *Manager) Set(peers []Peer) error {
	want := map[netip.Addr]Peer{}
	for _, p := range peers {
		want[p.Address.Unmap()] = p
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for addr, r := range m.sessions {
		if p, ok := want[addr]; !ok || p.Timers != r.peer.Timers {
			r.stop()
			delete(m.sessions, addr)
		}
	}
	var errs []error
	for addr, p := range want {
		if _, ok := m.sessions[addr]; ok {
			continue
		}
		if err := m.listen(addr.Is4()); err != nil {
			errs = append(errs, err)
			continue
		}
		r, err := m.start(p, addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.sessions[addr] = r
	}
	return errors.Join(errs...)
}

// States returns each session's state.
func (m *Manager) States() map[netip.Addr]State {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[netip.Addr]State, len(m.sessions))
	for addr, r := range m.sessions {
		r.mu.Lock()
		out[addr] = r.state
		r.mu.Unlock()
	}
	return out
}

// Close tells every peer AdminDown, ends the sessions and closes the listeners.
func (m *Manager) Close() {
	m.mu.Lock()
	for addr, r := range m.sessions {
		r.stop()
		delete(m.sessions, addr)
	}
	for fam, l := range m.listeners {
		l.Close()
		delete(m.listeners, fam)
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// listen opens the family's listener once; called with m.mu held.
func (m *Manager) listen(is4 bool) error {
	if m.listeners[is4] != nil {
		return nil
	}
	network, wildcard := "udp6", netip.IPv6Unspecified()
	if is4 {
		network, wildcard = "udp4", netip.IPv4Unspecified()
	}
	l, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(wildcard, Port)))
	if err != nil {
		return fmt.Errorf("bfd: listening on UDP port %d: %w", Port, err)
	}
	var read func([]byte) (int, int, net.Addr, error) // bytes, TTL, source
	if is4 {
		pc := ipv4.NewPacketConn(l)
		err = pc.SetControlMessage(ipv4.FlagTTL, true)
		read = func(b []byte) (int, int, net.Addr, error) {
			n, cm, src, err := pc.ReadFrom(b)
			if cm == nil {
				return n, -1, src, err
			}
			return n, cm.TTL, src, err
		}
	} else {
		pc := ipv6.NewPacketConn(l)
		err = pc.SetControlMessage(ipv6.FlagHopLimit, true)
		read = func(b []byte) (int, int, net.Addr, error) {
			n, cm, src, err := pc.ReadFrom(b)
			if cm == nil {
				return n, -1, src, err
			}
			return n, cm.HopLimit, src, err
		}
	}
	if err != nil {
		l.Close()
		return fmt.Errorf("bfd: asking for the TTL of received packets: %w", err)
	}
	m.listeners[is4] = l
	m.wg.Go(func() { m.receive(read) })
	return nil
}

// receive hands each valid packet to its session until the listener closes.
func (m *Manager) receive(read func([]byte) (int, int, net.Addr, error)) {
	buf := make([]byte, 512)
	for {
		n, hops, src, err := read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			m.log.Debug("bfd: receiving", "err", err)
			continue
		}
		from, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		peer := from.AddrPort().Addr().Unmap().WithZone("")
		if hops != ttl {
			m.log.Debug("bfd: dropping a packet that did not come from a directly connected neighbour", "peer", peer, "ttl", hops)
			continue
		}
		p, err := Unmarshal(buf[:n])
		if err != nil {
			m.log.Debug("bfd: dropping a malformed packet", "peer", peer, "err", err)
			continue
		}
		m.mu.Lock()
		r := m.sessions[peer]
		m.mu.Unlock()
		if r == nil {
			continue
		}
		select {
		case r.rx <- p:
		default: // the session is behind; a later packet says the same
		}
	}
}

// runner is one session with its socket and goroutine.
type runner struct {
	peer Peer
	disc uint32
	conn *net.UDPConn
	rx   chan Packet
	done chan struct{}
	quit sync.Once

	mu    sync.Mutex
	state State
}

func (r *runner) stop() { r.quit.Do(func() { close(r.done) }) }

// start opens the session's sending socket and starts its goroutine.
func (m *Manager) start(p Peer, addr netip.Addr) (*runner, error) {
	conn, err := dialFromSourcePort(addr)
	if err != nil {
		return nil, err
	}
	r := &runner{peer: p, disc: m.discriminator(), conn: conn, rx: make(chan Packet, 16), done: make(chan struct{}), state: Down}
	rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	m.wg.Go(func() { m.run(r, NewSession(r.disc, p.Timers, rnd.Float64, time.Now()), addr) })
	return r, nil
}

// discriminator picks a random non-zero discriminator no session of ours uses;
// called with m.mu held.
func (m *Manager) discriminator() uint32 {
	for {
		d := rand.Uint32()
		taken := d == 0
		for _, r := range m.sessions {
			taken = taken || r.disc == d
		}
		if !taken {
			return d
		}
	}
}

// dialFromSourcePort opens a UDP socket to the peer's BFD port from a free port of
// the source range, sending with TTL 255.
func dialFromSourcePort(addr netip.Addr) (*net.UDPConn, error) {
	remote := net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, Port))
	var err error
	for range 64 {
		port := minSourcePort + rand.IntN(maxSourcePort-minSourcePort+1)
		var conn *net.UDPConn
		conn, err = net.DialUDP("udp", &net.UDPAddr{Port: port}, remote)
		if errors.Is(err, syscall.EADDRINUSE) {
			continue
		}
		if err != nil {
			break
		}
		if addr.Is4() {
			err = ipv4.NewConn(conn).SetTTL(ttl)
		} else {
			err = ipv6.NewConn(conn).SetHopLimit(ttl)
		}
		if err != nil {
			conn.Close()
			break
		}
		return conn, nil
	}
	return nil, fmt.Errorf("bfd: opening a socket to %s: %w", addr, err)
}

// run drives a session: it receives, times out and sends until the session is
// stopped, then tells the peer AdminDown.
func (m *Manager) run(r *runner, s *Session, peer netip.Addr) {
	defer r.conn.Close()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		old := s.State()
		select {
		case <-r.done:
			s.Shutdown()
			m.send(r, s.Transmit(time.Now()), peer)
			m.report(r, s, peer, old)
			return
		case p := <-r.rx:
			if err := s.Receive(p, time.Now()); err != nil {
				m.log.Debug("bfd: dropping a packet", "peer", peer, "err", err)
			}
		case <-timer.C:
		}
		now := time.Now()
		s.Expire(now)
		m.report(r, s, peer, old)
		if !now.Before(s.NextTx()) {
			m.send(r, s.Transmit(now), peer)
		}
		next := s.NextTx()
		if d := s.Deadline(); !d.IsZero() && d.Before(next) {
			next = d
		}
		timer.Reset(next.Sub(now))
	}
}

func (m *Manager) report(r *runner, s *Session, peer netip.Addr, old State) {
	if s.State() == old {
		return
	}
	r.mu.Lock()
	r.state = s.State()
	r.mu.Unlock()
	m.onChange(Event{Peer: peer, Old: old, New: s.State(), Diag: s.Diag(), RemoteState: s.RemoteState()})
}

func (m *Manager) send(r *runner, p Packet, peer netip.Addr) {
	// A send fails while the link has no neighbour entry; detection reports that.
	if _, err := r.conn.Write(p.Marshal()); err != nil {
		m.log.Debug("bfd: sending", "peer", peer, "err", err)
	}
}
