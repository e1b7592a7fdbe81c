package proxybench

import (
	"net/netip"
	"slices"
	"testing"
)

// A listing as nft 1.0.6 prints kube-proxy 1.37's table: DNAT maps in the Service
// chains, per-endpoint chains only for session affinity.
const kubeProxyListing = `table ip kube-proxy {
	chain mark-for-masquerade {
		mark set mark or 0x4000
	}

	chain service-ABCDEFGH-bench/svc-1/tcp/http {
		ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
		meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.100.0.0 . 8080, 1 : 10.100.0.25 . 8080 }
	}

	chain service-IJKLMNOP-bench/svc-2/tcp/http {
		meta l4proto tcp dnat to 10.100.0.7:8080
	}

	chain service-QRSTUVWX-bench/svc-3/tcp/http {
		numgen random mod 2 vmap { 0 : goto endpoint-AAAAAAAA-bench/svc-3/tcp/http__10.100.0.8/8080, 1 : goto endpoint-BBBBBBBB-bench/svc-3/tcp/http__10.100.0.9/8080 }
	}

	chain endpoint-AAAAAAAA-bench/svc-3/tcp/http__10.100.0.8/8080 {
		meta l4proto tcp dnat to 10.100.0.8:8080
	}

	chain service-YZABCDEF-other/svc-1/tcp/http {
		meta l4proto tcp dnat to 10.1.0.1:8080
	}

	chain service-GHIJKLMN-bench/svc-4/tcp/http {
	}
}
`

func TestParseKubeProxyTable(t *testing.T) {
	got := parseKubeProxyTable(kubeProxyListing, "bench")
	ap := netip.MustParseAddrPort
	want := map[string]nftService{
		"svc-1": {chain: "service-ABCDEFGH-bench/svc-1/tcp/http", endpoints: []netip.AddrPort{ap("10.100.0.0:8080"), ap("10.100.0.25:8080")}},
		"svc-2": {chain: "service-IJKLMNOP-bench/svc-2/tcp/http", endpoints: []netip.AddrPort{ap("10.100.0.7:8080")}},
		"svc-3": {chain: "service-QRSTUVWX-bench/svc-3/tcp/http", endpoints: []netip.AddrPort{ap("10.100.0.8:8080"), ap("10.100.0.9:8080")}},
		"svc-4": {chain: "service-GHIJKLMN-bench/svc-4/tcp/http"},
	}
	if len(got) != len(want) {
		t.Errorf("got Services %v, want %v", got, want)
	}
	for name, w := range want {
		g := got[name]
		if g.chain != w.chain || !slices.Equal(g.endpoints, w.endpoints) {
			t.Errorf("%s: got %+v, want %+v", name, g, w)
		}
	}
}
