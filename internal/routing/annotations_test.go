package routing

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/config"
)

func TestParseNodeBGPShape(t *testing.T) {
	cfg := config.Default().Routing
	hold := cfg.HoldTime.Duration
	router := netip.MustParseAddr("192.0.2.1")
	base := func(f func(*nodeInfo)) nodeInfo {
		n := nodeInfo{Name: "n", Address: netip.MustParseAddr("10.0.0.1"), ASN: 64512}
		if f != nil {
			f(&n)
		}
		return n
	}
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want nodeInfo
		// wantLog is in the log (with the node's name); "" means nothing is logged.
		wantLog string
	}{
		{
			name: "the YAML peers annotation gives every field, the password base64-decoded, bfd ours",
			ann: map[string]string{annotationPeers: `
- remoteip: 192.0.2.1
  remoteasn: 65000
  port: 1179
  password: c2VjcmV0
  localip: 10.0.0.1
- remoteip: 2001:db8::1
  remoteasn: 65001
  bfd: true
`},
			want: base(func(n *nodeInfo) {
				n.Peers = []Peer{
					{Address: router, ASN: 65000, Port: 1179, Password: "secret", LocalAddress: netip.MustParseAddr("10.0.0.1"), HoldTime: hold},
					{Address: netip.MustParseAddr("2001:db8::1"), ASN: 65001, HoldTime: hold, BFD: true},
				}
			}),
		},
		{
			name: "the YAML form wins over the per-field forms, and says so",
			ann:  map[string]string{annotationPeers: "- {remoteip: 192.0.2.1, remoteasn: 65000}", annotationPeerIPs: "192.0.2.9", annotationPeerASNs: "65009"},
			want: base(func(n *nodeInfo) {
				n.Peers = []Peer{{Address: router, ASN: 65000, HoldTime: hold}}
			}),
			wantLog: "using kube-router.io/peers",
		},
		{
			name:    "YAML that is not a list is logged and no peer is taken",
			ann:     map[string]string{annotationPeers: "remoteip: 192.0.2.1"},
			want:    base(nil),
			wantLog: "is not a YAML list of peers",
		},
		{
			name:    "a YAML peer without remoteasn is logged and no peer is taken",
			ann:     map[string]string{annotationPeers: "- remoteip: 192.0.2.1\n- {remoteip: 192.0.2.2, remoteasn: 65000}"},
			want:    base(nil),
			wantLog: "entry 0: remoteasn is missing",
		},
		{
			name:    "a YAML local IP of the other family is refused",
			ann:     map[string]string{annotationPeers: "- {remoteip: 192.0.2.1, remoteasn: 65000, localip: 'fd00::1'}"},
			want:    base(nil),
			wantLog: "is of the other IP family",
		},
		{
			name: "per-field ports, local IPs and passwords keep their positions; empty items take defaults",
			ann: map[string]string{
				annotationPeerIPs: "192.0.2.1,192.0.2.2", annotationPeerASNs: "65000,65001",
				annotationPeerPorts: "1179,", annotationPeerLocalIPs: ",10.0.0.1", annotationPeerPasswords: "c2VjcmV0,",
			},
			want: base(func(n *nodeInfo) {
				n.Peers = []Peer{
					{Address: router, ASN: 65000, Port: 1179, Password: "secret", HoldTime: hold},
					{Address: netip.MustParseAddr("192.0.2.2"), ASN: 65001, LocalAddress: netip.MustParseAddr("10.0.0.1"), HoldTime: hold},
				}
			}),
		},
		{
			name:    "a port list of the wrong length is logged and the peers ignored",
			ann:     map[string]string{annotationPeerIPs: "192.0.2.1,192.0.2.2", annotationPeerASNs: "65000", annotationPeerPorts: "1179"},
			want:    base(nil),
			wantLog: "kube-router.io/peer.ports has 1 entries for 2 peer IPs",
		},
		{
			name:    "a port out of range is logged and the peers ignored",
			ann:     map[string]string{annotationPeerIPs: "192.0.2.1", annotationPeerASNs: "65000", annotationPeerPorts: "70000"},
			want:    base(nil),
			wantLog: "invalid port",
		},
		{
			name: "the node's AS number, prepending, communities, import rejects and listen addresses",
			ann: map[string]string{
				annotationNodeASN: "64601", annotationPrependAS: "64601", annotationPrependRepeat: "3",
				annotationCommunities:    "64601:100, 4259905637, no-export",
				annotationImportReject:   "10.10.0.0/16,10.20.1.0/24,fd00:99::/48",
				annotationLocalAddresses: "10.0.0.1, 192.168.1.99",
			},
			want: base(func(n *nodeInfo) {
				n.ASN = 64601
				n.Prepend = asPrepend{ASN: 64601, Repeat: 3}
				n.Communities = []string{"64601:100", "65001:101", "65535:65281"}
				n.ImportReject = pfx("10.10.0.0/16", "10.20.1.0/24", "fd00:99::/48")
				n.ListenAddresses = []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("192.168.1.99")}
			}),
		},
		{
			name:    "an invalid node AS number is logged and the cluster's kept; the other annotations still apply",
			ann:     map[string]string{annotationNodeASN: "rack-1", annotationCommunities: "64512:7"},
			want:    base(func(n *nodeInfo) { n.Communities = []string{"64512:7"} }),
			wantLog: "annotation=kube-router.io/node.asn",
		},
		{
			name:    "prepending without a repeat count is logged and nothing prepended",
			ann:     map[string]string{annotationPrependAS: "64601"},
			want:    base(nil),
			wantLog: "must be set together",
		},
		{
			name:    "a repeat count of zero is refused",
			ann:     map[string]string{annotationPrependAS: "64601", annotationPrependRepeat: "0"},
			want:    base(nil),
			wantLog: "is not a count of 1-255",
		},
		{
			name:    "one invalid community drops the annotation",
			ann:     map[string]string{annotationCommunities: "64512:100,65536:1"},
			want:    base(nil),
			wantLog: "annotation=kube-router.io/node.bgp.communities",
		},
		{
			name:    "an import reject that is not a CIDR drops the annotation",
			ann:     map[string]string{annotationImportReject: "10.10.0.0/16,10.20.0.0"},
			want:    base(nil),
			wantLog: "annotation=kube-router.io/node.bgp.customimportreject",
		},
		{
			name:    "a listen address that is not an address drops the annotation",
			ann:     map[string]string{annotationLocalAddresses: "10.0.0.1,eth0"},
			want:    base(nil),
			wantLog: "annotation=kube-router.io/bgp-local-addresses",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, buf := captureLog()
			got := parseNode(node("n", "10.0.0.1", nil, tc.ann), cfg, log)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if tc.wantLog == "" {
				if buf.Len() > 0 {
					t.Errorf("unexpected log: %s", buf)
				}
				return
			}
			if !strings.Contains(buf.String(), tc.wantLog) || !strings.Contains(buf.String(), "node=n") {
				t.Errorf("log %q does not contain %q and node=n", buf, tc.wantLog)
			}
		})
	}
}

