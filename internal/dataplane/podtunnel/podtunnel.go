// Package podtunnel puts virtual addresses inside pods' network namespaces for direct
// server return (DSR): a tunnel device in the pod (IPIP for IPv4, ip6ip6 for IPv6)
// decapsulates what IPVS tunnels to the pod and holds the addresses, so the pod's replies leave with the virtual address as
// their source and go to the client without passing the node's IPVS again.
//
// Pods are found by address, without a container runtime: the namespaces pinned in
// directories (/run/netns, where containerd and CRI-O keep every pod's) and those of
// running processes (/proc/<pid>/ns/net) are searched, deduplicated by inode, for
// the one with the pod's address on an interface; the node's own namespace is never
// one (a hostNetwork endpoint has no pod namespace to tunnel to).
package podtunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"
)

// LinkName and LinkName6 are the tunnel devices kube-routerd creates in a pod: IPIP
// for IPv4 virtual addresses, ip6ip6 for IPv6 ones (kube-router's are kube-tunnel-if
// and kube-tunnel-v6, which kube-routerd leaves alone).
const (
	LinkName  = "kube-dsr-tun"
	LinkName6 = "kube-dsr-tun6"
)

// linkNameFor returns the name of the tunnel that takes IPVS's packets to pod.
func linkNameFor(pod netip.Addr) string {
	if pod.Is4() {
		return LinkName
	}
	return LinkName6
}

// linkAlias marks the device as kube-routerd's; a device of that name without it is
// never changed.
const linkAlias = "kube-routerd DSR"

// ErrNoPod is returned (wrapped) when no pod namespace holds the address.
var ErrNoPod = errors.New("no pod network namespace on this node has this address")

// Interface is what the service proxy needs inside pods for DSR.
type Interface interface {
	// List returns kube-routerd's tunnel of every pod found that has one, by the pod's
	// address (the tunnel's local address).
	List() (map[netip.Addr]Pod, error)
	// Set makes the tunnel in the pod with address pod hold exactly vips (sorted);
	// none deletes the device. It returns the MTU of the pod's interface.
	Set(pod netip.Addr, vips []netip.Addr) (mtu int, err error)
}

// Pod is kube-routerd's tunnel in one pod.
type Pod struct {
	// VIPs are the virtual addresses the tunnel holds, sorted.
	VIPs []netip.Addr
	// MTU is the MTU of the pod's interface with the pod's address: the pod
	// advertises a TCP MSS for it, and IPVS's encapsulated requests must fit it.
	MTU int
}

// ProcPlace is the Places entry that searches the namespaces of running processes.
const ProcPlace = "/proc"

// Kernel is the real Interface.
type Kernel struct {
	// Places are where namespaces are searched, in order: directories of namespace
	// files (such as /run/netns), and ProcPlace.
	Places []string
	// Node is the node's namespace (netns.None(): the caller's): never searched, and
	// where the pod's veth peer is.
	Node netns.NsHandle

	mu sync.Mutex
	// found remembers where each pod address was last seen; Set checks it still holds.
	found map[netip.Addr]nsFile
}

// nsFile is a network namespace reachable by path.
type nsFile struct {
	path string
	id   nsID
}

// nsID identifies a namespace: the device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

func idOf(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{st.Dev, st.Ino}, nil
}

func (k *Kernel) nodeID() (nsID, error) {
	if k.Node.IsOpen() {
		var st unix.Stat_t
		if err := unix.Fstat(int(k.Node), &st); err != nil {
			return nsID{}, fmt.Errorf("reading the node's network namespace: %w", err)
		}
		return nsID{st.Dev, st.Ino}, nil
	}
	return idOf("/proc/self/ns/net")
}

