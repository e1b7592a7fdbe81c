package bfd

import (
	"errors"
	"time"
)

// Timers are a session's wanted intervals and detect multiplier.
type Timers struct {
	// DesiredMinTx is how often we want to send while Up.
	DesiredMinTx time.Duration
	// RequiredMinRx is the shortest interval between packets we accept to receive.
	RequiredMinRx time.Duration
	// DetectMult is how many intervals without a packet declare the link dead.
	DetectMult uint8
}

// slowTx is the shortest transmit interval we advertise while not Up (RFC 5880
// section 6.8.3): idle sessions cost next to nothing.
const slowTx = time.Second

// Session is the state machine of one asynchronous-mode session (RFC 5880 section
// 6.8). It does no I/O and reads no clock: the caller feeds it packets and the time,
// sends the packets it asks for at the times it names, and asks it to time out.
type Session struct {
	timers   Timers
	jitter   func() float64 // uniform in [0, 1)
	state    State
	diag     Diag
	myDisc   uint32
	yourDisc uint32

	remoteState        State
	remoteMinRx        time.Duration
	remoteDesiredMinTx time.Duration
	remoteDetectMult   uint8

	// polling is set while a Poll Sequence announcing new intervals waits for Final.
	polling bool
	// finalDue answers a received Poll with the next packet.
	finalDue bool
	// advertisedTx is the DesiredMinTx the peer last acknowledged (or was told while
	// not Up): the transmit interval keeps to it until the poll ends.
	advertisedTx time.Duration
	nextTx       time.Time
	detectAt     time.Time // zero while nothing is detected
}

// NewSession returns a Down session with local discriminator myDisc (non-zero,
// unique among the caller's sessions). jitter returns numbers uniform in [0, 1).
func NewSession(myDisc uint32, t Timers, jitter func() float64, now time.Time) *Session {
	return &Session{
		timers: t, jitter: jitter, state: Down, myDisc: myDisc, remoteState: Down,
		remoteMinRx:  time.Microsecond, // RFC 5880 6.8.1: one until the peer says otherwise
		advertisedTx: slowTx, nextTx: now,
	}
}

// State returns the local session state.
func (s *Session) State() State { return s.state }

// Diag returns why the session last went down.
func (s *Session) Diag() Diag { return s.diag }

// RemoteState returns the state the peer last reported.
func (s *Session) RemoteState() State { return s.remoteState }

// errDiscarded reports a packet RFC 5880 section 6.8.6 says to discard.
var errDiscarded = errors.New("bfd packet discarded")

// Receive processes a decoded control packet (RFC 5880 section 6.8.6). It returns
// errDiscarded, wrapped, for a packet that does not belong to this session.
func (s *Session) Receive(p Packet, now time.Time) error {
	switch {
	case p.YourDiscriminator != 0 && p.YourDiscriminator != s.myDisc:
		return errors.Join(errDiscarded, errors.New("your discriminator is not ours"))
	case p.YourDiscriminator == 0 && p.State != Down && p.State != AdminDown:
		return errors.Join(errDiscarded, errors.New("your discriminator is zero outside Down"))
	case p.AuthPresent:
		return errors.Join(errDiscarded, errors.New("authentication is not supported"))
	case p.Demand:
		return errors.Join(errDiscarded, errors.New("demand mode is not supported"))
	}
	s.yourDisc = p.MyDiscriminator
	s.remoteState = p.State
	s.remoteDesiredMinTx = p.DesiredMinTx
	s.remoteDetectMult = p.DetectMult
	if p.RequiredMinRx > 0 { // zero asks for no packets: demand-like, kept at the old rate
		s.remoteMinRx = p.RequiredMinRx
	}
	if p.Final && s.polling {
		s.polling = false
		s.advertisedTx = s.desiredTx()
	}
	if p.Poll {
		s.finalDue = true
		s.nextTx = now // a Final goes out at once, whatever the timer says
	}
	if s.state == AdminDown {
		return nil
	}
	switch {
	case p.State == AdminDown:
		if s.state != Down {
			s.goDown(DiagNeighborSignalDown)
		}
	case s.state == Down && p.State == Down:
		s.state = Init
	case s.state == Down && p.State == Init, s.state == Init && (p.State == Init || p.State == Up):
		s.goUp()
	case s.state == Up && p.State == Down:
		s.goDown(DiagNeighborSignalDown)
	}
	if s.state == Init || s.state == Up {
		s.detectAt = now.Add(s.detectionTime())
	}
	return nil
}

