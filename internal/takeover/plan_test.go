package takeover

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

var all = map[Domain]bool{DomainProxy: true, DomainNetpol: true, DomainRouting: true, DomainPodNet: true}

func names(objs []Object) string {
	var out []string
	for _, o := range objs {
		out = append(out, o.String())
	}
	return strings.Join(out, "\n")
}

func TestRulesAndChainsOfKubeRouterAreTheirsAndOursAreNot(t *testing.T) {
	for _, tc := range []struct {
		name, table, chain, rule string
		want                     ruleVerdict
	}{
		{"kube-router's netpol jump into the chain name we share", "filter", "FORWARD",
			`-m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-FORWARD`, theirsToRemove},
		{"our netpol jump", "filter", "FORWARD", `-m comment --comment "kube-routerd network policy" -j KUBE-ROUTER-FORWARD`, notTheirs},
		{"a jump into kube-router's own input chain", "filter", "INPUT", `-m comment --comment "kube-router netpol - X" -j KUBE-ROUTER-INPUT`, theirsToRemove},
		{"kube-router's service jump on its VIP set", "filter", "INPUT",
			`-m comment --comment "handle traffic to IPVS service IPs in custom chain" -m set --match-set kube-router-svip dst -j KUBE-ROUTER-SERVICES`, theirsToRemove},
		{"our service jump", "filter", "INPUT", `-m comment --comment "kube-routerd service proxy" -j KUBE-ROUTER-SERVICES`, notTheirs},
		{"pod egress masquerade on kube-router-pod-subnets", "nat", "POSTROUTING",
			`-m set --match-set kube-router-pod-subnets src -m set ! --match-set kube-router-pod-subnets dst -m set ! --match-set kube-router-node-ips dst -j MASQUERADE --random-fully`, theirsToRemove},
		{"our pod egress jump", "nat", "POSTROUTING", `-m comment --comment "kube-routerd pod egress" -j KUBE-ROUTER-POD-EGRESS`, notTheirs},
		{"kube-router's IPVS SNAT", "nat", "POSTROUTING", `-m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment "" -j SNAT --to-source 10.0.0.1`, theirsToRemove},
		{"kube-router's FORWARD accept for pods is adopted", "filter", "FORWARD", `-i kube-bridge -m comment --comment "allow outbound traffic from pods" -j ACCEPT`, theirsToAdopt},
		{"a foreign MASQUERADE", "nat", "POSTROUTING", `-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`, notTheirs},
		{"a foreign jump", "filter", "FORWARD", `-j DOCKER-USER`, notTheirs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, _ := classifyRule(tc.table, tc.chain, tc.rule); got != tc.want {
				t.Errorf("classifyRule = %d, want %d", got, tc.want)
			}
		})
	}
	for chain, want := range map[string]bool{
		"KUBE-ROUTER-INPUT": true, "KUBE-ROUTER-OUTPUT": true, "KUBE-ROUTER-HAIRPIN": true,
		"KUBE-NWPLCY-COMMON": true, "KUBE-POD-FW-ABCDEFGHIJKLMNOP": true,
		"KUBE-ROUTER-FORWARD": false, "KUBE-ROUTER-SERVICES": false, "KUBE-ROUTER-POSTROUTING": false,
		"KUBE-ROUTER-POD-EGRESS": false, "KUBE-ROUTER-PI-ABCDEFGHIJKLMNOP": false, "DOCKER": false,
	} {
		if theirChain(chain) != want {
			t.Errorf("theirChain(%s) = %v, want %v", chain, !want, want)
		}
	}
	for set, want := range map[string]bool{
		"kube-router-pod-subnets": true, "inet6:kube-router-pod-subnets": true, "kube-router-local-ips": true,
		"inet6:kube-router-svip": true, "KUBE-SRC-ABCDEFGHIJKLMNOP": true, "inet6:KUBE-DST-ABCDEFGHIJKLMNOP": true,
		"kube-router-svip": false, "kube-router-svip6": false, "kube-router-svc-local": false, "kube-router-svc-ports": false,
		"kube-router-svc-ports6": false, "kube-router-cluster-dst": false, "kube-router-cluster-dst6": false, "my-set": false,
	} {
		if theirSet(set) != want {
			t.Errorf("theirSet(%s) = %v, want %v", set, !want, want)
		}
	}
}

