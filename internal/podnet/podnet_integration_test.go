//go:build integration

package podnet

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const cniBin = "/usr/lib/cni"

// cniPod is a pod whose network the standard bridge plugin made, as a container
// runtime does for kubelet.
type cniPod struct {
	*tnetns.NS
	id       string
	IPv4     netip.Addr
	IPv6     netip.Addr
	dataDir  string
	node     *tnetns.Node
	pluginIn []byte
}

// addCNIPod runs the bridge plugin of the conflist at path (the first plugin, with
// the network's name and version, as libcni hands it over) with CNI_COMMAND=ADD on
// node for a new pod namespace. host-local keeps its leases in dataDir instead of the
// host's /var/lib/cni.
func addCNIPod(t *testing.T, node *tnetns.Node, conflist, dataDir string) *cniPod {
	t.Helper()
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	data, err := os.ReadFile(conflist)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatalf("conflist %s: %v", conflist, err)
	}
	plugin := list.Plugins[0]
	plugin["name"], plugin["cniVersion"] = list.Name, list.CNIVersion
	plugin["ipam"].(map[string]any)["dataDir"] = dataDir
	in, _ := json.Marshal(plugin)
	p := &cniPod{NS: tnetns.NewNS(t, "pod", testenv.UniqueName("cnipod")), dataDir: dataDir, node: node, pluginIn: in}
	p.id = p.NetnsName
	out := p.plugin(t, "ADD")
	var result struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &result); err != nil {
		t.Fatalf("bridge plugin result %s: %v", out, err)
	}
	for _, ip := range result.IPs {
		pfx := netip.MustParsePrefix(ip.Address)
		if pfx.Addr().Is4() {
			p.IPv4 = pfx.Addr()
		} else {
			p.IPv6 = pfx.Addr()
		}
	}
	t.Cleanup(func() { p.plugin(t, "DEL") })
	return p
}

func (p *cniPod) plugin(t *testing.T, command string) []byte {
	t.Helper()
	cmd := p.node.Command(context.Background(), filepath.Join(cniBin, "bridge"))
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+p.id, "CNI_NETNS="+p.Path(),
		"CNI_IFNAME=eth0", "CNI_PATH="+cniBin)
	cmd.Stdin = strings.NewReader(string(p.pluginIn))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("bridge plugin %s: %v: %s", command, err, out)
	}
	return out
}