// candidates lists every namespace in Places once, the node's left out. Entries that
// vanish or cannot be read (another user's process) are skipped.
func (k *Kernel) candidates() ([]nsFile, error) {
	node, err := k.nodeID()
	if err != nil {
		return nil, err
	}
	seen := map[nsID]bool{node: true}
	var out []nsFile
	for _, place := range k.Places {
		entries, err := os.ReadDir(place)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("searching pod namespaces in %s: %w", place, err)
		}
		for _, e := range entries {
			path := filepath.Join(place, e.Name())
			if place == ProcPlace {
				if _, err := strconv.Atoi(e.Name()); err != nil {
					continue
				}
				path = filepath.Join(path, "ns", "net")
			}
			id, err := idOf(path)
			if err != nil || seen[id] {
				continue
			}
			seen[id] = true
			out = append(out, nsFile{path: path, id: id})
		}
	}
	return out, nil
}

// inNamespace runs fn with a netlink handle and a namespace handle inside f, after
// checking f is still the namespace it was.
func inNamespace(f nsFile, fn func(nl *netlink.Handle, ns netns.NsHandle) error) error {
	ns, err := netns.GetFromPath(f.path)
	if err != nil {
		return err
	}
	defer ns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		return err
	}
	if (nsID{st.Dev, st.Ino}) != f.id {
		return fmt.Errorf("%s: %w", f.path, ErrNoPod)
	}
	nl, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", f.path, err)
	}
	defer nl.Close()
	return fn(nl, ns)
}

// podAddrs lists the addresses of a namespace's interfaces but loopback and IPv6
// link-local ones.
func podAddrs(nl *netlink.Handle) ([]netlink.Addr, error) {
	addrs, err := nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(addrs, func(a netlink.Addr) bool { return a.IP.IsLoopback() || a.IP.IsLinkLocalUnicast() }), nil
}

func toAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// ourTunnel returns kube-routerd's tunnel device of that name in the namespace, nil
// when there is none, and an error when a device of that name is someone else's.
func ourTunnel(nl *netlink.Handle, name string) (netlink.Link, error) {
	link, err := nl.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if link.Attrs().Alias != linkAlias {
		return nil, fmt.Errorf("device %s exists and is not kube-routerd's", name)
	}
	return link, nil
}

// tunnelLocal returns the local address of a tunnel device: the pod address whose
// tunnelled packets it takes.
func tunnelLocal(link netlink.Link) (netip.Addr, bool) {
	switch t := link.(type) {
	case *netlink.Iptun:
		return toAddr(t.Local), true
	case *netlink.Ip6tnl:
		return toAddr(t.Local), true
	}
	return netip.Addr{}, false
}

// scan searches every namespace: where each address of this node's pods is, and what
// our tunnels in them hold. A namespace is a pod of this node when the interface
// with the address is a veth whose peer is in the node's namespace (the search also
// sees namespaces of other nodes' pods when nodes share a kernel, as in tests).
func (k *Kernel) scan() (map[netip.Addr]nsFile, map[netip.Addr]Pod, error) {
	files, err := k.candidates()
	if err != nil {
		return nil, nil, err
	}
	where := map[netip.Addr]nsFile{}
	tunnels := map[netip.Addr]Pod{}
	for _, f := range files {
		_ = inNamespace(f, func(nl *netlink.Handle, _ netns.NsHandle) error {
			addrs, err := podAddrs(nl)
			if err != nil {
				return err
			}
			// Someone else's device of our name is no tunnel of ours; Set says so.
			locals := map[int]netip.Addr{}
			for _, name := range []string{LinkName, LinkName6} {
				if tun, _ := ourTunnel(nl, name); tun != nil {
					if local, ok := tunnelLocal(tun); ok {
						locals[tun.Attrs().Index] = local
					}
				}
			}
			vips := map[netip.Addr][]netip.Addr{}
			mtus := map[netip.Addr]int{}
			for _, a := range addrs {
				if local, ok := locals[a.LinkIndex]; ok {
					vips[local] = append(vips[local], toAddr(a.IP))
					continue
				}
				if link, err := nl.LinkByIndex(a.LinkIndex); err == nil && k.intoNode(nl, link) {
					where[toAddr(a.IP)] = f
					mtus[toAddr(a.IP)] = link.Attrs().MTU
				}
			}
			for _, local := range locals {
				if mtu, pod := mtus[local]; pod {
					tunnels[local] = Pod{VIPs: append([]netip.Addr{}, slices.SortedFunc(slices.Values(vips[local]), netip.Addr.Compare)...), MTU: mtu}
				}
			}
			return nil
		})
	}
	return where, tunnels, nil
}