// goUp enters Up and starts a Poll Sequence announcing the fast interval.
func (s *Session) goUp() {
	s.state, s.diag = Up, DiagNone
	if s.desiredTx() != s.advertisedTx {
		s.polling = true
	}
}

// goDown leaves Up or Init, falling back to the slow rate (no poll needed outside Up).
func (s *Session) goDown(d Diag) {
	s.state, s.diag = Down, d
	s.polling = false
	s.advertisedTx = slowTx
	s.detectAt = time.Time{}
}

// Expire declares the session down when no packet arrived within the detection
// time (RFC 5880 section 6.8.4). It reports whether it did.
func (s *Session) Expire(now time.Time) bool {
	if s.detectAt.IsZero() || now.Before(s.detectAt) {
		return false
	}
	s.goDown(DiagDetectionExpired)
	s.yourDisc = 0
	s.remoteState = Down
	return true
}

// Deadline returns when Expire should next be called; zero when no detection runs.
func (s *Session) Deadline() time.Time { return s.detectAt }

// NextTx returns when the next packet is due.
func (s *Session) NextTx() time.Time { return s.nextTx }

// Transmit returns the packet due at now and schedules the next one with jitter
// (RFC 5880 section 6.8.7): 75-100% of the interval, 75-90% for a multiplier of 1.
func (s *Session) Transmit(now time.Time) Packet {
	p := Packet{
		Diag: s.diag, State: s.state, Poll: s.polling && !s.finalDue, Final: s.finalDue,
		DetectMult: s.timers.DetectMult, MyDiscriminator: s.myDisc, YourDiscriminator: s.yourDisc,
		DesiredMinTx: s.desiredTx(), RequiredMinRx: s.timers.RequiredMinRx,
	}
	s.finalDue = false
	factor := 1 - 0.25*s.jitter()
	if s.timers.DetectMult == 1 {
		factor = 0.75 + 0.15*s.jitter()
	}
	s.nextTx = now.Add(time.Duration(float64(s.txInterval()) * factor))
	return p
}

// Shutdown puts the session in AdminDown; it then only tells the peer so.
func (s *Session) Shutdown() {
	s.state, s.diag = AdminDown, DiagAdminDown
	s.polling = false
	s.detectAt = time.Time{}
}

// desiredTx is the DesiredMinTx we advertise now: the configured one when Up, at
// least a second otherwise.
func (s *Session) desiredTx() time.Duration {
	if s.state == Up {
		return s.timers.DesiredMinTx
	}
	return max(s.timers.DesiredMinTx, slowTx)
}

// txInterval is the agreed transmit interval: our advertised rate, or slower when the
// peer cannot receive that fast. While a poll announces a faster rate the old one
// stays until its Final (RFC 5880 section 6.8.3 requires it for a slower one; it is
// simplest for both).
func (s *Session) txInterval() time.Duration {
	tx := s.advertisedTx
	if s.state != Up {
		tx = s.desiredTx()
	}
	return max(tx, s.remoteMinRx)
}

// detectionTime is the peer's multiplier times the agreed receive interval (RFC
// 5880 section 6.8.4).
func (s *Session) detectionTime() time.Duration {
	return time.Duration(s.remoteDetectMult) * max(s.timers.RequiredMinRx, s.remoteDesiredMinTx)
}