// TestPodNetworkOnANodeOfTheCluster runs the pod network controller for node A of a
// two-node cluster with an outside host on the same link. A pod made by the standard
// bridge plugin from the conflist the controller wrote gets its addresses from A's pod
// CIDRs and the pod MTU; it reaches a pod on node B with its own address and the
// outside host with A's.
func TestPodNetworkOnANodeOfTheCluster(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := os.Stat(filepath.Join(cniBin, "bridge")); err != nil {
		testenv.Unavailable(t, "the standard CNI plugins are not installed (containernetworking-plugins): %v", err)
	}
	_, cs := testenv.APIServer(t)
	link := tnetns.NewLink(t)
	nodeA := link.AddNode(t, tnetns.NodeOptions{Client: cs})
	nodeB := link.AddNode(t, tnetns.NodeOptions{Client: cs})
	outside := link.AddNode(t, tnetns.NodeOptions{}) // not in the API: outside the cluster
	link.StaticPodRoutes(t)
	podB := nodeB.AddPod(t, tnetns.PodOptions{})
	// The bridge plugin makes node A's pod bridge itself, as on a fresh node.
	if br, err := nodeA.Netlink.LinkByName(nodeA.Bridge); err == nil {
		if err := nodeA.Netlink.LinkDel(br); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	cfg := config.Default().PodNetwork
	cfg.CNIConfigFile = filepath.Join(dir, "net.d", "10-kube-routerd.conflist")
	dp, err := KernelDataplane(nodeA.Handle)
	if err != nil {
		t.Fatal(err)
	}
	factory := informers.NewSharedInformerFactory(cs, 0)
	ctrl, err := New(daemon.Env{Client: cs, Informers: factory, NodeName: nodeA.Name, Registry: prometheus.NewRegistry()},
		Options{Config: cfg, MayTunnel: true}, dp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	hb := daemon.NewHeartbeat("podnet", nil)
	done := make(chan struct{})
	go func() { defer close(done); _ = ctrl.Run(ctx, hb) }()
	t.Cleanup(func() {
		cancel()
		<-done
		factory.Shutdown()
	})
	testenv.Eventually(t, "the conflist is written", 10*time.Second, func() bool {
		_, err := os.Stat(cfg.CNIConfigFile)
		return err == nil && hb.Status(time.Minute).Ready
	})
	if d := ctrl.Details().(Details); d.CNIState != CNIWritten || d.MTU != 1460 || d.LinkMTU != 1500 || len(d.Egress) != 2 {
		t.Errorf("status %+v (want written, MTU 1500-40 for a dual-stack overlay, both families masqueraded)", d)
	}

	pod := addCNIPod(t, nodeA, cfg.CNIConfigFile, filepath.Join(dir, "ipam"))
	if !nodeA.PodCIDRv4.Contains(pod.IPv4) || !nodeA.PodCIDRv6.Contains(pod.IPv6) {
		t.Fatalf("pod got %s and %s, outside node A's pod CIDRs %s and %s", pod.IPv4, pod.IPv6, nodeA.PodCIDRv4, nodeA.PodCIDRv6)
	}
	eth0, err := pod.Netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if mtu := eth0.Attrs().MTU; mtu != 1460 {
		t.Errorf("pod eth0 MTU %d, want 1460", mtu)
	}

	podB.Serve(t, tnetns.TCP, 8080)
	outside.Serve(t, tnetns.TCP, 8080)
	for _, tc := range []struct {
		what       string
		target     netip.Addr
		wantSource netip.Addr
	}{
		{"a pod on another node sees the pod's IPv4 address", podB.IPv4, pod.IPv4},
		{"a pod on another node sees the pod's IPv6 address", podB.IPv6, pod.IPv6},
		{"an outside host sees node A's IPv4 address", outside.IPv4, nodeA.IPv4},
		{"an outside host sees node A's IPv6 address", outside.IPv6, nodeA.IPv6},
	} {
		r, err := pod.Probe(context.Background(), tnetns.TCP, netip.AddrPortFrom(tc.target, 8080))
		if err != nil {
			t.Errorf("%s: %v", tc.what, err)
			continue
		}
		if r.Client.Addr() != tc.wantSource {
			t.Errorf("%s: seen from %s, want %s", tc.what, r.Client.Addr(), tc.wantSource)
		}
	}

	// New pod CIDRs (a node re-registered with others): the conflist follows.
	node, err := cs.CoreV1().Nodes().Get(context.Background(), nodeA.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(cfg.CNIConfigFile)
	node.Spec.PodCIDRs = node.Spec.PodCIDRs[:1] // podCIDRs are immutable once set: delete and re-create
	if err := cs.CoreV1().Nodes().Delete(context.Background(), nodeA.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	node.ResourceVersion, node.Spec.PodCIDR = "", node.Spec.PodCIDRs[0]
	if _, err := cs.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the conflist follows the node's pod CIDRs", 10*time.Second, func() bool {
		after, _ := os.ReadFile(cfg.CNIConfigFile)
		return string(after) != string(before) && !strings.Contains(string(after), nodeA.PodCIDRv6.String())
	})
	testenv.Eventually(t, "IPv6 egress masquerading goes with the IPv6 pod CIDR", 10*time.Second, func() bool {
		chains, err := dp.IPTables[1].SaveChains(iptables.TableNAT)
		return err == nil && chains[chainEgress] == nil
	})

	cancel()
	<-done
	if err := cleanup(dp, CNIFile{Path: cfg.CNIConfigFile}, slog.Default()); err != nil {
		t.Fatal(err)
	}
	for _, ipt := range dp.IPTables {
		chains, _ := ipt.SaveChains(iptables.TableNAT)
		if _, ok := chains[chainEgress]; ok || strings.Contains(fmt.Sprint(chains["POSTROUTING"]), chainEgress) {
			t.Errorf("IPv%d: pod egress left after cleanup: %v", ipt.Family(), chains["POSTROUTING"])
		}
	}
	if sets, _ := dp.IPSets.ListAll(nil); len(sets) != 0 {
		t.Errorf("sets left after cleanup: %v", sets)
	}
	if _, err := os.Stat(cfg.CNIConfigFile); !os.IsNotExist(err) {
		t.Errorf("conflist left after cleanup: %v", err)
	}
}