// intoNode reports whether a pod's interface is a veth whose peer is in the node's
// namespace: the peer's namespace id, as the pod's namespace numbers it, is the
// node's.
func (k *Kernel) intoNode(nl *netlink.Handle, podLink netlink.Link) bool {
	if podLink.Type() != "veth" {
		return false
	}
	node := k.Node
	if !node.IsOpen() {
		var err error
		if node, err = netns.Get(); err != nil {
			return false
		}
		defer node.Close()
	}
	id, err := nl.GetNetNsIdByFd(int(node))
	return err == nil && id >= 0 && id == podLink.Attrs().NetNsID
}

// List implements Interface.
func (k *Kernel) List() (map[netip.Addr]Pod, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	where, tunnels, err := k.scan()
	if err != nil {
		return nil, err
	}
	k.found = where
	return tunnels, nil
}

// Set implements Interface. The pod's namespace is looked up where it was last seen
// and searched for again when it is not there any more.
func (k *Kernel) Set(pod netip.Addr, vips []netip.Addr) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var mtu int
	apply := func(nl *netlink.Handle, ns netns.NsHandle) (err error) {
		mtu, err = k.apply(nl, ns, pod, vips)
		return err
	}
	f, ok := k.found[pod]
	if ok {
		err := inNamespace(f, apply)
		if !errors.Is(err, ErrNoPod) && !errors.Is(err, os.ErrNotExist) {
			return mtu, err
		}
	}
	where, _, err := k.scan()
	if err != nil {
		return 0, err
	}
	k.found = where
	if f, ok = where[pod]; !ok {
		return 0, fmt.Errorf("pod %s: %w", pod, ErrNoPod)
	}
	err = inNamespace(f, apply)
	return mtu, err
}

// apply makes the tunnel in one pod namespace hold vips and returns the MTU of the
// pod's interface.
func (k *Kernel) apply(nl *netlink.Handle, ns netns.NsHandle, pod netip.Addr, vips []netip.Addr) (int, error) {
	addrs, err := podAddrs(nl)
	if err != nil {
		return 0, err
	}
	i := slices.IndexFunc(addrs, func(a netlink.Addr) bool { return toAddr(a.IP) == pod })
	if i < 0 {
		return 0, fmt.Errorf("pod %s: %w", pod, ErrNoPod)
	}
	podLink, err := nl.LinkByIndex(addrs[i].LinkIndex)
	if err != nil || !k.intoNode(nl, podLink) {
		return 0, fmt.Errorf("pod %s: %w", pod, ErrNoPod)
	}
	mtu := podLink.Attrs().MTU
	name := linkNameFor(pod)
	tun, err := ourTunnel(nl, name)
	if err != nil {
		return mtu, fmt.Errorf("pod %s: %w", pod, err)
	}
	if len(vips) == 0 {
		if tun == nil {
			return mtu, nil
		}
		if err := nl.LinkDel(tun); err != nil {
			return mtu, fmt.Errorf("pod %s: deleting %s: %w", pod, name, err)
		}
		return mtu, nil
	}
	if tun == nil {
		if tun, err = createTunnel(nl, pod); err != nil {
			return mtu, err
		}
	}
	if pod.Is6() {
		// IPv6 has neither reverse-path filtering nor ARP, and forwards packets from
		// the node's own addresses.
		if err := nl.LinkSetUp(tun); err != nil {
			return mtu, fmt.Errorf("pod %s: setting %s up: %w", pod, name, err)
		}
		return mtu, syncAddrs(nl, tun, addrs, vips)
	}
	// Decapsulated requests come in on the tunnel from clients routed out of eth0:
	// loose reverse-path filtering (the highest of all and the device's applies) lets
	// them in. The pod must not answer ARP for the addresses (the node owns them).
	podConf := "net/ipv4/conf/" + podLink.Attrs().Name + "/"
	_, err = sysctl.Ensure(sysctl.Proc{NS: ns}, []sysctl.KV{
		{Key: "net/ipv4/conf/" + LinkName + "/rp_filter", Value: "2"},
		{Key: podConf + "arp_ignore", Value: "1"},
		{Key: podConf + "arp_announce", Value: "2"},
	})
	if err != nil {
		return mtu, fmt.Errorf("pod %s: %w", pod, err)
	}
	if err := nl.LinkSetUp(tun); err != nil {
		return mtu, fmt.Errorf("pod %s: setting %s up: %w", pod, name, err)
	}
	if err := syncAddrs(nl, tun, addrs, vips); err != nil {
		return mtu, fmt.Errorf("pod %s: %w", pod, err)
	}
	return mtu, k.acceptLocalFrom(podLink)
}

