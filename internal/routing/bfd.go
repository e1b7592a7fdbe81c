package routing

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/bfd"
)

// bfdSessions is what routing needs of BFD: sessions with exactly the given peers,
// and their states (bfd.Manager outside tests).
type bfdSessions interface {
	Set(peers []bfd.Peer) error
	States() map[netip.Addr]bfd.State
	Close()
}

// startBFDFunc starts the BFD sessions; onChange hears of every state change.
type startBFDFunc func(c *Controller, onChange func(bfd.Event)) bfdSessions

// bfdTracker holds the BFD sessions and the peers whose link BFD found dead, which
// the next sync resets. Events arrive on the sessions' goroutines.
type bfdTracker struct {
	sessions bfdSessions // nil until a peer asks for BFD

	mu sync.Mutex
	// dead are peers whose session went from Up to Down, with when, for the sync.
	dead map[netip.Addr]time.Time
}

// syncBFD runs a BFD session with exactly the peers that ask for one.
func (c *Controller) syncBFD(peers []Peer) error {
	var want []bfd.Peer
	timers := bfd.Timers{
		DesiredMinTx:  c.cfg.BFDMinTxInterval.Duration,
		RequiredMinRx: c.cfg.BFDMinRxInterval.Duration,
		DetectMult:    uint8(c.cfg.BFDMultiplier),
	}
	for _, p := range peers {
		if p.BFD {
			want = append(want, bfd.Peer{Address: p.Address, Timers: timers})
		}
	}
	if c.bfd.sessions == nil {
		if len(want) == 0 || c.dp.startBFD == nil {
			return nil
		}
		c.bfd.sessions = c.dp.startBFD(c, c.onBFD)
	}
	return c.bfd.sessions.Set(want)
}

// onBFD logs a session's change of state; a link found dead (not a peer that took
// its session down on purpose) marks the peer for a BGP reset by the next sync.
func (c *Controller) onBFD(ev bfd.Event) {
	c.metrics.bfdTransitions.WithLabelValues(ev.New.String()).Inc()
	if ev.Old == bfd.Up && ev.New == bfd.Down && ev.RemoteState != bfd.AdminDown {
		c.log.Warn("BFD found the link to the peer dead; resetting its BGP session", "peer", ev.Peer, "diag", ev.Diag.String())
		c.bfd.mu.Lock()
		if c.bfd.dead == nil {
			c.bfd.dead = map[netip.Addr]time.Time{}
		}
		c.bfd.dead[ev.Peer] = time.Now()
		c.bfd.mu.Unlock()
	} else {
		c.log.Info("BFD session changed state", "peer", ev.Peer, "old", ev.Old.String(), "new", ev.New.String(), "diag", ev.Diag.String())
	}
	c.request(changeSet{speaker: true})
}

// resetDeadPeers resets the BGP sessions of the peers BFD found dead: the session
// leaves Established now and its routes go, instead of after the hold time (or the
// graceful restart time, since GoBGP keeps the routes of a peer whose hold timer
// expired when graceful restart is on).
func (c *Controller) resetDeadPeers(ctx context.Context) {
	c.bfd.mu.Lock()
	dead := c.bfd.dead
	c.bfd.dead = nil
	c.bfd.mu.Unlock()
	for addr, since := range dead {
		if !slices.ContainsFunc(c.last.peers, func(p Peer) bool { return p.Address == addr && p.BFD }) {
			continue
		}
		if err := c.speaker.ResetPeer(ctx, addr, "BFD detected the link down"); err != nil {
			c.log.Warn("resetting the BGP session of a peer BFD found dead", "peer", addr, "err", err)
			continue
		}
		c.log.Info("reset the BGP session of a peer BFD found dead", "peer", addr, "after", time.Since(since).Round(time.Millisecond))
	}
}

// bfdStates returns each BFD session's state by peer address.
func (c *Controller) bfdStates() map[string]string {
	if c.bfd.sessions == nil {
		return nil
	}
	out := map[string]string{}
	for addr, st := range c.bfd.sessions.States() {
		out[addr.String()] = st.String()
	}
	return out
}