func kubeRouterNode() View {
	return View{
		IPTables: map[ipfamily.Family]map[string]map[string][]string{
			ipfamily.IPv4: {
				"filter": {
					"FORWARD":                      {`-m comment --comment "kube-router netpol - X" -j KUBE-ROUTER-FORWARD`, `-j DOCKER-USER`},
					"KUBE-ROUTER-FORWARD":          {`-j KUBE-POD-FW-AAAAAAAAAAAAAAAA`},
					"KUBE-POD-FW-AAAAAAAAAAAAAAAA": {`-j KUBE-NWPLCY-COMMON`},
					"KUBE-NWPLCY-COMMON":           nil,
					"DOCKER-USER":                  nil,
				},
				"nat": {"POSTROUTING": {`-m set --match-set kube-router-pod-subnets src -j MASQUERADE`}},
			},
		},
		Sets: []string{"kube-router-pod-subnets", "kube-router-svip", "foreign"},
		ZebraRoutes: []route.TableRoute{
			{Route: route.Route{Dst: netip.MustParsePrefix("10.244.1.0/24"), Device: "tun-0123456789a"}, Table: 254, Protocol: 17},
			{Route: route.Route{Dst: netip.MustParsePrefix("10.244.9.0/24"), Device: "tun-bbbbbbbbbbb"}, Table: 254, Protocol: 17},
			{Route: route.Route{Dst: netip.MustParsePrefix("192.0.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.9")}, Table: 254, Protocol: 17},
		},
		PolicyRoutes: []route.TableRoute{{Route: route.Route{Dst: netip.MustParsePrefix("10.0.1.2/32"), Device: "tun-0123456789a"}, Table: 77, Protocol: 3}},
		IPRules: []route.IPRule{
			{Priority: 100, Src: netip.MustParsePrefix("10.244.0.0/24"), Table: 77},
			{Priority: 200, Src: netip.MustParsePrefix("172.16.0.0/24"), Table: 77},
			{Priority: 32766, Table: 254},
		},
		Links:    []route.Link{{Name: "tun-0123456789a", Kind: "ipip"}, {Name: "tun-bbbbbbbbbbb", Kind: "ipip"}, {Name: "tun-foreign", Kind: "ipip"}, {Name: "kube-bridge", Kind: "bridge"}},
		CNIFiles: []string{"/etc/cni/net.d/10-kuberouter.conflist"}, OurCNIWritten: true,
		// 10.244.9.0/24 belonged to a node that left the cluster.
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("10.244.1.0/24")},
	}
}

