//go:build integration

package routing

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/osrg/gobgp/v3/pkg/packet/bgp"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

const (
	greedyLimit  = 5
	greedyRoutes = 12
)

var flappyRoute = netip.MustParsePrefix("172.20.0.0/16")

// faultLab is three mesh nodes, the first of which also peers with four external
// routers, each in its own namespace and misbehaving in its own way: "flappy" (BIRD,
// flapped by the test, TCP MD5 with the right password), "greedy" (BIRD, announcing
// more than max_prefixes), "locked" (BIRD, the wrong TCP MD5 password) and "garbage"
// (the test itself, writing junk to the BGP port).
type faultLab struct {
	nodes                           []*netns.Node
	proc                            *nodeProcess // the controller of nodes[0]
	flappy, greedy, locked, garbage *netns.Node
	bird                            map[string]*netns.BIRD
}

func newFaultLab(t *testing.T) *faultLab {
	t.Helper()
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	api := forwardAPIServer(t, rc)
	link := netns.NewLink(t)
	lab := &faultLab{bird: map[string]*netns.BIRD{}}
	for range 3 {
		lab.nodes = append(lab.nodes, link.AddNode(t, netns.NodeOptions{Name: testenv.UniqueName("fault"), Client: cs}))
	}
	// Not registered: routers outside the cluster.
	lab.flappy = link.AddNode(t, netns.NodeOptions{Name: "flappy"})
	lab.greedy = link.AddNode(t, netns.NodeOptions{Name: "greedy"})
	lab.locked = link.AddNode(t, netns.NodeOptions{Name: "locked"})
	lab.garbage = link.AddNode(t, netns.NodeOptions{Name: "garbage"})

	var greedy strings.Builder
	for i := range greedyRoutes {
		fmt.Fprintf(&greedy, "route 172.30.%d.0/24 blackhole; ", i)
	}
	startBIRD(t, lab, lab.flappy, fmt.Sprintf("route %s blackhole;", flappyRoute), `password "s3cret";`)
	startBIRD(t, lab, lab.greedy, greedy.String(), "")
	startBIRD(t, lab, lab.locked, fmt.Sprintf("route %s blackhole;", flappyRoute), `password "wrong";`)

	cfg := fmt.Sprintf(`%s
[[routing.peers]]
address = "%s"
asn = 65000
password = "s3cret"
[[routing.peers]]
address = "%s"
asn = 65001
[[routing.peers]]
address = "%s"
asn = 65000
max_prefixes = %d
[[routing.peers]]
address = "%s"
asn = 65000
password = "right"
`, meshConfig, lab.flappy.IPv4, lab.garbage.IPv4, lab.greedy.IPv4, greedyLimit, lab.locked.IPv4)
	lab.proc = startController(t, lab.nodes[0], api, cfg)
	for _, n := range lab.nodes[1:] {
		startController(t, n, api, meshConfig)
	}
	return lab
}

// startBIRD runs BIRD in a router namespace, announcing the static routes to node 0
// as AS 65000. Short retry and error wait times keep the flaps of the test quick.
func startBIRD(t *testing.T, lab *faultLab, router *netns.Node, routes, auth string) {
	t.Helper()
	lab.bird[router.Name] = netns.StartBIRD(t, router.NS, fmt.Sprintf(`
router id %[1]s;
log stderr all;
protocol device {}
protocol static { ipv4; %[2]s }
protocol bgp %[3]s {
	local as 65000; neighbor %[4]s as 64512; %[5]s
	hold time 9; connect retry time 2; connect delay time 1; error wait time 1, 5;
	ipv4 { import all; export where source = RTS_STATIC; };
}
`, router.IPv4, routes, router.Name, lab.nodes[0].IPv4, auth))
}

// birdEstablished reports whether a BIRD protocol's session is up.
func (lab *faultLab) birdEstablished(name string) bool {
	return strings.Contains(lab.bird[name].Ctl("show", "protocols", name), "Established")
}

