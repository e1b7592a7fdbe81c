package bfd

import (
	"errors"
	"testing"
	"time"
)

var fast = Timers{DesiredMinTx: 300 * time.Millisecond, RequiredMinRx: 300 * time.Millisecond, DetectMult: 3}

// pair is two sessions joined by a lossless wire, driven by a fake clock.
type pair struct {
	a, b *Session
	now  time.Time
	cut  bool
}

func newPair() *pair {
	now := time.Unix(1_000_000, 0)
	half := func() float64 { return 0.5 }
	return &pair{a: NewSession(1, fast, half, now), b: NewSession(2, fast, half, now), now: now}
}

// run advances the clock by d in 10 ms steps, delivering every packet due.
func (p *pair) run(t *testing.T, d time.Duration) {
	t.Helper()
	for end := p.now.Add(d); p.now.Before(end); p.now = p.now.Add(10 * time.Millisecond) {
		for _, dir := range [][2]*Session{{p.a, p.b}, {p.b, p.a}} {
			from, to := dir[0], dir[1]
			from.Expire(p.now)
			if p.now.Before(from.NextTx()) {
				continue
			}
			pkt := from.Transmit(p.now)
			if p.cut {
				continue
			}
			wire, err := Unmarshal(pkt.Marshal())
			if err != nil {
				t.Fatalf("a packet we sent does not decode: %v", err)
			}
			if err := to.Receive(wire, p.now); err != nil {
				t.Fatalf("a packet of the peer was refused: %v", err)
			}
		}
	}
}

func TestSessionsComeUpAndAgreeOnTheFastRate(t *testing.T) {
	p := newPair()
	p.run(t, 5*time.Second)
	if p.a.State() != Up || p.b.State() != Up {
		t.Fatalf("states %s/%s, want up/up", p.a.State(), p.b.State())
	}
	if p.a.polling || p.b.polling {
		t.Errorf("a poll sequence is still open after 5s")
	}
	if got := p.a.txInterval(); got != fast.DesiredMinTx {
		t.Errorf("transmit interval once up = %s, want %s", got, fast.DesiredMinTx)
	}
	if got := p.a.detectionTime(); got != 900*time.Millisecond {
		t.Errorf("detection time = %s, want 900ms (3 x 300ms)", got)
	}
}

func TestSilentPeerIsDetectedWithinTheDetectionTime(t *testing.T) {
	p := newPair()
	p.run(t, 5*time.Second)
	cutAt := p.now
	p.cut = true
	for p.a.State() == Up {
		p.run(t, 10*time.Millisecond)
	}
	if took := p.now.Sub(cutAt); took > 900*time.Millisecond+10*time.Millisecond {
		t.Errorf("detected after %s of fake time, want at most the 900ms detection time", took)
	}
	if p.a.State() != Down || p.a.Diag() != DiagDetectionExpired || p.a.yourDisc != 0 {
		t.Errorf("after detection: state %s diag %s your discriminator %d, want down, detection expired, 0", p.a.State(), p.a.Diag(), p.a.yourDisc)
	}
	if got := p.a.txInterval(); got != slowTx {
		t.Errorf("transmit interval while down = %s, want the slow %s", got, slowTx)
	}
	p.cut = false
	p.run(t, 5*time.Second)
	if p.a.State() != Up || p.b.State() != Up {
		t.Errorf("after the link returned: states %s/%s, want up/up", p.a.State(), p.b.State())
	}
}

func TestPeerSignallingDownOrAdminDown(t *testing.T) {
	for _, tc := range []struct {
		name       string
		remote     State
		wantRemote State
	}{
		{"a peer reporting Down takes an Up session down", Down, Down},
		{"a peer reporting AdminDown takes it down, and says so", AdminDown, AdminDown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair()
			p.run(t, 5*time.Second)
			err := p.a.Receive(Packet{State: tc.remote, DetectMult: 3, MyDiscriminator: 2, YourDiscriminator: 1}, p.now)
			if err != nil {
				t.Fatal(err)
			}
			if p.a.State() != Down || p.a.Diag() != DiagNeighborSignalDown || p.a.RemoteState() != tc.wantRemote {
				t.Errorf("state %s diag %s remote %s, want down, neighbor signaled down, %s", p.a.State(), p.a.Diag(), p.a.RemoteState(), tc.wantRemote)
			}
		})
	}
}

