package routing

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	api "github.com/osrg/gobgp/v3/api"
)

// fakeSpeaker is an in-memory speaker. It records the peers, paths and policy input
// the sync sets and the calls made, and serves the learned routes and session states
// a test injects, announcing them through the Watch callbacks as GoBGP would.
type fakeSpeaker struct {
	mu      sync.Mutex
	cfg     speakerConfig
	peers   []Peer
	paths   []netip.Prefix
	policy  advertisements
	learned []LearnedRoute
	states  map[string]string
	calls   []string
	// starts counts the speakers started; a restart begins empty, as GoBGP does.
	starts int

	onPeer     func(addr string, old, new peerState)
	onBestPath func()
}

var _ speaker = (*fakeSpeaker)(nil)

func newFakeSpeaker() *fakeSpeaker { return &fakeSpeaker{states: map[string]string{}} }

// start is the fake's startSpeakerFunc.
func (f *fakeSpeaker) start(_ context.Context, cfg speakerConfig) (speaker, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cfg = cfg
	f.starts++
	f.peers, f.paths, f.policy = nil, nil, advertisements{}
	return f, nil
}

func (f *fakeSpeaker) call(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
}

func (f *fakeSpeaker) Watch(_ context.Context, onPeer func(string, peerState, peerState), onBestPath func()) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onPeer, f.onBestPath = onPeer, onBestPath
	return nil
}

func (f *fakeSpeaker) SetPolicy(_ context.Context, adv advertisements, _ []Peer) error {
	f.call("SetPolicy")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.policy = adv
	return nil
}

func (f *fakeSpeaker) SetPeers(_ context.Context, peers []Peer) error {
	f.call("SetPeers")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = slices.Clone(peers)
	return nil
}

func (f *fakeSpeaker) SetPaths(_ context.Context, prefixes []netip.Prefix) error {
	f.call("SetPaths")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paths = slices.Clone(prefixes)
	return nil
}

func (f *fakeSpeaker) Learned(context.Context) ([]LearnedRoute, error) {
	f.call("Learned")
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.learned), nil
}

// PeerStates reports every configured peer, ACTIVE unless a test set its state.
func (f *fakeSpeaker) PeerStates(context.Context) map[string]peerState {
	f.call("PeerStates")
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]peerState{}
	for _, p := range f.peers {
		st := f.states[p.Address.String()]
		if st == "" {
			st = api.PeerState_ACTIVE.String()
		}
		out[p.Address.String()] = peerState{State: st}
	}
	return out
}

func (f *fakeSpeaker) Stop() { f.call("Stop") }

func (f *fakeSpeaker) ResetPeer(_ context.Context, addr netip.Addr, _ string) error {
	f.call("ResetPeer " + addr.String())
	return nil
}

// learn replaces the learned routes ("prefix via next hop") and reports a best path
// change.
func (f *fakeSpeaker) learn(routes ...string) {
	f.mu.Lock()
	f.learned = nil
	for _, r := range routes {
		dst, via, _ := strings.Cut(r, " via ")
		f.learned = append(f.learned, LearnedRoute{Prefix: netip.MustParsePrefix(dst), NextHop: netip.MustParseAddr(via)})
	}
	onBestPath := f.onBestPath
	f.mu.Unlock()
	onBestPath()
}

// setState sets a peer's session state and reports the change.
func (f *fakeSpeaker) setState(addr string, state api.PeerState_SessionState) {
	f.mu.Lock()
	old := peerState{State: f.states[addr]}
	f.states[addr] = state.String()
	onPeer := f.onPeer
	f.mu.Unlock()
	onPeer(addr, old, peerState{State: state.String()})
}

// takeCalls returns the calls since the last takeCalls, joined by spaces.
func (f *fakeSpeaker) takeCalls() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := strings.Join(f.calls, " ")
	f.calls = nil
	return out
}

// dump renders the peers ("peer address asn [local-asn, when not the speaker's]
// [node]") and the originated paths.
func (f *fakeSpeaker) dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, p := range f.peers {
		fmt.Fprintf(&b, "peer %s asn %d", p.Address, p.ASN)
		if p.LocalASN != f.cfg.ASN {
			fmt.Fprintf(&b, " local-asn %d", p.LocalASN)
		}
		if p.Node != "" {
			fmt.Fprintf(&b, " node %s", p.Node)
		}
		b.WriteString("\n")
	}
	for _, p := range f.paths {
		fmt.Fprintf(&b, "path %s\n", p)
	}
	return b.String()
}