func TestPlanRemovesReferencesBeforeTheirTargetsAndWaitsForRoutesStillInUse(t *testing.T) {
	p := Compute(kubeRouterNode(), all)
	want := strings.Join([]string{
		`iptables IPv4 filter rule in FORWARD: -m comment --comment "kube-router netpol - X" -j KUBE-ROUTER-FORWARD`,
		`iptables IPv4 nat rule in POSTROUTING: -m set --match-set kube-router-pod-subnets src -j MASQUERADE`,
		`iptables IPv4 filter chain KUBE-NWPLCY-COMMON`,
		`iptables IPv4 filter chain KUBE-POD-FW-AAAAAAAAAAAAAAAA`,
		`ipset kube-router-pod-subnets`,
		`IPv4 ip rule priority 100 from 10.244.0.0/24 lookup 77`,
		`route 10.0.1.2/32 dev tun-0123456789a proto 3 table 77`,
		`route 10.244.9.0/24 dev tun-bbbbbbbbbbb proto 17 table 254`,
		`tunnel tun-bbbbbbbbbbb (ipip)`,
		`CNI config /etc/cni/net.d/10-kuberouter.conflist`,
	}, "\n")
	if got := names(p.Remove); got != want {
		t.Errorf("removes:\n%s\nwant:\n%s", got, want)
	}
	var waits []string
	for _, w := range p.Wait {
		waits = append(waits, w.String())
	}
	wantWait := "route 10.244.1.0/24 dev tun-0123456789a proto 17 table 254: kube-routerd replaces it in place once it learns a route to 10.244.1.0/24\n" +
		"tunnel tun-0123456789a (ipip): route 10.244.1.0/24 dev tun-0123456789a proto 17 table 254 still uses it"
	if got := strings.Join(waits, "\n"); got != wantWait {
		t.Errorf("waits:\n%s\nwant:\n%s", got, wantWait)
	}
}

func TestNothingIsRemovedWhoseReplacementIsOff(t *testing.T) {
	v := kubeRouterNode()
	v.OurCNIWritten = false
	p := Compute(v, map[Domain]bool{DomainNetpol: true})
	for _, o := range p.Remove {
		if o.Domain != DomainNetpol {
			t.Errorf("removes %s although %s is off", o, o.Domain)
		}
	}
	if len(p.Wait) < 6 {
		t.Errorf("keeps only %d objects: %v", len(p.Wait), p.Wait)
	}
}

func TestANodeWithoutKubeRouterHasAnEmptyPlan(t *testing.T) {
	v := View{
		IPTables: map[ipfamily.Family]map[string]map[string][]string{ipfamily.IPv4: {"filter": {
			"FORWARD":             {`-m comment --comment "kube-routerd network policy" -j KUBE-ROUTER-FORWARD`},
			"KUBE-ROUTER-FORWARD": nil,
		}}},
		Sets:  []string{"kube-router-svip", "kube-router-svc-ports"},
		Links: []route.Link{{Name: "kube-bridge", Kind: "bridge"}, {Name: "krt-0a000102", Kind: "ipip"}},
		ZebraRoutes: []route.TableRoute{ // Quagga's, not to a pod CIDR
			{Route: route.Route{Dst: netip.MustParsePrefix("192.0.2.0/24"), Gateway: netip.MustParseAddr("10.0.0.9")}, Table: 254, Protocol: 17}},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")},
	}
	if p := Compute(v, all); !p.Empty() {
		t.Errorf("plan %+v, want empty", p)
	}
}

func TestKubeRoutersServicesAreTheUnrecordedOnesOnTheDummyInterface(t *testing.T) {
	vip, node := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.0.0.1")
	ours := ipvs.Key{Addr: vip, Proto: ipvs.TCP, Port: 443}
	theirs := ipvs.Key{Addr: vip, Proto: ipvs.UDP, Port: 53}
	foreign := ipvs.Key{Addr: node, Proto: ipvs.TCP, Port: 80}
	got := TheirServices([]ipvs.Service{{Key: ours}, {Key: theirs}, {Key: foreign}}, []ipvs.Key{ours}, []netip.Addr{vip})
	if len(got) != 1 || got[0] != theirs {
		t.Errorf("TheirServices = %v, want [%s]", got, theirs)
	}
}

func TestSplitRuleUnquotesComments(t *testing.T) {
	got := splitRule(`-m comment --comment "kube-router netpol - X" -j KUBE-ROUTER-FORWARD`)
	want := []string{"-m", "comment", "--comment", "kube-router netpol - X", "-j", "KUBE-ROUTER-FORWARD"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("splitRule = %q", got)
	}
	if got := splitRule(`-m comment --comment "" -j SNAT`); len(got) != 6 || got[3] != "" {
		t.Errorf("empty comment: %q", got)
	}
}
