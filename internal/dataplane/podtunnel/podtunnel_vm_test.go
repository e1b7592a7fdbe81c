//go:build vm

package podtunnel

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// sysctlIn reads a sysctl of ns.
func sysctlIn(t *testing.T, ns *tnetns.NS, key string) string {
	t.Helper()
	var v []byte
	if err := ns.Do(func() (err error) { v, err = os.ReadFile(filepath.Join("/proc/sys", key)); return err }); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// tunnelAddrs returns the addresses on the pod's tunnel, nil without a tunnel.
func tunnelAddrs(t *testing.T, pod *tnetns.Pod) []netip.Addr {
	t.Helper()
	link, err := pod.Netlink.LinkByName(LinkName)
	if err != nil {
		return nil
	}
	addrs, err := pod.Netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	out := []netip.Addr{}
	for _, a := range addrs {
		if ones, _ := a.Mask.Size(); ones != 32 {
			t.Errorf("%s on %s is a /%d, want /32", a.IP, LinkName, ones)
		}
		out = append(out, toAddr(a.IP))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// TestSetBuildsChangesAndDeletesThePodsTunnel: the tunnel in a pod on the node's
// bridge holds what Set gives it, with the settings DSR needs in the pod and on the
// node, reads back the same through a new Kernel (a restart), and goes with the last
// address.
func TestSetBuildsChangesAndDeletesThePodsTunnel(t *testing.T) {
	testenv.RequireVM(t)
	node := tnetns.NewNode(t, tnetns.NodeOptions{})
	pod := node.AddPod(t, tnetns.PodOptions{})
	k := &Kernel{Places: []string{"/var/run/netns", ProcPlace}, Node: node.Handle}
	vip1, vip2 := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("203.0.113.6")

	mtu, err := k.Set(pod.IPv4, []netip.Addr{vip1, vip2})
	if err != nil || mtu != 1500 {
		t.Fatalf("Set: MTU %d, %v", mtu, err)
	}
	link, err := pod.Netlink.LinkByName(LinkName)
	if err != nil {
		t.Fatalf("no %s in the pod: %v", LinkName, err)
	}
	ipip, ok := link.(*netlink.Iptun)
	if !ok || !ipip.Local.Equal(net.IP(pod.IPv4.AsSlice())) || link.Attrs().Alias != linkAlias || link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s is %T local %v alias %q flags %v; want an IPIP device, local %s, ours, up",
			LinkName, link, ipip.Local, link.Attrs().Alias, link.Attrs().Flags, pod.IPv4)
	}
	if got := tunnelAddrs(t, pod); !slices.Equal(got, []netip.Addr{vip1, vip2}) {
		t.Errorf("tunnel holds %v, want %v", got, []netip.Addr{vip1, vip2})
	}
	for key, want := range map[string]string{
		"net/ipv4/conf/" + LinkName + "/rp_filter": "2",
		"net/ipv4/conf/eth0/arp_ignore":            "1",
		"net/ipv4/conf/eth0/arp_announce":          "2",
	} {
		if got := sysctlIn(t, pod.NS, key); got != want {
			t.Errorf("pod: %s = %s, want %s", key, got, want)
		}
	}
	// The pod's replies come from the VIPs, which the node holds too: the bridge the
	// pod's veth is enslaved to accepts them.
	if got := sysctlIn(t, node.NS, "net/ipv4/conf/"+node.Bridge+"/accept_local"); got != "1" {
		t.Errorf("node: %s accept_local = %s, want 1", node.Bridge, got)
	}

	if _, err := k.Set(pod.IPv4, []netip.Addr{vip2}); err != nil {
		t.Fatal(err)
	}
	if got := tunnelAddrs(t, pod); !slices.Equal(got, []netip.Addr{vip2}) {
		t.Errorf("after removing %s the tunnel holds %v", vip1, got)
	}
	restarted := &Kernel{Places: k.Places, Node: node.Handle}
	list, err := restarted.List()
	if err != nil {
		t.Fatal(err)
	}
	if got := list[pod.IPv4]; len(list) != 1 || !slices.Equal(got.VIPs, []netip.Addr{vip2}) || got.MTU != 1500 {
		t.Errorf("List after a restart: %v, want %s: {[%s] 1500}", list, pod.IPv4, vip2)
	}

	if _, err := restarted.Set(pod.IPv4, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pod.Netlink.LinkByName(LinkName); err == nil {
		t.Errorf("%s still in the pod after its last address went", LinkName)
	}
	if list, err := restarted.List(); err != nil || len(list) != 0 {
		t.Errorf("List after the delete: %v, %v", list, err)
	}
}

// TestADeviceOfOurNameThatIsNotOursIsLeftAlone: a pod with its own kube-dsr-tun
// (no kube-routerd mark) keeps it, is not listed, and Set says why it cannot serve.
func TestADeviceOfOurNameThatIsNotOursIsLeftAlone(t *testing.T) {
	testenv.RequireVM(t)
	node := tnetns.NewNode(t, tnetns.NodeOptions{})
	pod := node.AddPod(t, tnetns.PodOptions{})
	theirs := &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: LinkName}, Local: net.IP(pod.IPv4.AsSlice())}
	if err := pod.Netlink.LinkAdd(theirs); err != nil {
		t.Fatal(err)
	}
	k := &Kernel{Places: []string{"/var/run/netns"}, Node: node.Handle}
	if list, err := k.List(); err != nil || len(list) != 0 {
		t.Errorf("List: %v, %v; want nothing", list, err)
	}
	_, err := k.Set(pod.IPv4, []netip.Addr{netip.MustParseAddr("203.0.113.5")})
	if err == nil || !strings.Contains(err.Error(), "not kube-routerd's") {
		t.Errorf("Set: %v, want an error saying the device is not ours", err)
	}
	if _, err := k.Set(pod.IPv4, nil); err == nil {
		t.Error("Set(nil) deleted someone else's device without an error")
	}
	if _, err := pod.Netlink.LinkByName(LinkName); err != nil {
		t.Errorf("their %s is gone: %v", LinkName, err)
	}
	if got := tunnelAddrs(t, pod); len(got) != 0 {
		t.Errorf("their device got addresses %v", got)
	}
}

