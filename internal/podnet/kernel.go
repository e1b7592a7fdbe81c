package podnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"
)

// KernelAt is the real Kernel of network namespace ns (netns.None(): the daemon's own).
func KernelAt(ns netns.NsHandle) (Kernel, error) {
	var dp Dataplane
	for _, proto := range []iptables.Protocol{iptables.IPv4, iptables.IPv6} {
		ipt, err := iptables.NewAt(proto, ns)
		if err != nil {
			return Kernel{}, err
		}
		dp.IPTables = append(dp.IPTables, ipt)
	}
	var (
		sets *ipset.Netlink
		err  error
	)
	if ns.IsOpen() {
		sets, err = ipset.NewAt(ns)
	} else {
		sets, err = ipset.New()
	}
	if err != nil {
		return Kernel{}, err
	}
	dp.IPSets = sets
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return Kernel{}, fmt.Errorf("netlink handle: %w", err)
	}
	return Kernel{Dataplane: dp, Sysctls: sysctl.Proc{NS: ns}, LinkMTU: func(a netip.Addr) (int, error) { return linkMTU(nl, a) }}, nil
}

// linkMTU finds the interface holding addr and returns its MTU.
func linkMTU(nl *netlink.Handle, addr netip.Addr) (int, error) {
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := nl.AddrList(nil, family)
	if err != nil {
		return 0, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			link, err := nl.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, fmt.Errorf("reading the link of %s: %w", addr, err)
			}
			return link.Attrs().MTU, nil
		}
	}
	return 0, fmt.Errorf("no interface holds %s", addr)
}

// Cleanup removes the pod egress chains, jumps and sets of both families, the CNI
// config file when kube-routerd wrote it, and bridge (empty: none), the pod bridge the
// CNI bridge plugin made from that file, with its gateway addresses and pod routes,
// unless pods are still attached to it.
func Cleanup(_ context.Context, cniFile, bridge string) error {
	k, err := KernelAt(netns.None())
	if err != nil {
		return err
	}
	return errors.Join(CleanupKernel(k, CNIFile{Path: cniFile}), deleteBridge(bridge))
}

// deleteBridge deletes the link called name if it is a bridge without ports; a missing
// one is fine, one with pods on it stays (deleting it would cut them off).
func deleteBridge(name string) error {
	if name == "" {
		return nil
	}
	link, err := netlink.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finding pod bridge %s: %w", name, err)
	}
	if link.Type() != "bridge" {
		return nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	ports := 0
	for _, l := range links {
		if l.Attrs().MasterIndex == link.Attrs().Index {
			ports++
		}
	}
	if ports > 0 {
		slog.Info("kept the pod bridge: pods are still attached", "bridge", name, "ports", ports)
		return nil
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("deleting pod bridge %s: %w", name, err)
	}
	slog.Info("deleted the pod bridge", "bridge", name)
	return nil
}

// CleanupKernel is Cleanup for a given kernel (tests, other namespaces).
func CleanupKernel(k Kernel, cni CNIFile) error {
	r := newEgressWriter(k.Dataplane, slog.Default())
	errs := []error{r.sync(nil, true)}
	if _, err := cni.Remove(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