// meshSessions lists node 0's established BGP connections to the other nodes as
// "local peer" pairs: the same pairs later mean the same sessions, never re-opened.
func (lab *faultLab) meshSessions(t *testing.T) []string {
	t.Helper()
	out, err := lab.nodes[0].Command(context.Background(), "ss", "-tnH", "state", "established", "( sport = :179 or dport = :179 )").Output()
	if err != nil {
		t.Errorf("ss in %s: %v", lab.nodes[0].Name, err)
		return nil
	}
	var peers []string
	for _, n := range lab.nodes[1:] {
		peers = append(peers, n.IPv4.String()+":", "["+n.IPv6.String()+"]:")
	}
	var sessions []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		if slices.ContainsFunc(peers, func(p string) bool { return strings.HasPrefix(f[3], p) }) {
			sessions = append(sessions, f[2]+" "+f[3])
		}
	}
	slices.Sort(sessions)
	return sessions
}

// meshRoutesInstalled reports whether node 0 has both pod routes of both other nodes.
func (lab *faultLab) meshRoutesInstalled(t *testing.T) bool {
	v4, v6 := ourRoutesVia(t, lab.nodes[0], "-4"), ourRoutesVia(t, lab.nodes[0], "-6")
	for _, want := range podRoutesTo("-4", lab.nodes[1:]...) {
		if !slices.Contains(v4, want) {
			return false
		}
	}
	return slices.Equal(v6, podRoutesTo("-6", lab.nodes[1:]...))
}

// meshMonitor checks node 0's mesh sessions and routes every 200 ms from its start
// until the test ends, and keeps what it saw go wrong.
type meshMonitor struct {
	mu       sync.Mutex
	problems []string
	checks   int
}

func (lab *faultLab) watchMesh(t *testing.T) *meshMonitor {
	t.Helper()
	baseline := lab.meshSessions(t)
	if len(baseline) != 4 {
		t.Fatalf("node 0 has %d mesh sessions, want 4 (IPv4 and IPv6 to two nodes): %q", len(baseline), baseline)
	}
	m := &meshMonitor{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var problem string
			if got := lab.meshSessions(t); !slices.Equal(got, baseline) {
				problem = fmt.Sprintf("%s: mesh sessions changed from %q to %q", time.Now().Format(time.StampMilli), baseline, got)
			} else if !lab.meshRoutesInstalled(t) {
				problem = fmt.Sprintf("%s: pod routes missing: %q %q", time.Now().Format(time.StampMilli),
					ourRoutesVia(t, lab.nodes[0], "-4"), ourRoutesVia(t, lab.nodes[0], "-6"))
			}
			m.mu.Lock()
			m.checks++
			if problem != "" {
				m.problems = append(m.problems, problem)
			}
			m.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// expectUndisturbed fails the test if the mesh was disturbed at any check so far.
func (m *meshMonitor) expectUndisturbed(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.problems {
		t.Error(p)
	}
	m.problems = nil
	t.Logf("mesh sessions and routes of node 0 unchanged over %d checks so far", m.checks)
}

// logLine returns the first line of a log, from byte offset from on, that holds
// every one of parts; "" if there is none.
func logLine(log *syncBuffer, from int, parts ...string) string {
	text := log.String()
	for _, l := range strings.Split(text[min(from, len(text)):], "\n") {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(l, p) }) {
			return l
		}
	}
	return ""
}

