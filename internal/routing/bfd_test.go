package routing

import (
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/bfd"
	"github.com/kube-routerd/kube-routerd/internal/config"
)

// fakeBFD records the peers routing asks for and reports the states a test sets
// through the controller's callback, as bfd.Manager would.
type fakeBFD struct {
	mu       sync.Mutex
	peers    []bfd.Peer
	states   map[netip.Addr]bfd.State
	onChange func(bfd.Event)
	closed   bool
}

func (f *fakeBFD) start(_ *Controller, onChange func(bfd.Event)) bfdSessions {
	f.onChange = onChange
	return f
}

func (f *fakeBFD) Set(peers []bfd.Peer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = peers
	return nil
}

func (f *fakeBFD) States() map[netip.Addr]bfd.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[netip.Addr]bfd.State{}
	for _, p := range f.peers {
		out[p.Address] = f.states[p.Address]
	}
	return out
}

func (f *fakeBFD) Close() { f.closed = true }

func (f *fakeBFD) change(addr netip.Addr, old, next, remote bfd.State) {
	f.mu.Lock()
	f.states[addr] = next
	f.mu.Unlock()
	f.onChange(bfd.Event{Peer: addr, Old: old, New: next, Diag: bfd.DiagDetectionExpired, RemoteState: remote})
}

var resetCall = regexp.MustCompile(`ResetPeer \S+`)

func TestBFDDownResetsTheBGPSessionOfThePeer(t *testing.T) {
	router, plain := netip.MustParseAddr("10.0.0.254"), netip.MustParseAddr("10.0.0.253")
	cfg := config.Default().Routing
	cfg.NodeMesh = false
	cfg.Peers = []config.Peer{
		{Address: config.Addr{Addr: router}, ASN: 65000, BFD: true},
		{Address: config.Addr{Addr: plain}, ASN: 65000},
	}
	h := newSyncHarness(t, cfg)
	f := &fakeBFD{states: map[netip.Addr]bfd.State{}}
	h.c.dp.startBFD = f.start
	h.sync(true)

	want := bfd.Timers{DesiredMinTx: 300 * time.Millisecond, RequiredMinRx: 300 * time.Millisecond, DetectMult: 3}
	if len(f.peers) != 1 || f.peers[0].Address != router || f.peers[0].Timers != want {
		t.Fatalf("BFD peers = %+v, want only %s with %+v", f.peers, router, want)
	}
	for _, step := range []struct {
		name             string
		old, new, remote bfd.State
		wantCalls        string
		wantStatus       string
	}{
		{"coming up resets nothing", bfd.Down, bfd.Up, bfd.Up, "", "up"},
		{"the link found dead resets the session", bfd.Up, bfd.Down, bfd.Down, "ResetPeer 10.0.0.254", "down"},
		{"a session that was never up resets nothing", bfd.Init, bfd.Down, bfd.Down, "", "down"},
		{"a peer taking BFD down on purpose resets nothing", bfd.Up, bfd.Down, bfd.AdminDown, "", "down"},
	} {
		h.speaker.takeCalls()
		f.change(router, step.old, step.new, step.remote)
		h.sync(false)
		if got := strings.Join(resetCall.FindAllString(h.speaker.takeCalls(), -1), " "); got != step.wantCalls {
			t.Errorf("%s: speaker calls %q, want %q", step.name, got, step.wantCalls)
		}
		for _, p := range h.c.Details().(Details).Peers {
			want := ""
			if p.Address == router.String() {
				want = step.wantStatus
			}
			if p.BFD != want {
				t.Errorf("%s: status of %s shows BFD %q, want %q", step.name, p.Address, p.BFD, want)
			}
		}
	}
	if !strings.Contains(h.log.String(), "BFD found the link to the peer dead; resetting its BGP session") ||
		!strings.Contains(h.log.String(), "peer=10.0.0.254") {
		t.Errorf("the reset is not logged naming the peer:\n%s", h.log)
	}
}
