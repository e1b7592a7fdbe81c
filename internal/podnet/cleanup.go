package podnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Cleanup removes the pod egress chains, jumps and sets of both families, the CNI
// config file when kube-routerd wrote it, and bridge (empty: none), the pod bridge the
// CNI bridge plugin made from that file, with its gateway addresses and pod routes,
// unless pods are still attached to it.
func Cleanup(_ context.Context, cniFile, bridge string) error {
	dp, err := KernelDataplane(netns.None())
	if err != nil {
		return err
	}
	log := slog.Default()
	return errors.Join(cleanup(dp, CNIFile{Path: cniFile}, log), deleteBridge(bridge, log))
}

// deleteBridge deletes the link called name if it is a bridge without ports; a missing
// one is fine, one with pods on it stays (deleting it would cut them off).
func deleteBridge(name string, log *slog.Logger) error {
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
		log.Info("kept the pod bridge: pods are still attached", "bridge", name, "ports", ports)
		return nil
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("deleting pod bridge %s: %w", name, err)
	}
	log.Info("deleted the pod bridge", "bridge", name)
	return nil
}

// cleanup is Cleanup, but the bridge, for a given dataplane (tests, other namespaces).
func cleanup(dp Dataplane, cni CNIFile, log *slog.Logger) error {
	r := newEgressWriter(dp, log)
	errs := []error{r.sync(nil, true)}
	if _, err := cni.Remove(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
