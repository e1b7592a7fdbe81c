package routing

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// freePort finds a TCP port free on the loopback addresses the tests use.
func freePort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

func startTestSpeaker(t *testing.T, asn uint32, addr string, port int32) *gobgpSpeaker {
	t.Helper()
	s, err := startGoBGP(context.Background(), speakerConfig{
		ASN: asn, RouterID: netip.MustParseAddr(addr), ListenPort: port, ListenAddresses: []string{addr},
		GracefulRestart: true, RestartTime: 30 * time.Second,
		Log: slog.New(slog.NewTextHandler(testLogOut, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func learnedPrefixes(t *testing.T, s *gobgpSpeaker) []string {
	t.Helper()
	ls, err := s.Learned(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		out = append(out, l.Prefix.String()+" via "+l.NextHop.String())
	}
	slices.Sort(out)
	return out
}

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestSpeakerSendsNodesOnlyPodCIDRs(t *testing.T) {
	port := freePort(t)
	a := startTestSpeaker(t, 64512, "127.0.0.1", port)
	b := startTestSpeaker(t, 64512, "127.0.0.2", port)
	ctx := context.Background()
	peerB := Peer{Address: netip.MustParseAddr("127.0.0.2"), ASN: 64512, Node: "b", HoldTime: 9 * time.Second, LocalAddress: netip.MustParseAddr("127.0.0.1"), Port: uint16(port)}
	peerA := Peer{Address: netip.MustParseAddr("127.0.0.1"), ASN: 64512, Node: "a", HoldTime: 9 * time.Second, LocalAddress: netip.MustParseAddr("127.0.0.2"), Port: uint16(port)}
	advA := advertisements{
		Prefixes:   pfx("10.244.1.0/24", "10.96.0.10/32"),
		ToNodes:    pfx("10.244.1.0/24", "10.244.2.0/24"),
		ToExternal: pfx("10.244.1.0/24", "10.96.0.10/32"),
	}
	advB := advertisements{Prefixes: pfx("10.244.2.0/24"), ToNodes: pfx("10.244.1.0/24", "10.244.2.0/24")}
	for _, step := range []func() error{
		func() error { return a.SetPolicy(ctx, advA, []Peer{peerB}) },
		func() error { return a.SetPeers(ctx, []Peer{peerB}) },
		func() error { return a.SetPaths(ctx, advA.Prefixes) },
		func() error { return b.SetPolicy(ctx, advB, []Peer{peerA}) },
		func() error { return b.SetPeers(ctx, []Peer{peerA}) },
		func() error { return b.SetPaths(ctx, advB.Prefixes) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "both sides learn the other's pod CIDR", func() bool {
		return slices.Equal(learnedPrefixes(t, b), []string{"10.244.1.0/24 via 127.0.0.1"}) &&
			slices.Equal(learnedPrefixes(t, a), []string{"10.244.2.0/24 via 127.0.0.2"})
	})
	if st := a.PeerStates(ctx)["127.0.0.2"]; st.State != api.PeerState_ESTABLISHED.String() {
		t.Errorf("peer state of b at a = %+v, want established", st)
	}

	// Withdrawing the pod CIDR removes it at the peer.
	if err := a.SetPaths(ctx, pfx("10.96.0.10/32")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b drops the withdrawn pod CIDR", func() bool { return len(learnedPrefixes(t, b)) == 0 })
}

func TestSpeakerExternalPeerGetsServiceIPsAndCannotInjectIntoProtectedRanges(t *testing.T) {
	port := freePort(t)
	node := startTestSpeaker(t, 64512, "127.0.0.1", port)
	router := startTestSpeaker(t, 65000, "127.0.0.3", port)
	ctx := context.Background()
	routerPeer := Peer{Address: netip.MustParseAddr("127.0.0.3"), ASN: 65000, HoldTime: 9 * time.Second, LocalAddress: netip.MustParseAddr("127.0.0.1"), Port: uint16(port)}
	nodeAsRouterPeer := Peer{Address: netip.MustParseAddr("127.0.0.1"), ASN: 64512, HoldTime: 9 * time.Second, LocalAddress: netip.MustParseAddr("127.0.0.3"), Port: uint16(port)}
	adv := advertisements{
		Prefixes:    pfx("10.244.1.0/24", "10.96.0.10/32"),
		ToNodes:     pfx("10.244.1.0/24"),
		ToExternal:  pfx("10.244.1.0/24", "10.96.0.10/32"),
		Protected:   pfx("10.244.0.0/16", "10.96.0.0/12"),
		Communities: []string{"64512:100"},
	}
	// The router accepts and exports everything: it plays an upstream that leaks.
	routerAdv := advertisements{
		Prefixes:   pfx("10.244.1.128/25", "172.20.0.0/16", "192.168.50.0/24"),
		ToExternal: pfx("10.244.1.128/25", "172.20.0.0/16", "192.168.50.0/24"),
	}
	for _, step := range []func() error{
		func() error { return node.SetPolicy(ctx, adv, []Peer{routerPeer}) },
		func() error { return node.SetPeers(ctx, []Peer{routerPeer}) },
		func() error { return node.SetPaths(ctx, adv.Prefixes) },
		func() error { return router.SetPolicy(ctx, routerAdv, []Peer{nodeAsRouterPeer}) },
		func() error { return router.SetPeers(ctx, []Peer{nodeAsRouterPeer}) },
		func() error { return router.SetPaths(ctx, routerAdv.Prefixes) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the router learns the pod CIDR and the service IP", func() bool {
		return slices.Equal(learnedPrefixes(t, router), []string{"10.244.1.0/24 via 127.0.0.1", "10.96.0.10/32 via 127.0.0.1"})
	})
	eventually(t, "the node learns only the routes outside its protected ranges", func() bool {
		return slices.Equal(learnedPrefixes(t, node), []string{"172.20.0.0/16 via 127.0.0.3", "192.168.50.0/24 via 127.0.0.3"})
	})
	// Communities ride along to external peers.
	var communities []uint32
	err := router.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv4}, func(d *api.Destination) {
		for _, p := range d.Paths {
			for _, a := range p.Pattrs {
				var c api.CommunitiesAttribute
				if a.UnmarshalTo(&c) == nil {
					communities = append(communities, c.Communities...)
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := uint32(64512<<16 | 100); len(communities) != 2 || communities[0] != want || communities[1] != want {
		t.Errorf("communities at the router = %v, want 64512:100 on both routes", communities)
	}

	// Protecting a new range later rejects a route already learned.
	adv.Protected = append(adv.Protected, netip.MustParsePrefix("192.168.0.0/16"))
	if err := node.SetPolicy(ctx, adv, []Peer{routerPeer}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the newly protected route to disappear", func() bool {
		return slices.Equal(learnedPrefixes(t, node), []string{"172.20.0.0/16 via 127.0.0.3"})
	})
}

func TestSpeakerSkipsARefusedPeerAndKeepsTheOthers(t *testing.T) {
	s := startTestSpeaker(t, 64512, "127.0.0.1", freePort(t))
	good := Peer{Address: netip.MustParseAddr("127.0.0.5"), ASN: 65000, HoldTime: 9 * time.Second}
	bad := Peer{Address: netip.MustParseAddr("127.0.0.6"), ASN: 65000, HoldTime: 9 * time.Second, RRClient: true, RRClusterID: "not-an-id"}
	if err := s.SetPeers(context.Background(), []Peer{bad, good}); err != nil {
		t.Fatal(err)
	}
	got := s.PeerStates(context.Background())
	if _, ok := got["127.0.0.5"]; !ok || len(got) != 1 {
		t.Errorf("peers = %v, want only 127.0.0.5", got)
	}
}

var testLogOut io.Writer = io.Discard

// routerPaths renders the router's paths as "prefix aspath [communities]".
func routerPaths(t *testing.T, s *gobgpSpeaker) []string {
	t.Helper()
	var out []string
	err := s.srv.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyIPv4}, func(d *api.Destination) {
		for _, p := range d.Paths {
			if p.NeighborIp == "<nil>" || p.NeighborIp == "" {
				continue // originated
			}
			line := d.Prefix
			for _, a := range p.Pattrs {
				m, err := a.UnmarshalNew()
				if err != nil {
					continue
				}
				switch attr := m.(type) {
				case *api.AsPathAttribute:
					for _, seg := range attr.Segments {
						for _, n := range seg.Numbers {
							line += " " + strconv.FormatUint(uint64(n), 10)
						}
					}
				case *api.CommunitiesAttribute:
					for _, c := range attr.Communities {
						line += fmt.Sprintf(" (%d:%d)", c>>16, c&0xffff)
					}
				}
			}
			out = append(out, line)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func TestSpeakerSendsTheNodesASPrependAndCommunitiesAndRejectsItsImportRanges(t *testing.T) {
	port := freePort(t)
	// Started with the cluster's AS: the node's own AS rides on each session.
	node := startTestSpeaker(t, 64512, "127.0.0.1", port)
	router := startTestSpeaker(t, 65000, "127.0.0.3", port)
	ctx := context.Background()
	routerPeer := Peer{Address: netip.MustParseAddr("127.0.0.3"), ASN: 65000, LocalASN: 64601, HoldTime: 9 * time.Second, LocalAddress: netip.MustParseAddr("127.0.0.1"), Port: uint16(port)}
	nodeAsRouterPeer := Peer{Address: netip.MustParseAddr("127.0.0.1"), ASN: 64601, HoldTime: 9 * time.Second, LocalAddress: netip.MustParseAddr("127.0.0.3"), Port: uint16(port)}
	adv := advertisements{
		Prefixes:     pfx("10.244.1.0/24"),
		ToExternal:   pfx("10.244.1.0/24"),
		ImportReject: pfx("10.10.0.0/16"),
		Communities:  []string{"64601:100", "65535:65281"},
		Prepend:      asPrepend{ASN: 64601, Repeat: 2},
	}
	routerAdv := advertisements{
		Prefixes:   pfx("10.10.5.0/24", "172.20.0.0/16"),
		ToExternal: pfx("10.10.5.0/24", "172.20.0.0/16"),
	}
	for _, step := range []func() error{
		func() error { return node.SetPolicy(ctx, adv, []Peer{routerPeer}) },
		func() error { return node.SetPeers(ctx, []Peer{routerPeer}) },
		func() error { return node.SetPaths(ctx, adv.Prefixes) },
		func() error { return router.SetPolicy(ctx, routerAdv, []Peer{nodeAsRouterPeer}) },
		func() error { return router.SetPeers(ctx, []Peer{nodeAsRouterPeer}) },
		func() error { return router.SetPaths(ctx, routerAdv.Prefixes) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	want := "10.244.1.0/24 64601 64601 64601 (64601:100) (65535:65281)"
	eventually(t, "the router to see the node's AS, prepended twice, and its communities", func() bool {
		return slices.Equal(routerPaths(t, router), []string{want})
	})
	eventually(t, "the node to accept only the route outside its import rejects", func() bool {
		return slices.Equal(learnedPrefixes(t, node), []string{"172.20.0.0/16 via 127.0.0.3"})
	})

	// New actions replace the export policy on the running speaker.
	adv.Prepend, adv.Communities, adv.ImportReject = asPrepend{}, []string{"64601:200"}, nil
	if err := node.SetPolicy(ctx, adv, []Peer{routerPeer}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the router to see the path without prepending and with the new community", func() bool {
		return slices.Equal(routerPaths(t, router), []string{"10.244.1.0/24 64601 (64601:200)"})
	})
	eventually(t, "the node to accept the route it no longer rejects", func() bool {
		return slices.Equal(learnedPrefixes(t, node), []string{"10.10.5.0/24 via 127.0.0.3", "172.20.0.0/16 via 127.0.0.3"})
	})
	var policies []string
	_ = node.srv.ListPolicy(ctx, &api.ListPolicyRequest{}, func(p *api.Policy) { policies = append(policies, p.Name) })
	if len(policies) != 2 {
		t.Errorf("policies = %v, want the replaced export policy gone", policies)
	}
}

func TestSpeakerNodesOfAnotherASGetOnlyTheNodesOwnPodCIDRs(t *testing.T) {
	port := freePort(t)
	a := startTestSpeaker(t, 64601, "127.0.0.1", port)
	b := startTestSpeaker(t, 64602, "127.0.0.2", port)
	ctx := context.Background()
	peerB := Peer{Address: netip.MustParseAddr("127.0.0.2"), ASN: 64602, LocalASN: 64601, Node: "b", Multihop: 255, HoldTime: 9 * time.Second, LocalAddress: netip.MustParseAddr("127.0.0.1"), Port: uint16(port)}
	peerA := Peer{Address: netip.MustParseAddr("127.0.0.1"), ASN: 64601, LocalASN: 64602, Node: "a", Multihop: 255, HoldTime: 9 * time.Second, LocalAddress: netip.MustParseAddr("127.0.0.2"), Port: uint16(port)}
	// a also originates c's pod CIDR, as if learned over iBGP: it must not relay it.
	advA := advertisements{
		Prefixes: pfx("10.244.1.0/24", "10.244.3.0/24"), ToNodes: pfx("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"),
		ToOtherASNodes: pfx("10.244.1.0/24"), Communities: []string{"64601:100"}, Prepend: asPrepend{ASN: 64601, Repeat: 2},
	}
	advB := advertisements{Prefixes: pfx("10.244.2.0/24"), ToNodes: pfx("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"), ToOtherASNodes: pfx("10.244.2.0/24")}
	for _, step := range []func() error{
		func() error { return a.SetPolicy(ctx, advA, []Peer{peerB}) },
		func() error { return a.SetPeers(ctx, []Peer{peerB}) },
		func() error { return a.SetPaths(ctx, advA.Prefixes) },
		func() error { return b.SetPolicy(ctx, advB, []Peer{peerA}) },
		func() error { return b.SetPeers(ctx, []Peer{peerA}) },
		func() error { return b.SetPaths(ctx, advB.Prefixes) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "each node to learn the other's own pod CIDR", func() bool {
		return slices.Equal(learnedPrefixes(t, b), []string{"10.244.1.0/24 via 127.0.0.1"}) &&
			slices.Equal(learnedPrefixes(t, a), []string{"10.244.2.0/24 via 127.0.0.2"})
	})
	// Prepending and communities are for routers outside the cluster.
	if got := routerPaths(t, b); !slices.Equal(got, []string{"10.244.1.0/24 64601"}) {
		t.Errorf("b's paths = %v, want a's pod CIDR with a's AS only", got)
	}
}