func TestBGPFaultsLeaveTheOtherSessionsAndRoutesAlone(t *testing.T) {
	lab := newFaultLab(t)
	log := lab.proc.log
	testenv.Eventually(t, "node 0 to install the mesh routes and the route of the MD5-keyed peer", 90*time.Second, func() bool {
		return lab.meshRoutesInstalled(t) && slices.Contains(ourRoutesVia(t, lab.nodes[0], "-4"), fmt.Sprintf("%s via %s", flappyRoute, lab.flappy.IPv4))
	})
	mon := lab.watchMesh(t)

	t.Run("a wrong TCP MD5 password: the session never comes up and that is logged", func(t *testing.T) {
		warning := fmt.Sprintf("BGP session is not established; check reachability, AS numbers and passwords\" controller=routing peer=%s", lab.locked.IPv4)
		testenv.Eventually(t, "the warning about the locked peer", 90*time.Second, func() bool {
			return strings.Contains(log.String(), warning)
		})
		if lab.birdEstablished("locked") {
			t.Errorf("the session with the wrong password is established:\n%s", lab.bird["locked"].Ctl("show", "protocols", "locked"))
		}
		// The right password on the same router works: MD5 itself is fine.
		if !lab.birdEstablished("flappy") {
			t.Errorf("the session with the right password is not established:\n%s", lab.bird["flappy"].Ctl("show", "protocols", "flappy"))
		}
		mon.expectUndisturbed(t)
	})

	t.Run("max_prefixes: a peer announcing more is torn down and none of its routes stay", func(t *testing.T) {
		peer := "peer=" + lab.greedy.IPv4.String()
		testenv.Eventually(t, "the prefix limit log line naming the greedy peer", 90*time.Second, func() bool {
			return logLine(log, 0, `msg="prefix limit reached"`, peer) != ""
		})
		t.Logf("log: %s", logLine(log, 0, `msg="prefix limit reached"`, peer))
		// The Cease, subcode 1: maximum number of prefixes reached.
		testenv.Eventually(t, "the speaker to send the greedy peer a max-prefix Cease", 30*time.Second, func() bool {
			return logLine(log, 0, `msg="sent notification"`, peer, "Code=6", "Subcode=1") != ""
		})
		const received = "Received: Maximum number of prefixes reached"
		// BIRD mostly reads the Cease; when it still had UPDATEs in flight, the
		// speaker's close becomes a reset that can discard the Cease before BIRD
		// reads it. Either way BIRD's session must be down.
		testenv.Eventually(t, "BIRD to log the Cease it received or to lose the session", 30*time.Second, func() bool {
			return strings.Contains(lab.bird["greedy"].Log(), received) || !lab.birdEstablished("greedy")
		})
		if !strings.Contains(lab.bird["greedy"].Log(), received) {
			t.Logf("BIRD lost the session without reading the Cease:\n%s", lab.bird["greedy"].Ctl("show", "protocols", "all", "greedy"))
		}
		testenv.Eventually(t, "no route of the greedy peer in node 0's kernel", 30*time.Second, func() bool {
			return !strings.Contains(strings.Join(ourRoutesVia(t, lab.nodes[0], "-4"), "\n"), "172.30.")
		})
		if !slices.Contains(ourRoutesVia(t, lab.nodes[0], "-4"), fmt.Sprintf("%s via %s", flappyRoute, lab.flappy.IPv4)) {
			t.Errorf("the route of another external peer went away")
		}
		mon.expectUndisturbed(t)
	})

	t.Run("garbage on the BGP port: the speaker drops the connection with a NOTIFICATION and logs it", func(t *testing.T) {
		open, _ := bgp.NewBGPOpenMessage(65001, 9, lab.garbage.IPv4.String(), []bgp.OptionParameterInterface{
			bgp.NewOptionParameterCapability([]bgp.ParameterCapabilityInterface{
				bgp.NewCapMultiProtocol(bgp.RF_IPv4_UC), bgp.NewCapFourOctetASNumber(65001),
			}),
		}).Serialize()
		keepalive, _ := bgp.NewBGPKeepAliveMessage().Serialize()
		badVersion := slices.Clone(open)
		badVersion[19] = 3
		for _, tc := range []struct {
			name      string
			handshake bool // send a valid OPEN and KEEPALIVE first and wait for the session
			junk      []byte
			logged    string
		}{
			{"zeros, a header of length 0", false, make([]byte, 64), "Session will be reset due to malformed BGP Header"},
			{"an OPEN of BGP version 3", false, badVersion, "unsupported version 3"},
			{"an UPDATE whose attributes overrun the message", true, malformedUpdate(), "Session will be reset due to malformed BGP message"},
		} {
			from := len(log.String())
			testenv.Eventually(t, "a NOTIFICATION in answer to "+tc.name, 60*time.Second, func() bool {
				// Between attempts the speaker idles for 5 s and closes what comes in.
				got, err := lab.sendGarbage(open, keepalive, tc.handshake, tc.junk, false)
				if err != nil {
					t.Logf("%s: %v", tc.name, err)
				}
				return hasNotification(got)
			})
			testenv.Eventually(t, "the log line about "+tc.name, 30*time.Second, func() bool {
				return logLine(log, from, tc.logged, "peer="+lab.garbage.IPv4.String()) != ""
			})
			t.Logf("%s: log: %s", tc.name, logLine(log, from, tc.logged, "peer="+lab.garbage.IPv4.String()))
		}
		// GoBGP does not check the marker nor the length before reading the body: a
		// header claiming 0x4242 bytes holds that peer's connection until the peer
		// hangs up (or the 4-minute OpenSent hold timer runs out), and only that one.
		testenv.Eventually(t, "the speaker to close a connection whose junk header claims 16962 bytes once the sender hangs up", 60*time.Second, func() bool {
			got, err := lab.sendGarbage(open, keepalive, false, bytes.Repeat([]byte{0x42}, 64), true)
			if err != nil {
				t.Logf("junk header: %v", err)
				return false
			}
			// Our OPEN was read (the session got that far), then the speaker hung up.
			return len(got) > 0
		})
		mon.expectUndisturbed(t)
	})

	t.Run("a peer flapping every few seconds disturbs no other session or route", func(t *testing.T) {
		want := fmt.Sprintf("%s via %s", flappyRoute, lab.flappy.IPv4)
		for i := range 5 {
			lab.bird["flappy"].Ctl("disable", "flappy")
			testenv.Eventually(t, "the flapping peer's route to go", 30*time.Second, func() bool {
				return !slices.Contains(ourRoutesVia(t, lab.nodes[0], "-4"), want)
			})
			time.Sleep(2 * time.Second) // the flap's down time, not a synchronisation
			enabled := time.Now()
			lab.bird["flappy"].Ctl("enable", "flappy")
			testenv.Eventually(t, "the flapping peer's route to come back", 60*time.Second, func() bool {
				return slices.Contains(ourRoutesVia(t, lab.nodes[0], "-4"), want)
			})
			t.Logf("flap %d: session up and route installed %s after the peer came back", i+1, time.Since(enabled).Round(time.Millisecond))
		}
		mon.expectUndisturbed(t)
	})

	if l := logLine(log, 0, `msg="Peer Up"`, "peer="+lab.locked.IPv4.String()); l != "" {
		t.Errorf("the peer with the wrong password came up at some point: %s", l)
	}
}

