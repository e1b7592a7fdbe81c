//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/takeover"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// kubeRouterLeftovers makes, by hand and from kube-router's documented names, what
// kube-router leaves on node a of a cluster with node b (no IPVS, no tunnels: this
// kernel has neither), and foreign objects that must survive: commands to run, each
// an argv.
func kubeRouterLeftovers(a, b *netns.Node, cniDir string) [][]string {
	sh := func(s string) []string { return strings.Fields(s) }
	v4 := func(rules ...string) [][]string {
		var out [][]string
		for _, r := range rules {
			out = append(out, append([]string{"iptables"}, splitQuoted(r)...))
		}
		return out
	}
	cmds := [][]string{
		// Routing: its route to b's pods (zebra), its policy rule and tables.
		sh(fmt.Sprintf("ip route add %s via %s proto 17", b.PodCIDRv4, b.IPv4)),
		sh(fmt.Sprintf("ip rule add from %s lookup 77 priority 32000", a.PodCIDRv4)),
		sh(fmt.Sprintf("ip route add %s dev eth0 table 77", b.IPv4)),
		sh("ip rule add fwmark 0x3e8 lookup 78 priority 32764"),
		sh("ip route add local default dev lo table 78"),
		// Foreign: Quagga's zebra route and someone's policy rule.
		sh(fmt.Sprintf("ip route add 192.0.2.0/24 via %s proto 17", b.IPv4)),
		sh("ip rule add from 172.16.0.0/24 lookup 100 priority 31000"),
		sh(fmt.Sprintf("ip route add 198.51.100.0/24 via %s table 100", b.IPv4)),
		// Sets.
		sh("ipset create kube-router-pod-subnets hash:net"),
		sh(fmt.Sprintf("ipset add kube-router-pod-subnets %s", a.PodCIDRv4)),
		sh(fmt.Sprintf("ipset add kube-router-pod-subnets %s", b.PodCIDRv4)),
		sh("ipset create kube-router-node-ips hash:ip"),
		sh(fmt.Sprintf("ipset add kube-router-node-ips %s", a.IPv4)),
		sh("ipset create inet6:kube-router-pod-subnets hash:net family inet6"),
		sh("ipset create KUBE-SRC-ABCDEFGHIJKLMNOP hash:ip"),
		sh("ipset create foreign-set hash:ip"),
	}
	cmds = append(cmds, v4(
		"-N KUBE-ROUTER-INPUT", "-N KUBE-ROUTER-FORWARD", "-N KUBE-ROUTER-OUTPUT",
		"-N KUBE-NWPLCY-COMMON", "-N KUBE-POD-FW-QZ3Y2X4W5V6U7T8S", "-N FOREIGN-CHAIN",
		`-A KUBE-NWPLCY-COMMON -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
		`-A KUBE-POD-FW-QZ3Y2X4W5V6U7T8S -j KUBE-NWPLCY-COMMON`,
		`-A KUBE-ROUTER-FORWARD -m set --match-set KUBE-SRC-ABCDEFGHIJKLMNOP src -j KUBE-POD-FW-QZ3Y2X4W5V6U7T8S`,
		`-A KUBE-ROUTER-INPUT -j KUBE-POD-FW-QZ3Y2X4W5V6U7T8S`,
		`-I INPUT 1 -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT`,
		`-I FORWARD 1 -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD`,
		`-I OUTPUT 1 -m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY" -j KUBE-ROUTER-OUTPUT`,
		`-A FORWARD -i kube-bridge -m comment --comment "allow outbound traffic from pods" -j ACCEPT`,
		`-A INPUT -j FOREIGN-CHAIN`,
		"-t nat -N KUBE-ROUTER-HAIRPIN",
		`-t nat -A POSTROUTING -j KUBE-ROUTER-HAIRPIN`,
		`-t nat -A POSTROUTING -m set --match-set kube-router-pod-subnets src -m set ! --match-set kube-router-pod-subnets dst -m set ! --match-set kube-router-node-ips dst -j MASQUERADE --random-fully`,
	)...)
	cmds = append(cmds, sh("ip6tables -N KUBE-ROUTER-INPUT"), sh("ip6tables -I INPUT 1 -j KUBE-ROUTER-INPUT"))
	return cmds
}