func createTunnel(nl *netlink.Handle, pod netip.Addr) (netlink.Link, error) {
	// The local address makes this device, not the namespace's catch-all tunl0 or
	// ip6tnl0, take the packets IPVS tunnels to the pod.
	name := linkNameFor(pod)
	var tun netlink.Link = &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: name}, Local: net.IP(pod.AsSlice())}
	if pod.Is6() {
		tun = &netlink.Ip6tnl{LinkAttrs: netlink.LinkAttrs{Name: name}, Local: net.IP(pod.AsSlice()), Proto: unix.IPPROTO_IPV6}
	}
	if err := nl.LinkAdd(tun); err != nil {
		return nil, fmt.Errorf("pod %s: creating %s: %w", pod, name, err)
	}
	if err := nl.LinkSetAlias(tun, linkAlias); err != nil {
		return nil, fmt.Errorf("pod %s: marking %s: %w", pod, name, err)
	}
	return nl.LinkByName(name)
}

// syncAddrs makes the tunnel hold exactly vips (as /32 or /128, so no route comes
// with them; IPv6 ones without duplicate address detection, usable at once).
func syncAddrs(nl *netlink.Handle, tun netlink.Link, all []netlink.Addr, vips []netip.Addr) error {
	have := map[netip.Addr]bool{}
	for _, a := range all {
		if a.LinkIndex == tun.Attrs().Index {
			have[toAddr(a.IP)] = true
		}
	}
	for _, v := range vips {
		if have[v] {
			delete(have, v)
			continue
		}
		if err := nl.AddrAdd(tun, hostAddr(v)); err != nil {
			return fmt.Errorf("adding %s to %s: %w", v, tun.Attrs().Name, err)
		}
	}
	for v := range have {
		if err := nl.AddrDel(tun, hostAddr(v)); err != nil {
			return fmt.Errorf("removing %s from %s: %w", v, tun.Attrs().Name, err)
		}
	}
	return nil
}

// acceptLocalFrom lets the node route the pod's replies: their source is a virtual
// address the node holds too, which the kernel otherwise drops as a martian source
// when it arrives on an interface without accept_local. The pod's packets arrive on
// its veth's peer, or on the bridge that peer is enslaved to.
func (k *Kernel) acceptLocalFrom(podLink netlink.Link) error {
	nl, err := netlink.NewHandleAt(k.Node, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer nl.Close()
	peer, err := nl.LinkByIndex(podLink.Attrs().ParentIndex)
	if err != nil {
		return fmt.Errorf("the node end of the pod's %s: %w", podLink.Attrs().Name, err)
	}
	in := peer
	if m := peer.Attrs().MasterIndex; m != 0 {
		if in, err = nl.LinkByIndex(m); err != nil {
			return err
		}
	}
	_, err = sysctl.Ensure(sysctl.Proc{NS: k.Node}, []sysctl.KV{{Key: "net/ipv4/conf/" + in.Attrs().Name + "/accept_local", Value: "1"}})
	return err
}

func hostAddr(v netip.Addr) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(v.AsSlice()), Mask: net.CIDRMask(v.BitLen(), v.BitLen())}}
	if v.Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}