// malformedUpdate is an UPDATE whose path attribute length claims more bytes than
// the message holds.
func malformedUpdate() []byte {
	body := []byte{0, 0, 0, 40, 0x40, 1, 1} // no withdrawn routes; 40 bytes of attributes announced, 3 sent
	msg := bytes.Repeat([]byte{0xff}, 16)
	msg = binary.BigEndian.AppendUint16(msg, uint16(19+len(body)))
	msg = append(msg, bgp.BGP_MSG_UPDATE)
	return append(msg, body...)
}

// hasNotification reports whether a stream of BGP messages holds a NOTIFICATION.
func hasNotification(stream []byte) bool {
	for len(stream) >= 19 {
		n := int(binary.BigEndian.Uint16(stream[16:18]))
		if stream[18] == bgp.BGP_MSG_NOTIFICATION {
			return true
		}
		if n < 19 || n > len(stream) {
			return false
		}
		stream = stream[n:]
	}
	return false
}

// sendGarbage connects from the garbage peer's address to node 0's BGP port, with a
// valid OPEN and KEEPALIVE first when handshake is set, then writes junk (and hangs
// up its sending side when hangUp is set) and returns everything the speaker sent
// until it closed the connection.
func (lab *faultLab) sendGarbage(open, keepalive []byte, handshake bool, junk []byte, hangUp bool) ([]byte, error) {
	var conn net.Conn
	err := lab.garbage.Do(func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: lab.garbage.IPv4.AsSlice()}, Timeout: 5 * time.Second}
		conn, err = d.Dial("tcp", netip.AddrPortFrom(lab.nodes[0].IPv4, 179).String())
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	var got []byte
	if handshake {
		if _, err := conn.Write(append(slices.Clone(open), keepalive...)); err != nil {
			return nil, err
		}
		// Wait for the speaker's OPEN and KEEPALIVE: the session is established.
		buf := make([]byte, 4096)
		for !bytes.Contains(got, keepalive) {
			n, err := conn.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				return nil, fmt.Errorf("handshake: %w", err)
			}
		}
	}
	if _, err := conn.Write(junk); err != nil {
		return got, err
	}
	if hangUp {
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			return got, err
		}
	}
	rest, err := io.ReadAll(conn)
	got = append(got, rest...)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		return got, err
	}
	return got, nil
}
