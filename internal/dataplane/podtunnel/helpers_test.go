//go:build integration || vm

package podtunnel

import (
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var vethSeq atomic.Int32

// plugPod gives the namespace pod an "eth0" with addr (a /24) and the given MTU,
// a veth whose other end is in node; it returns the node end's name.
func plugPod(t *testing.T, node *netlink.Handle, pod netns.NsHandle, addr netip.Addr, mtu int) string {
	t.Helper()
	name := fmt.Sprintf("ptv%d", vethSeq.Add(1))
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(pod))}
	if err := node.LinkAdd(veth); err != nil {
		t.Fatalf("veth %s into the pod: %v", name, err)
	}
	in, err := netlink.NewHandleAt(pod, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	eth0, err := in.LinkByName("eth0")
	if err == nil {
		err = in.LinkSetMTU(eth0, mtu)
	}
	if err == nil {
		err = in.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(addr.AsSlice()), Mask: net.CIDRMask(24, 32)}})
	}
	if err == nil {
		err = in.LinkSetUp(eth0)
	}
	if err == nil {
		err = node.LinkSetUp(veth)
	}
	if err != nil {
		t.Fatalf("pod %s: %v", addr, err)
	}
	return name
}
