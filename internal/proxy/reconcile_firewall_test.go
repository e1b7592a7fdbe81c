package proxy

import (
	"context"
	"flag"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run with -update to accept):\n%s\nwant:\n%s", name, got, want)
	}
}

func TestFirewallChains(t *testing.T) {
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
	tests := []struct {
		name       string
		fam        family
		opts       FirewallOptions
		hairpin    []netip.Addr
		restricted []*virtualServer
		nodeAddrs  []netip.Addr
		want       string
	}{
		{
			name: "traffic from outside the cluster CIDRs is marked unless the service keeps client addresses",
			fam:  families[0],
			opts: FirewallOptions{ClusterCIDRs: cidrs},
			want: `filter KUBE-ROUTER-LB-SOURCES
filter KUBE-ROUTER-SERVICES
  -j KUBE-ROUTER-LB-SOURCES
  -m set --match-set kube-router-svc-ports dst,dst -j RETURN
  -p icmp -m set --match-set kube-router-svip dst -j RETURN
  -m set --match-set kube-router-svip dst -m conntrack --ctstate NEW -j REJECT --reject-with icmp-port-unreachable
nat KUBE-ROUTER-POSTROUTING
  -m mark ! --mark 0x20000/0x20000 -j RETURN
  -j MARK --set-xmark 0x0/0x20000
  -j MASQUERADE
nat KUBE-ROUTER-SERVICES
  -m set --match-set kube-router-svc-local dst,dst -j RETURN
  -s 10.244.0.0/16 -j RETURN
  -m set --match-set kube-router-svc-ports dst,dst -j MARK --set-xmark 0x20000/0x20000`,
		},
		{
			name:    "masquerade_all marks every service connection; local endpoints get hairpin rules",
			fam:     families[1],
			opts:    FirewallOptions{MasqueradeAll: true, ClusterCIDRs: cidrs},
			hairpin: addrs("fd00:10:244::2", "fd00:10:244::3"),
			want: `filter KUBE-ROUTER-LB-SOURCES
filter KUBE-ROUTER-SERVICES
  -j KUBE-ROUTER-LB-SOURCES
  -m set --match-set kube-router-svc-ports6 dst,dst -j RETURN
  -p ipv6-icmp -m set --match-set kube-router-svip6 dst -j RETURN
  -m set --match-set kube-router-svip6 dst -m conntrack --ctstate NEW -j REJECT --reject-with icmp6-port-unreachable
nat KUBE-ROUTER-POSTROUTING
  -s fd00:10:244::2/128 -d fd00:10:244::2/128 -j MASQUERADE
  -s fd00:10:244::3/128 -d fd00:10:244::3/128 -j MASQUERADE
  -m mark ! --mark 0x20000/0x20000 -j RETURN
  -j MARK --set-xmark 0x0/0x20000
  -j MASQUERADE
nat KUBE-ROUTER-SERVICES
  -m set --match-set kube-router-svc-ports6 dst,dst -j MARK --set-xmark 0x20000/0x20000`,
		},
		{
			name: "load-balancer IPs with source ranges admit those clients, and the node when its address is inside",
			fam:  families[0],
			opts: FirewallOptions{MasqueradeAll: true},
			restricted: []*virtualServer{
				{Service: ipvs.Service{Key: ipvs.Key{Addr: netip.MustParseAddr("192.0.2.50"), Proto: ipvs.TCP, Port: 80}},
					Owner: types.NamespacedName{Namespace: "ns", Name: "web"}, PortName: "http", Kind: LoadBalancerIP, Restricted: true,
					SourceRanges: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("10.0.0.0/8")}},
				{Service: ipvs.Service{Key: ipvs.Key{Addr: netip.MustParseAddr("192.0.2.51"), Proto: ipvs.SCTP, Port: 9}},
					Owner: types.NamespacedName{Namespace: "ns", Name: "closed"}, PortName: "x", Kind: LoadBalancerIP, Restricted: true},
			},
			nodeAddrs: addrs("10.1.2.3"),
			want: `filter KUBE-ROUTER-LB-SOURCES
  -s 198.51.100.0/24 -d 192.0.2.50/32 -p tcp -m tcp --dport 80 -j RETURN
  -s 10.0.0.0/8 -d 192.0.2.50/32 -p tcp -m tcp --dport 80 -j RETURN
  -s 192.0.2.50/32 -d 192.0.2.50/32 -p tcp -m tcp --dport 80 -j RETURN
  -d 192.0.2.50/32 -p tcp -m comment --comment "ns/web:http loadBalancerSourceRanges" -m tcp --dport 80 -j DROP
  -d 192.0.2.51/32 -p sctp -m comment --comment "ns/closed:x loadBalancerSourceRanges" -m sctp --dport 9 -j DROP
filter KUBE-ROUTER-SERVICES
  -j KUBE-ROUTER-LB-SOURCES
  -m set --match-set kube-router-svc-ports dst,dst -j RETURN
  -p icmp -m set --match-set kube-router-svip dst -j RETURN
  -m set --match-set kube-router-svip dst -m conntrack --ctstate NEW -j REJECT --reject-with icmp-port-unreachable
nat KUBE-ROUTER-POSTROUTING
  -m mark ! --mark 0x20000/0x20000 -j RETURN
  -j MARK --set-xmark 0x0/0x20000
  -j MASQUERADE
nat KUBE-ROUTER-SERVICES
  -m set --match-set kube-router-svc-ports dst,dst -j MARK --set-xmark 0x20000/0x20000`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chains := firewallChains(tt.fam, tt.opts, tt.hairpin, tt.restricted, tt.nodeAddrs)
			var b strings.Builder
			slices.SortFunc(chains, func(a, b netfilter.Chain) int { return strings.Compare(a.Table+a.Name, b.Table+b.Name) })
			for _, c := range chains {
				b.WriteString(c.Table + " " + c.Name + "\n")
				for _, r := range c.Rules {
					b.WriteString("  " + r + "\n")
				}
			}
			if got := strings.TrimSpace(b.String()); got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// firewallDump prints the fake kernel's iptables and ipsets.
func (k *fakeKernel) firewallDump() string {
	return "# IPv4\n" + k.ipt4.Dump() + "# IPv6\n" + k.ipt6.Dump() + "# ipsets\n" + k.ipsets.Dump()
}

func restoreCount(k *fakeKernel) int { return len(k.ipt4.Restores) + len(k.ipt6.Restores) }

func TestFirewallFollowsServicesIncrementally(t *testing.T) {
	kernel := newFakeKernel()
	// Somebody else's rule in a built-in chain stays where it is.
	if _, err := kernel.ipt4.EnsureRule(iptables.TableFilter, "INPUT", true, "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, kernel)
	h.c.fw.opts = FirewallOptions{ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
	h.store(namedService("web", "10.96.0.10", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}))
	h.store(sliceFor("web", ep{ip: "10.244.1.2"}, ep{ip: "10.244.2.2", node: "node-b"}))
	h.store(namedService("dns", "fd00:96::53"))
	h.sync(true)
	golden(t, "firewall.golden", kernel.firewallDump())
	if got := kernel.sysctls.Values()["net/ipv4/vs/conntrack"]; got != "1" {
		t.Errorf("net.ipv4.vs.conntrack = %q, want 1", got)
	}

	// Idle and after a restart: nothing is written.
	restores, sysctlWrites := restoreCount(kernel), kernel.sysctls.Writes
	h.sync(true)
	h2 := newHarness(t, kernel)
	h2.c.fw.opts = h.c.fw.opts
	for _, o := range []any{
		namedService("web", "10.96.0.10", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}),
		sliceFor("web", ep{ip: "10.244.1.2"}, ep{ip: "10.244.2.2", node: "node-b"}),
		namedService("dns", "fd00:96::53"),
	} {
		h2.store(o)
	}
	h2.sync(true)
	if h2.c.fw.writes != 0 || restoreCount(kernel) != restores || kernel.sysctls.Writes != sysctlWrites {
		t.Errorf("full sync after restart wrote %d firewall changes (%d restores)", h2.c.fw.writes, restoreCount(kernel)-restores)
	}

	// A new Service with a new local endpoint: two set entries and the hairpin chain.
	restores = restoreCount(kernel)
	h2.store(namedService("db", "10.96.0.20"))
	h2.store(sliceFor("db", ep{ip: "10.244.1.3"}))
	h2.sync(false)
	if got := restoreCount(kernel) - restores; got != 1 {
		t.Errorf("adding a Service with a local endpoint ran %d restores, want 1 (the hairpin chain)", got)
	}
	if !strings.Contains(kernel.ipt4.Dump(), "-A KUBE-ROUTER-POSTROUTING -s 10.244.1.3/32 -d 10.244.1.3/32 -j MASQUERADE") {
		t.Errorf("no hairpin rule for the new local endpoint:\n%s", kernel.ipt4.Dump())
	}
	if !strings.Contains(kernel.ipsets.Dump(), "  10.96.0.20\n") {
		t.Errorf("new VIP missing from kube-router-svip:\n%s", kernel.ipsets.Dump())
	}

	// A change that keeps the same local endpoints writes no chain.
	restores = restoreCount(kernel)
	h2.store(sliceFor("db", ep{ip: "10.244.1.3"}, ep{ip: "10.244.3.3", node: "node-c"}))
	h2.sync(false)
	if got := restoreCount(kernel) - restores; got != 0 {
		t.Errorf("a remote endpoint change ran %d restores, want 0", got)
	}

	// Removing the Service takes its VIP out of the sets.
	h2.remove(namedService("db", "10.96.0.20"))
	h2.sync(false)
	if strings.Contains(kernel.ipsets.Dump(), "10.96.0.20") {
		t.Errorf("deleted Service's VIP still in a set:\n%s", kernel.ipsets.Dump())
	}

	// Cleanup leaves only what was not ours.
	if err := cleanup(context.Background(), kernel.dataplane(), slog.Default()); err != nil {
		t.Fatal(err)
	}
	golden(t, "firewall-after-cleanup.golden", kernel.firewallDump())
}
