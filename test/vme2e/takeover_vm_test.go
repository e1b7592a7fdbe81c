//go:build vm

package vme2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/takeover"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustLink(t *testing.T, n *netns.Node, name string) netlink.Link {
	t.Helper()
	l, err := n.Netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	return l
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// kubeRouterTunnel is kube-router's name for its tunnel to a node.
func kubeRouterTunnel(remote netip.Addr) string {
	sum := sha256.Sum256([]byte(remote.String()))
	return "tun-" + hex.EncodeToString(sum[:])[:11]
}

// loop probes target from pod until stopped, counting probes and failures.
type loop struct {
	probes, failures atomic.Int64
	stop             chan struct{}
	done             chan struct{}
	once             sync.Once
}

func startLoop(t *testing.T, what string, from *netns.Pod, target netip.AddrPort) *loop {
	l := &loop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := from.Probe(ctx, netns.TCP, target)
			cancel()
			l.probes.Add(1)
			if err != nil && l.failures.Add(1) <= 5 {
				t.Logf("%s: probe failed at %s: %v", what, time.Now().UTC().Format("15:04:05.000"), err)
			}
		}
	}()
	t.Cleanup(l.finish)
	return l
}

func (l *loop) finish() { l.once.Do(func() { close(l.stop) }); <-l.done }