// splitQuoted splits a command line on spaces, keeping "quoted words" whole.
func splitQuoted(s string) []string {
	var out []string
	for i, part := range strings.Split(s, `"`) {
		if i%2 == 1 {
			out = append(out, part)
		} else {
			out = append(out, strings.Fields(part)...)
		}
	}
	return out
}

// TestTakeoverFromKubeRouterKeepsPodTrafficFlowing: node A holds what kube-router
// left (its route to node B's pods, policy rules and tables, chains, jumps, pod
// egress masquerade, sets, CNI file, kube-bridge with a running pod) plus foreign
// objects. kube-routerd starts on A while a pod on A connects to a pod on B in a tight
// loop: no connection fails, kube-router's route is replaced in place, everything
// else of kube-router's but what kube-routerd adopts is gone, the foreign objects
// stay, and the log and status name each object.
func TestTakeoverFromKubeRouterKeepsPodTrafficFlowing(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	link := netns.NewLink(t)
	nodeA := link.AddNode(t, netns.NodeOptions{Client: cs})
	nodeB := link.AddNode(t, netns.NodeOptions{Client: cs})
	podA := nodeA.AddPod(t, netns.PodOptions{})
	podB := nodeB.AddPod(t, netns.PodOptions{})
	podB.Serve(t, netns.TCP, 8080)
	nodeB.AddRoute(t, nodeA.PodCIDRv4, nodeA.IPv4) // until B's daemon learns A's pod CIDR

	daemonB := setupDaemon(t, nodeB, rc, "")
	daemonB.StartReady(readyTimeout)

	daemonA := setupDaemon(t, nodeA, rc, "")
	cniDir := filepath.Dir(daemonA.Config)
	theirCNI := filepath.Join(cniDir, "10-kuberouter.conflist")
	foreignCNI := filepath.Join(cniDir, "99-foreign.conflist")
	for _, f := range []string{theirCNI, foreignCNI} {
		if err := os.WriteFile(f, []byte(`{"cniVersion":"0.3.0","name":"mynet","plugins":[{"type":"bridge","bridge":"kube-bridge"}]}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, argv := range kubeRouterLeftovers(nodeA, nodeB, cniDir) {
		nodeA.Run(t, argv[0], argv[1:]...)
	}
	target := netip.AddrPortFrom(podB.IPv4, 8080)
	podA.ExpectReply(t, netns.TCP, target, podB.Name)

	var probes, failures atomic.Int64
	stop := make(chan struct{})
	probing := make(chan struct{})
	var stopOnce sync.Once
	stopProbes := func() { stopOnce.Do(func() { close(stop) }); <-probing }
	t.Cleanup(stopProbes)
	go func() {
		defer close(probing)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := podA.Probe(ctx, netns.TCP, target)
			cancel()
			probes.Add(1)
			if err != nil {
				failures.Add(1)
				t.Logf("probe %d failed: %v", probes.Load(), err)
			}
		}
	}()

	daemonA.StartReady(readyTimeout)
	var details takeover.Details
	testenv.Eventually(t, "kube-routerd took node A over", readyTimeout, func() bool {
		var rep struct {
			Details map[string]takeover.Details `json:"details"`
		}
		if err := json.Unmarshal([]byte(daemonA.Run("status", "--json")), &rep); err != nil {
			return false
		}
		details = rep.Details["takeover"]
		return details.Found && len(details.Errors) == 0 && len(details.Removed) > 0 &&
			!strings.Contains(strings.Join(details.Waiting, "\n"), "route ")
	})
	// The hairpin chain is the service proxy's to replace, and it is off on this
	// kernel without IPVS: kept, and said so.
	if want := 2; len(details.Waiting) != want || !strings.Contains(strings.Join(details.Waiting, "\n"), "KUBE-ROUTER-HAIRPIN: kube-routerd's proxy controller is off") {
		t.Errorf("kept %q, want the hairpin chain and its jump", details.Waiting)
	}
	before := probes.Load()
	testenv.Eventually(t, "more probes after the takeover", 30*time.Second, func() bool { return probes.Load() > before+20 })
	stopProbes()
	t.Logf("pod-to-pod probes during the takeover: %d, failed %d", probes.Load(), failures.Load())
	if failures.Load() != 0 {
		t.Errorf("%d of %d pod-to-pod connections failed during the takeover", failures.Load(), probes.Load())
	}
	t.Logf("status:\n%s", daemonA.Run("status"))

	save := nodeA.Save(t, "iptables-save") + nodeA.Save(t, "ip6tables-save")
	for _, gone := range []string{"KUBE-ROUTER-INPUT", "KUBE-ROUTER-OUTPUT", "KUBE-NWPLCY-", "KUBE-POD-FW-", "kube-router netpol", "kube-router-pod-subnets"} {
		if strings.Contains(save, gone) {
			t.Errorf("%s left in iptables", gone)
		}
	}
	for _, kept := range []string{":FOREIGN-CHAIN", "-A INPUT -j FOREIGN-CHAIN", "allow outbound traffic from pods", "-j KUBE-ROUTER-FORWARD"} {
		if !strings.Contains(save, kept) {
			t.Errorf("%q is gone from iptables", kept)
		}
	}
	sets := nodeA.Run(t, "ipset", "list", "-n")
	for _, gone := range []string{"kube-router-pod-subnets", "kube-router-node-ips", "KUBE-SRC-ABCDEFGHIJKLMNOP"} {
		if strings.Contains(sets, gone) {
			t.Errorf("set %s left", gone)
		}
	}
	if !strings.Contains(sets, "foreign-set") {
		t.Error("foreign-set is gone")
	}
	rules := nodeA.Run(t, "ip", "rule")
	if strings.Contains(rules, "lookup 77") || strings.Contains(rules, "lookup 78") {
		t.Errorf("kube-router's rules left:\n%s", rules)
	}
	if !strings.Contains(rules, "from 172.16.0.0/24 lookup 100") {
		t.Errorf("the foreign rule is gone:\n%s", rules)
	}
	for _, table := range []string{"77", "78"} {
		if out := nodeA.Run(t, "ip", "route", "show", "table", table); strings.TrimSpace(out) != "" {
			t.Errorf("table %s not empty: %s", table, out)
		}
	}
	if out := nodeA.Run(t, "ip", "route", "show", "table", "100"); !strings.Contains(out, "198.51.100.0/24") {
		t.Error("the foreign table lost its route")
	}
	zebra := nodeA.Run(t, "ip", "route", "show", "proto", "17")
	if strings.Contains(zebra, nodeB.PodCIDRv4.String()) || !strings.Contains(zebra, "192.0.2.0/24") {
		t.Errorf("zebra routes after the takeover (want only the foreign one):\n%s", zebra)
	}
	if ours := nodeA.Run(t, "ip", "route", "show", "proto", "144"); !strings.Contains(ours, nodeB.PodCIDRv4.String()) {
		t.Errorf("no route of ours to %s:\n%s", nodeB.PodCIDRv4, ours)
	}
	if _, err := os.Stat(theirCNI); !os.IsNotExist(err) {
		t.Errorf("kube-router's CNI file is still there: %v", err)
	}
	if _, err := os.Stat(foreignCNI); err != nil {
		t.Errorf("the foreign CNI file is gone: %v", err)
	}
	if _, err := nodeA.Netlink.LinkByName("kube-bridge"); err != nil {
		t.Errorf("kube-bridge is gone: %v", err)
	}
	log := daemonA.LogText()
	for _, named := range []string{"KUBE-POD-FW-QZ3Y2X4W5V6U7T8S", "kube-router-pod-subnets", "lookup 77", theirCNI, "bridge kube-bridge", "replaced in place"} {
		if !strings.Contains(log, named) {
			t.Errorf("the log names no %q", named)
		}
	}
}
