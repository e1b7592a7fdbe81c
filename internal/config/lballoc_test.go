package config

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestLoadBalancerAllocatorIsOffByDefault(t *testing.T) {
	lb := Default().LoadBalancer
	if lb.Enabled || lb.Class != "kube-router" || !lb.DefaultClass || lb.LeaseNamespace != "kube-system" ||
		lb.LeaseName != "kube-routerd-lballoc" || lb.LeaseDuration.Duration != 15*time.Second {
		t.Errorf("defaults = %+v", lb)
	}
}

func TestLoadBalancerSettingsAreApplied(t *testing.T) {
	cfg, err := Parse("c.toml", []byte(`
[loadbalancer]
enabled = true
ipv4_pools = ["192.0.2.0/28", "198.51.100.10 - 198.51.100.20"]
ipv6_pools = ["2001:db8:1::/120"]
class = "example.com/bare-metal"
default_class = false
lease_namespace = "kube-routerd"
lease_name = "lb"
lease_duration = "5s"
`))
	if err != nil {
		t.Fatal(err)
	}
	lb := cfg.LoadBalancer
	pool := func(a, b string) IPPool { return IPPool{netip.MustParseAddr(a), netip.MustParseAddr(b)} }
	if want := []IPPool{pool("192.0.2.0", "192.0.2.15"), pool("198.51.100.10", "198.51.100.20")}; !slices.Equal(lb.IPv4Pools, want) {
		t.Errorf("ipv4_pools = %v, want %v", lb.IPv4Pools, want)
	}
	if want := []IPPool{pool("2001:db8:1::", "2001:db8:1::ff")}; !slices.Equal(lb.IPv6Pools, want) {
		t.Errorf("ipv6_pools = %v, want %v", lb.IPv6Pools, want)
	}
	if !lb.Enabled || lb.Class != "example.com/bare-metal" || lb.DefaultClass || lb.LeaseNamespace != "kube-routerd" ||
		lb.LeaseName != "lb" || lb.LeaseDuration.Duration != 5*time.Second {
		t.Errorf("settings not applied: %+v", lb)
	}
	// check-config prints pools back in the form they were written.
	if got := []string{lb.IPv4Pools[0].String(), lb.IPv4Pools[1].String(), lb.IPv6Pools[0].String()}; !slices.Equal(got,
		[]string{"192.0.2.0/28", "198.51.100.10-198.51.100.20", "2001:db8:1::/120"}) {
		t.Errorf("pools print as %q", got)
	}
}

func TestLoadBalancerProblemsNameKeyAndLine(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		{"enabled without a pool", "[loadbalancer]\nenabled = true\n",
			[]string{"line 1: loadbalancer.ipv4_pools: the allocator is enabled without a pool: set ipv4_pools, ipv6_pools or both"}},
		{"a pool that is neither CIDR nor range", "[loadbalancer]\nenabled = true\nipv4_pools = [\"192.0.2.1\"]\n",
			[]string{`line 3: loadbalancer.ipv4_pools: invalid CIDR "192.0.2.1" (want a CIDR or a range "first-last")`}},
		{"a reversed range", "[loadbalancer]\nipv4_pools = [\"192.0.2.9-192.0.2.1\"]\n",
			[]string{`line 2: loadbalancer.ipv4_pools: invalid address range "192.0.2.9-192.0.2.1": last comes before first`}},
		{"a range across families", "[loadbalancer]\nipv4_pools = [\"192.0.2.1-2001:db8::1\"]\n",
			[]string{`line 2: loadbalancer.ipv4_pools: invalid address range "192.0.2.1-2001:db8::1": first and last are of different IP families`}},
		{"a pool of the wrong family, overlapping pools, a bad class and Lease",
			`[loadbalancer]
enabled = true
ipv4_pools = ["192.0.2.0/24", "192.0.2.200-192.0.2.210"]
ipv6_pools = ["192.0.3.0/24"]
class = "Bare Metal"
lease_namespace = "Kube_System"
lease_name = ""
lease_duration = "1s"
`,
			[]string{
				`line 3: loadbalancer.ipv4_pools: 192.0.2.200-192.0.2.210 overlaps 192.0.2.0/24: an address may be in one pool only`,
				`line 4: loadbalancer.ipv6_pools: 192.0.3.0/24 is not of this list's IP family`,
				`line 5: loadbalancer.class: invalid loadBalancerClass "Bare Metal": want a label-style name such as "kube-router" or "example.com/bare-metal"`,
				`line 6: loadbalancer.lease_namespace: invalid namespace "Kube_System": want a DNS label (lower-case letters, digits and '-')`,
				`line 7: loadbalancer.lease_name: invalid Lease name "": want a DNS subdomain (lower-case letters, digits, '-' and '.')`,
				`line 8: loadbalancer.lease_duration: must be at least 2s`,
			}},
		{"no class and no default class answers nothing",
			"[loadbalancer]\nenabled = true\nipv6_pools = [\"2001:db8::/64\"]\nclass = \"\"\ndefault_class = false\n",
			[]string{"line 4: loadbalancer.class: is empty and default_class is off: the allocator would answer no Service"}},
		{"a pool the service proxy would refuse",
			"[service_proxy]\nloadbalancer_ip_ranges = [\"192.0.2.0/25\"]\n[loadbalancer]\nenabled = true\nipv4_pools = [\"192.0.2.100-192.0.2.150\"]\n",
			[]string{"line 5: loadbalancer.ipv4_pools: 192.0.2.100-192.0.2.150 is not inside service_proxy.loadbalancer_ip_ranges: the service proxy would not program its addresses"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := problems(t, tc.toml)
			if !slices.Equal(got, tc.want) {
				t.Errorf("problems:\n got: %q\nwant: %q", got, tc.want)
			}
		})
	}
}
