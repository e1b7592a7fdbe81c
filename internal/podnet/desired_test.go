package podnet

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func defaults() config.PodNetwork { return config.Default().PodNetwork }

func TestPodMTU(t *testing.T) {
	v4, dual := prefixes("10.244.1.0/24"), prefixes("10.244.1.0/24", "fd00:244:1::/64")
	fixed := defaults()
	fixed.MTU = 1400
	cases := []struct {
		name     string
		opts     Options
		podCIDRs []netip.Prefix
		want     int
	}{
		{"a configured MTU wins", Options{Config: fixed, MayTunnel: true}, dual, 1400},
		{"without tunnels pods get the link MTU", Options{Config: defaults()}, dual, 9000},
		{"IPv4 pods leave room for the IPIP header", Options{Config: defaults(), MayTunnel: true}, v4, 8980},
		{"dual-stack pods leave room for the larger ip6ip6 header", Options{Config: defaults(), MayTunnel: true}, dual, 8960},
		{"FOU adds UDP to IPIP", Options{Config: defaults(), MayTunnel: true, Encap: route.EncapFOU}, v4, 8972},
		{"VXLAN over IPv6 takes 70 bytes", Options{Config: defaults(), MayTunnel: true, Encap: route.EncapVXLAN}, dual, 8930},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := podMTU(tc.opts, 9000, tc.podCIDRs); got != tc.want {
				t.Errorf("PodMTU = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestConflistIsTheStandardBridgeWithARangePerFamily(t *testing.T) {
	var conf struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []struct {
			Type             string `json:"type"`
			Bridge           string `json:"bridge"`
			IsDefaultGateway bool   `json:"isDefaultGateway"`
			HairpinMode      bool   `json:"hairpinMode"`
			MTU              int    `json:"mtu"`
			IPAM             struct {
				Type   string                `json:"type"`
				Ranges [][]map[string]string `json:"ranges"`
			} `json:"ipam"`
			Capabilities map[string]bool `json:"capabilities"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(Conflist("kube-bridge", 1440, prefixes("10.244.1.0/24", "fd00:244:1::/64")), &conf); err != nil {
		t.Fatal(err)
	}
	if conf.Name != networkName || len(conf.Plugins) != 2 {
		t.Fatalf("conflist %+v", conf)
	}
	br, pm := conf.Plugins[0], conf.Plugins[1]
	if br.Type != "bridge" || br.Bridge != "kube-bridge" || !br.IsDefaultGateway || !br.HairpinMode || br.MTU != 1440 {
		t.Errorf("bridge plugin %+v", br)
	}
	wantRanges := [][]map[string]string{{{"subnet": "10.244.1.0/24"}}, {{"subnet": "fd00:244:1::/64"}}}
	if br.IPAM.Type != "host-local" || !slices.EqualFunc(br.IPAM.Ranges, wantRanges, func(a, b []map[string]string) bool { return a[0]["subnet"] == b[0]["subnet"] }) {
		t.Errorf("ipam %+v", br.IPAM)
	}
	if pm.Type != "portmap" || !pm.Capabilities["portMappings"] {
		t.Errorf("portmap plugin %+v", pm)
	}
}

func TestComputeExemptsEveryClusterDestinationOfTheFamily(t *testing.T) {
	self := k8s.NodeAddresses{IPv4: netip.MustParseAddr("192.0.2.1"), PodCIDRs: prefixes("10.244.1.0/24")}
	other := k8s.NodeAddresses{IPv4: netip.MustParseAddr("192.0.2.2"), IPv6: netip.MustParseAddr("2001:db8::2"),
		PodCIDRs: prefixes("10.244.2.0/24", "fd00:244:2::/64")}
	cfg := defaults()
	cfg.ServiceCIDRs = []config.Prefix{{Prefix: netip.MustParsePrefix("10.96.0.0/12")}, {Prefix: netip.MustParsePrefix("fd00:96::/112")}}
	opts := Options{Config: cfg, ClusterCIDRs: prefixes("10.244.0.0/16")}
	d := compute(opts, self, []k8s.NodeAddresses{self, other}, 1500)
	if len(d.Egress) != 1 || d.Egress[0].Family != ipfamily.IPv4 {
		t.Fatalf("want IPv4 egress only (the node has no IPv6 pod CIDR), got %+v", d.Egress)
	}
	want := []string{"10.244.0.0/16", "10.244.1.0/24", "10.244.2.0/24", "10.96.0.0/12", "192.0.2.1/32", "192.0.2.2/32"}
	if got := d.Egress[0].ClusterDestinations; !slices.Equal(got, want) {
		t.Errorf("cluster destinations %v, want %v", got, want)
	}
	if !slices.Equal(d.Egress[0].Sources, prefixes("10.244.1.0/24")) {
		t.Errorf("sources %v", d.Egress[0].Sources)
	}
	if d.CNI == nil {
		t.Error("no conflist for a node with a pod CIDR")
	}

	off := opts
	off.Config.MasqueradeEgress, off.Config.WriteCNIConfig = false, false
	if d := compute(off, self, nil, 1500); d.Egress != nil || d.CNI != nil {
		t.Errorf("switched off, got %+v", d)
	}
	if d := compute(opts, k8s.NodeAddresses{}, nil, 1500); d.CNI != nil || d.Egress != nil {
		t.Errorf("a node without pod CIDRs gets %+v", d)
	}
}
