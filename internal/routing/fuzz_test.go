package routing

import (
	"io"
	"log/slog"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-routerd/kube-routerd/internal/config"
)

// FuzzParseNode feeds arbitrary annotations, addresses and pod CIDRs of a Node to the
// routing controller. It must not panic, and whatever it keeps must be usable as is:
// addresses of the right family, masked pod CIDRs, valid AS numbers, one route
// reflector role at most, and never a peering with the node itself.
func FuzzParseNode(f *testing.F) {
	for _, s := range []struct{ ips, asns, passwords, rrServer, rrClient, internalIP, podCIDR string }{
		{"192.0.2.1,192.0.2.2", "65001", "", "", "", "10.0.0.1", "10.244.1.0/24"},
		{"192.0.2.1, 192.0.2.2", "65001,65002", "cGFzcw==,d29yZA==", "42", "", "10.0.0.1", "10.244.1.0/24"},
		{"fd00::1", "65001", "", "", "10.0.0.9", "fd00::5", "fd00:244::/64"},
		{"192.0.2.1", "0", "not base64!", "0", "4294967296", "not-an-ip", "10.244.1.7/33"},
		{"10.0.0.1", "4294967295", "", "1.2.3.4", "1.2.3.4", "10.0.0.1", "10.244.1.7/24"},
		{",,,", ",", ",", " ", "-1", "", ""},
		{"192.0.2.1,192.0.2.1", "65001,65001", "", "", "", "192.0.2.1", "0.0.0.0/0"},
	} {
		f.Add(s.ips, s.asns, s.passwords, s.rrServer, s.rrClient, s.internalIP, s.podCIDR)
	}
	cfg := config.Default().Routing
	cfg.ASN = 64512
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, ips, asns, passwords, rrServer, rrClient, internalIP, podCIDR string) {
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "self", Annotations: map[string]string{
				annotationPeerIPs: ips, annotationPeerASNs: asns, annotationPeerPasswords: passwords,
				annotationRRServer: rrServer, annotationRRClient: rrClient,
			}},
			Spec:   corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR, podCIDR}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: internalIP}}},
		}
		info := parseNode(n, cfg, log)
		if info.Address.IsValid() && !info.Address.Is4() {
			t.Fatalf("non-IPv4 node address %s", info.Address)
		}
		if info.AddressV6.IsValid() && (info.AddressV6.Is4() || info.AddressV6.Is4In6() || !info.AddressV6.IsGlobalUnicast()) {
			t.Fatalf("unusable IPv6 node address %s", info.AddressV6)
		}
		for _, p := range info.PodCIDRs {
			if p.Addr().Is4In6() || p != p.Masked() {
				t.Fatalf("pod CIDR %s is not a masked IPv4 or IPv6 prefix", p)
			}
		}
		if info.RRServer != "" && info.RRClient != "" {
			t.Fatalf("both route reflector roles: server %q, client %q", info.RRServer, info.RRClient)
		}
		for _, p := range info.Peers {
			if !p.Address.IsValid() || p.Address.Is4In6() || !config.ValidASN(int64(p.ASN)) || !p.External() {
				t.Fatalf("unusable peer from annotations: %+v", p)
			}
		}
		other := nodeInfo{Name: "other", Address: info.Address, AddressV6: info.AddressV6, PodCIDRs: info.PodCIDRs, RRClient: info.RRClient, RRServer: info.RRServer}
		for _, p := range desiredPeers(cfg, info, []nodeInfo{info, other}) {
			if info.HasAddress(p.Address) {
				t.Fatalf("node peers with its own address %s: %+v", p.Address, p)
			}
		}
	})
}

// FuzzParseNodeBGPShape feeds arbitrary values of the per-node BGP shape annotations.
// Whatever parseNode keeps must be usable as is: a valid AS number, prepending of a
// valid AS at least once or not at all, communities as "ASN:value", masked import
// rejects, and peers with a valid address, AS, and local address of their family.
func FuzzParseNodeBGPShape(f *testing.F) {
	f.Add("- {remoteip: 192.0.2.1, remoteasn: 65000, port: 1179, password: c2VjcmV0, localip: 10.0.0.1}", "64601", "64601", "2", "64601:100,no-export", "10.10.0.0/16", "10.0.0.1")
	f.Add("- remoteip: 192.0.2.1\n  remoteasn: -1\n", "0", "4294967295", "256", "65536:1", "10.10.0.1/16", "eth0")
	f.Add("{}", "", "", "0", ",", ",", ",")
	f.Add("- {remoteip: 'fd00::1', remoteasn: 65000, localip: 10.0.0.1, port: 70000}", "65000.1", "1", "1", "4294967295", "::/0", "::")
	cfg := config.Default().Routing
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, peers, asn, prependAS, repeat, communities, reject, listen string) {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "self", Annotations: map[string]string{
			annotationPeers: peers, annotationNodeASN: asn, annotationPrependAS: prependAS, annotationPrependRepeat: repeat,
			annotationCommunities: communities, annotationImportReject: reject, annotationLocalAddresses: listen,
		}}}
		info := parseNode(n, cfg, log)
		if !config.ValidASN(int64(info.ASN)) {
			t.Fatalf("invalid node AS %d", info.ASN)
		}
		if p := info.Prepend; p != (asPrepend{}) && (p.Repeat == 0 || !config.ValidASN(int64(p.ASN))) {
			t.Fatalf("unusable prepending %+v", p)
		}
		for _, c := range info.Communities {
			if v, err := config.ParseCommunity(c); err != nil || config.FormatCommunity(v) != c {
				t.Fatalf("community %q is not in ASN:value form", c)
			}
		}
		for _, p := range info.ImportReject {
			if p != p.Masked() || p.Addr().Is4In6() {
				t.Fatalf("import reject %s is not a masked prefix", p)
			}
		}
		for _, a := range info.ListenAddresses {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
				t.Fatalf("unusable listen address %s", a)
			}
		}
		for _, p := range info.Peers {
			if !p.Address.IsValid() || !config.ValidASN(int64(p.ASN)) || !p.External() ||
				(p.LocalAddress.IsValid() && p.LocalAddress.Is4() != p.Address.Is4()) {
				t.Fatalf("unusable peer from annotations: %+v", p)
			}
		}
	})
}
