package routing

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

func TestSilentPeersAreWarnedAboutOncePerOutage(t *testing.T) {
	log, buf := captureLog()
	c := &Controller{log: log, downSince: map[string]time.Time{}}
	locked := Peer{Address: netip.MustParseAddr("192.0.2.1"), ASN: 65000, Password: "secret", HoldTime: 9 * time.Second}
	peers := []Peer{locked}
	down := map[string]peerState{"192.0.2.1": {State: api.PeerState_ACTIVE.String()}}
	up := map[string]peerState{"192.0.2.1": {State: api.PeerState_ESTABLISHED.String()}}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	warnings := func() int { return strings.Count(buf.String(), "BGP session is not established") }

	if due := c.warnAboutSilentPeers(peers, down, start); due != 9*time.Second || warnings() != 0 {
		t.Fatalf("a peer just configured: next check in %s, %d warnings; want 9s and none", due, warnings())
	}
	if due := c.warnAboutSilentPeers(peers, down, start.Add(4*time.Second)); due != 5*time.Second || warnings() != 0 {
		t.Fatalf("within the hold time: next check in %s, %d warnings; want 5s and none", due, warnings())
	}
	c.warnAboutSilentPeers(peers, down, start.Add(9*time.Second))
	c.warnAboutSilentPeers(peers, down, start.Add(60*time.Second))
	if warnings() != 1 || !strings.Contains(buf.String(), "peer=192.0.2.1") || !strings.Contains(buf.String(), "password=true") {
		t.Fatalf("want one warning naming the peer and that it has a password, got:\n%s", buf)
	}
	// Up, then down again: a new outage, a new warning after a hold time.
	c.warnAboutSilentPeers(peers, up, start.Add(61*time.Second))
	c.warnAboutSilentPeers(peers, down, start.Add(62*time.Second))
	c.warnAboutSilentPeers(peers, down, start.Add(72*time.Second))
	if warnings() != 2 {
		t.Fatalf("want a second warning for the second outage, got:\n%s", buf)
	}
	// A removed peer is forgotten.
	c.warnAboutSilentPeers(nil, nil, start.Add(80*time.Second))
	if len(c.downSince) != 0 {
		t.Errorf("removed peer still tracked: %v", c.downSince)
	}
}

func TestRouterIDFromIPv6(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"fd00:200::c0a8:c80b", "192.168.200.11"},
		{"2001:db8::1", "0.0.0.1"},
		{"2001:db8::", "0.0.0.1"}, // 0.0.0.0 is no valid router id
	} {
		if got := routerIDFromIPv6(netip.MustParseAddr(tc.addr)); got.String() != tc.want {
			t.Errorf("router id of %s = %s, want %s", tc.addr, got, tc.want)
		}
	}
}