// TestTakeoverFromKubeRouterKeepsServiceAndTunnelTraffic: node A (subnet A) holds
// what kube-router leaves on an overlay node, made by hand: its IPVS services on
// kube-dummy-if (one a Service wants, one it does not), its tunnel tun-<hash> to node
// B (subnet B) with the zebra route and table 77 into it, its service firewall and
// IPVS SNAT, and foreign objects. While a pod on A connects to a pod on B and to a
// Service whose backend is on B in tight loops, kube-routerd starts on A: no probe
// fails, the wanted IPVS service is adopted, the other one removed, the tunnel is
// gone once kube-routerd's route replaced kube-router's, and the foreign IPVS service,
// chain and set remain.
func TestTakeoverFromKubeRouterKeepsServiceAndTunnelTraffic(t *testing.T) {
	testenv.RequireVM(t)
	bin := daemonBinary(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)

	subnetA, subnetB := netns.NewLink(t), netns.NewLink(t)
	subnetB.V4, subnetB.V6 = netip.MustParsePrefix("192.168.201.0/24"), netip.MustParsePrefix("fd00:201::/64")
	nodeA := subnetA.AddNode(t, netns.NodeOptions{Client: cs})
	nodeB := subnetB.AddNode(t, netns.NodeOptions{Client: cs,
		PodCIDRv4: netip.MustParsePrefix("10.244.3.0/24"), PodCIDRv6: netip.MustParsePrefix("fd00:10:244:3::/64")})
	joinSubnets(t, subnetA, subnetB)
	podA := nodeA.AddPod(t, netns.PodOptions{Namespace: ns})
	// The Service loop has its own client: IPVS matches a reply by the real server
	// and the client's address and port only, so a pod-to-pod connection that reused
	// a source port of a recent Service connection to the same backend would have
	// its SYN-ACK rewritten to come from the VIP, in any IPVS proxy.
	serviceClient := nodeA.AddPod(t, netns.PodOptions{Namespace: ns})
	podB := nodeB.AddPod(t, netns.PodOptions{Namespace: ns})
	podB.Serve(t, netns.TCP, probeTargetPort)
	vip := createService(t, cs, ns, "web", podB)

	// Node B runs kube-routerd already; until it learns A's pod CIDR it answers A's
	// pods through its fallback IPIP device, as a second kube-router node would.
	tunl0 := mustLink(t, nodeB, "tunl0")
	must(t, nodeB.Netlink.LinkSetUp(tunl0))
	must(t, nodeB.Netlink.RouteAdd(&netlink.Route{Dst: ipNet(nodeA.PodCIDRv4), Gw: nodeA.IPv4.AsSlice(),
		LinkIndex: tunl0.Attrs().Index, Flags: int(netlink.FLAG_ONLINK)}))
	body := "[routing]\noverlay = \"cross-subnet\"\n"
	daemonB := newDaemon(t, nodeB, rc, bin, body)
	daemonB.StartReady(readyTimeout)

	// kube-router's routing on A: its tunnel to B, bound to the node's interface as
	// kube-router binds it, the zebra route into it, table 77 and its rule. (Through
	// netlink: the guest's ip is busybox's, which knows no ipip options.)
	tun := kubeRouterTunnel(nodeB.IPv4)
	eth0 := mustLink(t, nodeA, "eth0")
	must(t, nodeA.Netlink.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: tun},
		Local: nodeA.IPv4.AsSlice(), Remote: nodeB.IPv4.AsSlice(), Link: uint32(eth0.Attrs().Index)}))
	tunLink := mustLink(t, nodeA, tun)
	must(t, nodeA.Netlink.LinkSetUp(tunLink))
	must(t, nodeA.Netlink.RouteAdd(&netlink.Route{Dst: ipNet(nodeB.PodCIDRv4), LinkIndex: tunLink.Attrs().Index,
		Scope: netlink.SCOPE_LINK, Protocol: 17}))
	must(t, nodeA.Netlink.RouteAdd(&netlink.Route{Dst: ipNet(netip.PrefixFrom(nodeB.IPv4, 32)), LinkIndex: tunLink.Attrs().Index,
		Scope: netlink.SCOPE_LINK, Table: 77}))
	rule := netlink.NewRule()
	rule.Src, rule.Table, rule.Priority = ipNet(nodeA.PodCIDRv4), 77, 32000
	must(t, nodeA.Netlink.RuleAdd(rule))
	// Its service proxy: the VIP on kube-dummy-if, a service a Service wants and one
	// no Service wants, its firewall sets and chain, hairpin and IPVS SNAT.
	must(t, nodeA.Netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "kube-dummy-if"}}))
	dummyLink := mustLink(t, nodeA, "kube-dummy-if")
	must(t, nodeA.Netlink.LinkSetUp(dummyLink))
	must(t, nodeA.Netlink.AddrAdd(dummyLink, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(vip, 32))}))
	vipPort := netip.AddrPortFrom(vip, probePort)
	for _, cmd := range []string{
		fmt.Sprintf("ipvsadm -A -t %s -s rr", vipPort),
		fmt.Sprintf("ipvsadm -a -t %s -r %s:%d -m", vipPort, podB.IPv4, probeTargetPort),
		fmt.Sprintf("ipvsadm -A -t %s:8443 -s rr", vip),
		"ipvsadm -A -t 192.0.2.1:80 -s rr", // foreign
		"ipset create kube-router-svip-prt hash:ip,port",
		fmt.Sprintf("ipset add kube-router-svip-prt %s,tcp:%d", vip, probePort),
		"ipset create kube-router-local-ips hash:ip",
		"ipset create foreign-set hash:ip",
		"iptables -N KUBE-ROUTER-SERVICES",
		"iptables -A KUBE-ROUTER-SERVICES -m set --match-set kube-router-svip-prt dst,dst -j ACCEPT",
		"iptables -N FOREIGN-CHAIN",
		"iptables -t nat -N KUBE-ROUTER-HAIRPIN",
		"iptables -t nat -A POSTROUTING -m ipvs --vdir ORIGINAL -j KUBE-ROUTER-HAIRPIN",
		fmt.Sprintf("iptables -t nat -A POSTROUTING -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ ! -s %s ! -d %s -j SNAT --to-source %s", nodeA.PodCIDRv4, nodeA.PodCIDRv4, nodeA.IPv4),
	} {
		argv := strings.Fields(cmd)
		nodeA.Run(t, argv[0], argv[1:]...)
	}
	podA.ExpectReply(t, netns.TCP, netip.AddrPortFrom(podB.IPv4, probeTargetPort), podB.Name)
	serviceClient.ExpectReply(t, netns.TCP, vipPort, podB.Name)

	podLoop := startLoop(t, "pod to pod", podA, netip.AddrPortFrom(podB.IPv4, probeTargetPort))
	svcLoop := startLoop(t, "pod to Service", serviceClient, vipPort)
	daemonA := newDaemon(t, nodeA, rc, bin, body)
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
		return details.Found && len(details.Waiting) == 0 && len(details.Errors) == 0 &&
			strings.Contains(strings.Join(details.Removed, "\n"), "tunnel "+tun)
	})
	for _, l := range []*loop{podLoop, svcLoop} {
		before := l.probes.Load()
		testenv.Eventually(t, "more probes after the takeover", time.Minute, func() bool { return l.probes.Load() > before+20 })
		l.finish()
	}
	t.Logf("probes during the takeover: pod to pod %d (failed %d), pod to Service %d (failed %d)",
		podLoop.probes.Load(), podLoop.failures.Load(), svcLoop.probes.Load(), svcLoop.failures.Load())
	if podLoop.failures.Load()+svcLoop.failures.Load() != 0 {
		t.Errorf("connections failed during the takeover")
	}
	t.Logf("status:\n%s", daemonA.Run("status"))

	if _, err := nodeA.Netlink.LinkByName(tun); err == nil {
		t.Errorf("tunnel %s left", tun)
	}
	zebra, err := nodeA.Netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: 17, Table: unix.RT_TABLE_UNSPEC},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil || len(zebra) != 0 {
		t.Errorf("zebra routes left: %v %v", zebra, err)
	}
	if rules, _ := nodeA.Netlink.RuleList(netlink.FAMILY_V4); slices.ContainsFunc(rules, func(r netlink.Rule) bool { return r.Table == 77 }) {
		t.Errorf("kube-router's rule to table 77 left: %v", rules)
	}
	ipvs := nodeA.Run(t, "ipvsadm", "-Ln")
	if !strings.Contains(ipvs, vipPort.String()) || !strings.Contains(ipvs, "192.0.2.1:80") || strings.Contains(ipvs, vip.String()+":8443") {
		t.Errorf("IPVS after the takeover (want %s adopted, 192.0.2.1:80 kept, :8443 gone):\n%s", vipPort, ipvs)
	}
	save := nodeA.Save(t, "iptables-save")
	for _, gone := range []string{"KUBE-ROUTER-HAIRPIN", "--vmethod MASQ", "kube-router-svip-prt"} {
		if strings.Contains(save, gone) {
			t.Errorf("%s left in iptables", gone)
		}
	}
	if !strings.Contains(save, ":FOREIGN-CHAIN") {
		t.Error("FOREIGN-CHAIN is gone")
	}
	sets := nodeA.Run(t, "ipset", "list", "-n")
	if strings.Contains(sets, "kube-router-svip-prt") || strings.Contains(sets, "kube-router-local-ips") || !strings.Contains(sets, "foreign-set") {
		t.Errorf("sets after the takeover:\n%s", sets)
	}
	log := daemonA.LogText()
	for _, named := range []string{"IPVS service " + vipPort.String(), "tunnel " + tun, "replaced in place"} {
		if !strings.Contains(log, named) {
			t.Errorf("the log names no %q", named)
		}
	}
}
