//go:build integration

package podtunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// The host kernel has no IPIP devices, so these tests find pods with Set(pod, nil):
// it looks the pod up and, with no tunnel there, changes nothing. The MTU it returns
// tells which namespace it found.

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

// wantFound checks that k finds the pod at addr, in the namespace whose interface has
// the MTU mtu.
func wantFound(t *testing.T, k *Kernel, addr netip.Addr, mtu int) {
	t.Helper()
	got, err := k.Set(addr, nil)
	if err != nil || got != mtu {
		t.Errorf("pod %s: found MTU %d (%v), want %d", addr, got, err, mtu)
	}
}

func wantNotFound(t *testing.T, k *Kernel, addr netip.Addr) {
	t.Helper()
	if mtu, err := k.Set(addr, nil); !errors.Is(err, ErrNoPod) {
		t.Errorf("pod %s: found MTU %d (%v), want ErrNoPod", addr, mtu, err)
	}
}

// processNamespace creates a network namespace that only a process holds (sleep,
// entered with nsenter): it is reachable through /proc/<pid>/ns/net alone. The handle
// returned is for configuring it.
func processNamespace(t *testing.T) netns.NsHandle {
	t.Helper()
	made := make(chan error, 1)
	var h netns.NsHandle
	go func() {
		// Creating it moves the thread into it: the thread must not run anything else.
		runtime.LockOSThread()
		var err error
		h, err = netns.New()
		made <- err
	}()
	if err := <-made; err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	dup, err := unix.Dup(int(h))
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "netns")
	defer f.Close()
	cmd := exec.Command("nsenter", "--net=/proc/self/fd/3", "sleep", "infinity")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		testenv.Unavailable(t, "nsenter: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)
	testenv.Eventually(t, "sleep in the new network namespace", 10*time.Second, func() bool {
		id, err := idOf(path)
		return err == nil && id == nsID{st.Dev, st.Ino}
	})
	return h
}

func TestPodsAreFoundInPinnedAndProcessNamespaces(t *testing.T) {
	node := tnetns.NewNS(t, "node", "podtunnel")
	pinned := tnetns.NewNS(t, "pod", "pinned")
	pinnedAddr, procAddr := netip.MustParseAddr("10.77.1.2"), netip.MustParseAddr("10.77.1.3")
	plugPod(t, node.Netlink, pinned.Handle, pinnedAddr, 1500)
	procNS := processNamespace(t)
	plugPod(t, node.Netlink, procNS, procAddr, 1400)

	both := &Kernel{Places: []string{"/var/run/netns", ProcPlace}, Node: node.Handle}
	wantFound(t, both, pinnedAddr, 1500)
	wantFound(t, both, procAddr, 1400)

	// Each place alone finds only its own.
	pins := &Kernel{Places: []string{"/var/run/netns"}, Node: node.Handle}
	wantFound(t, pins, pinnedAddr, 1500)
	wantNotFound(t, pins, procAddr)
	procs := &Kernel{Places: []string{ProcPlace}, Node: node.Handle}
	wantFound(t, procs, procAddr, 1400)

	// No tunnel anywhere: List reports none.
	if got, err := both.List(); err != nil || len(got) != 0 {
		t.Errorf("List: %v, %v; want no tunnels", got, err)
	}
}

// Nodes that share a kernel (as in tests) see each other's pods: only a pod whose
// veth peer is in the node's own namespace is the node's. The node's namespace is
// never a pod's, even with the address on a veth.
func TestOnlyPodsWiredIntoTheNodeAreFound(t *testing.T) {
	nodeA := tnetns.NewNS(t, "node", "podtunnel-a")
	nodeB := tnetns.NewNS(t, "node", "podtunnel-b")
	podOfB := tnetns.NewNS(t, "pod", "of-b")
	addr := netip.MustParseAddr("10.77.2.2")
	plugPod(t, nodeB.Netlink, podOfB.Handle, addr, 1500)

	onA := &Kernel{Places: []string{"/var/run/netns", ProcPlace}, Node: nodeA.Handle}
	onB := &Kernel{Places: []string{"/var/run/netns", ProcPlace}, Node: nodeB.Handle}
	wantNotFound(t, onA, addr)
	wantFound(t, onB, addr, 1500)

	// A veth pair inside node A, one end with an address.
	nodeAddr := netip.MustParseAddr("10.77.2.9")
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ptself0"}, PeerName: "ptself1"}
	err := nodeA.Netlink.LinkAdd(veth)
	if err == nil {
		err = nodeA.Netlink.AddrAdd(veth, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(nodeAddr.AsSlice()), Mask: net.CIDRMask(24, 32)}})
	}
	if err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, onA, nodeAddr)
}

// bindNamespace pins the namespace of h at path, as a container runtime pins a pod's.
func bindNamespace(t *testing.T, h netns.NsHandle, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	src := fmt.Sprintf("/proc/self/fd/%d", int(h))
	if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
		testenv.Unavailable(t, "bind-mounting a network namespace: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(path, unix.MNT_DETACH) })
}

// A pod restarts: its address comes back in a new namespace, pinned at the same path
// as the old one or at another. Set finds the new one, never the old.
func TestSetFollowsAPodWhoseNamespaceWasReplaced(t *testing.T) {
	node := tnetns.NewNS(t, "node", "podtunnel")
	dir := t.TempDir()
	addr := netip.MustParseAddr("10.77.3.2")
	k := &Kernel{Places: []string{dir}, Node: node.Handle}

	first := tnetns.NewNS(t, "pod", "first")
	plugPod(t, node.Netlink, first.Handle, addr, 1500)
	path := filepath.Join(dir, "pod")
	bindNamespace(t, first.Handle, path)
	wantFound(t, k, addr, 1500)

	// Same path, new namespace (the old one still exists, without the pin).
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	second := tnetns.NewNS(t, "pod", "second")
	plugPod(t, node.Netlink, second.Handle, addr, 1400)
	bindNamespace(t, second.Handle, path)
	wantFound(t, k, addr, 1400)

	// Another path; the old pin is gone.
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	third := tnetns.NewNS(t, "pod", "third")
	plugPod(t, node.Netlink, third.Handle, addr, 1300)
	bindNamespace(t, third.Handle, filepath.Join(dir, "pod-restarted"))
	wantFound(t, k, addr, 1300)

	// Same namespace, address gone: the pod moved away.
	eth0, err := third.Netlink.LinkByName("eth0")
	if err == nil {
		err = third.Netlink.AddrDel(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(addr.AsSlice()), Mask: net.CIDRMask(24, 32)}})
	}
	if err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, k, addr)
}