func TestPacketsThatAreNotOursAreDiscarded(t *testing.T) {
	s := NewSession(7, fast, func() float64 { return 0 }, time.Unix(0, 0))
	for name, pkt := range map[string]Packet{
		"another discriminator":    {State: Down, DetectMult: 3, MyDiscriminator: 9, YourDiscriminator: 8},
		"zero discriminator in Up": {State: Up, DetectMult: 3, MyDiscriminator: 9},
		"authentication":           {State: Down, DetectMult: 3, MyDiscriminator: 9, AuthPresent: true},
		"demand mode":              {State: Down, DetectMult: 3, MyDiscriminator: 9, Demand: true},
	} {
		if err := s.Receive(pkt, time.Unix(0, 0)); !errors.Is(err, errDiscarded) {
			t.Errorf("%s: err = %v, want discarded", name, err)
		}
	}
	if s.State() != Down {
		t.Errorf("state %s after discarded packets, want down", s.State())
	}
}

func TestPollIsAnsweredWithFinalAtOnce(t *testing.T) {
	now := time.Unix(0, 0)
	s := NewSession(7, fast, func() float64 { return 0 }, now)
	s.Transmit(now)
	if err := s.Receive(Packet{State: Down, Poll: true, DetectMult: 3, MyDiscriminator: 9, RequiredMinRx: time.Second}, now); err != nil {
		t.Fatal(err)
	}
	if !s.NextTx().Equal(now) {
		t.Fatalf("next packet due %s after the poll, want at once", s.NextTx().Sub(now))
	}
	if pkt := s.Transmit(now); !pkt.Final || pkt.Poll {
		t.Errorf("answer to a poll: final %v poll %v, want final only", pkt.Final, pkt.Poll)
	}
	if pkt := s.Transmit(now); pkt.Final {
		t.Errorf("the packet after the answer still carries final")
	}
}

func TestTransmitJitter(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mult     uint8
		jitter   float64
		interval time.Duration
	}{
		{"no jitter sends at the full interval", 3, 0, time.Second},
		{"most jitter sends at 75%", 3, 0.999999, 750 * time.Millisecond},
		{"a multiplier of one never sends later than 90%", 1, 0.999999, 900 * time.Millisecond},
		{"a multiplier of one sends at least at 75%", 1, 0, 750 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Unix(0, 0)
			timers := fast
			timers.DetectMult = tc.mult
			s := NewSession(7, timers, func() float64 { return tc.jitter }, now)
			s.Transmit(now)
			if got := s.NextTx().Sub(now).Round(time.Millisecond); got != tc.interval {
				t.Errorf("next packet after %s, want %s", got, tc.interval)
			}
		})
	}
}

func TestPacketRoundTripAndValidation(t *testing.T) {
	want := Packet{Diag: DiagDetectionExpired, State: Init, Poll: true, DetectMult: 5, MyDiscriminator: 0xdeadbeef,
		YourDiscriminator: 42, DesiredMinTx: 300 * time.Millisecond, RequiredMinRx: 10 * time.Millisecond}
	got, err := Unmarshal(want.Marshal())
	if err != nil || got != want {
		t.Fatalf("round trip = %+v, %v; want %+v", got, err, want)
	}
	bad := func(edit func(b []byte)) []byte { b := want.Marshal(); edit(b); return b }
	for name, b := range map[string][]byte{
		"short":              want.Marshal()[:20],
		"version 0":          bad(func(b []byte) { b[0] &= 0x1f }),
		"zero multiplier":    bad(func(b []byte) { b[2] = 0 }),
		"multipoint":         bad(func(b []byte) { b[1] |= flagMultipoint }),
		"zero discriminator": bad(func(b []byte) { b[4], b[5], b[6], b[7] = 0, 0, 0, 0 }),
		"length too long":    bad(func(b []byte) { b[3] = 40 }),
	} {
		if _, err := Unmarshal(b); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}