func TestDesiredPeersSpeakTheNodesASAndNodesOfAnotherASAreEBGP(t *testing.T) {
	cfg := config.Default().Routing
	cfg.Peers = []config.Peer{{Address: config.Addr{Addr: netip.MustParseAddr("192.0.2.1")}, ASN: 65000}}
	rack := func(n nodeInfo, asn uint32) nodeInfo { n.ASN = asn; return n }
	a, b, c := rack(info("a", "10.0.0.1"), 64601), rack(info("b", "10.0.0.2"), 64601), rack(info("c", "10.0.1.3"), 64602)
	a.Peers = []Peer{{Address: netip.MustParseAddr("10.0.0.254"), ASN: 65100}}
	var got []string
	for _, p := range desiredPeers(cfg, a, []nodeInfo{a, b, c}) {
		got = append(got, fmt.Sprintf("%s asn %d local %d multihop %d ebgp-node %v", p.Address, p.ASN, p.LocalASN, p.Multihop, p.OtherASNode()))
	}
	want := []string{
		"10.0.0.2 asn 64601 local 64601 multihop 0 ebgp-node false",
		"10.0.0.254 asn 65100 local 64601 multihop 0 ebgp-node false",
		"10.0.1.3 asn 64602 local 64601 multihop 255 ebgp-node true",
		"192.0.2.1 asn 65000 local 64601 multihop 0 ebgp-node false",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestDesiredAdvertisementsCarryTheNodesShape(t *testing.T) {
	cfg := config.Default().Routing
	cfg.Communities = []string{"64512:1", "no-advertise"}
	self := info("a", "10.0.0.1", "10.244.1.0/24")
	self.Communities = []string{"64601:100", "64512:1"}
	self.Prepend = asPrepend{ASN: 64601, Repeat: 2}
	self.ImportReject = pfx("10.10.0.0/16")
	log, _ := captureLog()
	got := desiredAdvertisements(cfg, self, []nodeInfo{self, info("b", "10.0.0.2", "10.244.2.0/24")}, nil, nil, log)
	if want := []string{"64512:1", "64601:100", "65535:65282"}; !reflect.DeepEqual(got.Communities, want) {
		t.Errorf("communities = %q, want the config's and the node's, once each, as ASN:value: %q", got.Communities, want)
	}
	if got.Prepend != self.Prepend || !reflect.DeepEqual(got.ImportReject, self.ImportReject) {
		t.Errorf("prepend %+v, import reject %v: want the node's", got.Prepend, got.ImportReject)
	}
	if !reflect.DeepEqual(got.ToOtherASNodes, pfx("10.244.1.0/24")) || !reflect.DeepEqual(got.ToNodes, pfx("10.244.1.0/24", "10.244.2.0/24")) {
		t.Errorf("to other-AS nodes %v, to nodes %v: want our pod CIDR only to nodes of another AS", got.ToOtherASNodes, got.ToNodes)
	}
}