// TestIPv6AddressesGoOnAnIP6IP6Tunnel: a dual-stack pod's IPv6 address gets its own
// ip6ip6 device next to the IPIP one; each holds its family's VIPs, listed by the
// pod address it serves, and each goes alone.
func TestIPv6AddressesGoOnAnIP6IP6Tunnel(t *testing.T) {
	testenv.RequireVM(t)
	node := tnetns.NewNode(t, tnetns.NodeOptions{})
	pod := node.AddPod(t, tnetns.PodOptions{})
	k := &Kernel{Places: []string{"/var/run/netns"}, Node: node.Handle}
	vip4, vip6 := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("2001:db8::5")

	if _, err := k.Set(pod.IPv4, []netip.Addr{vip4}); err != nil {
		t.Fatal(err)
	}
	if mtu, err := k.Set(pod.IPv6, []netip.Addr{vip6}); err != nil || mtu != 1500 {
		t.Fatalf("Set(%s): MTU %d, %v", pod.IPv6, mtu, err)
	}
	link, err := pod.Netlink.LinkByName(LinkName6)
	if err != nil {
		t.Fatalf("no %s in the pod: %v", LinkName6, err)
	}
	tun, ok := link.(*netlink.Ip6tnl)
	if !ok || !tun.Local.Equal(net.IP(pod.IPv6.AsSlice())) || tun.Proto != 41 || link.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("%s is %#v; want an ip6ip6 device, local %s, up", LinkName6, link, pod.IPv6)
	}
	addrs, err := pod.Netlink.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	var global []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			global = append(global, a.IPNet.String())
			if a.Flags&0x40 != 0 { // IFA_F_TENTATIVE
				t.Errorf("%s is tentative: a pod cannot answer from it", a.IP)
			}
		}
	}
	if !slices.Equal(global, []string{"2001:db8::5/128"}) {
		t.Errorf("%s holds %v, want [2001:db8::5/128]", LinkName6, global)
	}
	list, err := k.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || !slices.Equal(list[pod.IPv4].VIPs, []netip.Addr{vip4}) || !slices.Equal(list[pod.IPv6].VIPs, []netip.Addr{vip6}) {
		t.Errorf("List: %v, want %s: [%s] and %s: [%s]", list, pod.IPv4, vip4, pod.IPv6, vip6)
	}

	if _, err := k.Set(pod.IPv6, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pod.Netlink.LinkByName(LinkName6); err == nil {
		t.Errorf("%s still there after its last address went", LinkName6)
	}
	if got := tunnelAddrs(t, pod); !slices.Equal(got, []netip.Addr{vip4}) {
		t.Errorf("the IPv4 tunnel holds %v after the IPv6 one went, want [%s]", got, vip4)
	}
}
