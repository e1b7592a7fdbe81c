package proxy

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/conntrack"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/dummy"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/podtunnel"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"
)

// Dataplane is the kernel state the service proxy programs, all in one network
// namespace.
type Dataplane struct {
	IPVS ipvs.Interface
	// Ledger records which IPVS services are ours; nothing else is ever changed.
	Ledger    ipvs.Ledger
	Dummy     dummy.Interface
	Conntrack conntrack.Interface
	// IPSets holds the ledger and the firewall's sets.
	IPSets ipset.Interface
	// IPTables has one instance per IP family served.
	IPTables []iptables.Interface
	Sysctls  sysctl.Interface
	// Tunnels holds DSR virtual addresses inside local endpoints' pods.
	Tunnels podtunnel.Interface
}

// KernelDataplane returns IPVS, ipsets, iptables (IPv4 and IPv6), the dummy interface,
// conntrack and sysctls of network namespace ns (netns.None() is the caller's); the
// handle must stay open while the dataplane is used.
func KernelDataplane(cfg config.ServiceProxy, ns netns.NsHandle) (Dataplane, error) {
	return kernelDataplane(cfg, ns, true)
}

// kernelDataplane is KernelDataplane, leaving Dataplane.IPVS nil unless withIPVS.
func kernelDataplane(cfg config.ServiceProxy, ns netns.NsHandle, withIPVS bool) (Dataplane, error) {
	nsPath := ""
	var nl *netlink.Handle
	if ns.IsOpen() {
		nsPath = fmt.Sprintf("/proc/self/fd/%d", int(ns))
		var err error
		if nl, err = netlink.NewHandleAt(ns); err != nil {
			return Dataplane{}, fmt.Errorf("opening netlink in the target namespace: %w", err)
		}
	}
	tables, sets, err := netfilter.KernelTables(ns)
	if err != nil {
		return Dataplane{}, err
	}
	dp := Dataplane{
		IPTables:  tables,
		Ledger:    &ipvs.IPSetLedger{Sets: sets},
		Dummy:     &dummy.Link{Name: cfg.DummyInterface, Netlink: nl, NS: ns},
		Conntrack: conntrack.Kernel{Netlink: nl},
		IPSets:    sets,
		Sysctls:   sysctl.Proc{NS: ns},
		Tunnels:   &podtunnel.Kernel{Places: podNamespacePlaces, Node: ns},
	}
	if withIPVS {
		if dp.IPVS, err = ipvs.NewKernelAt(nsPath); err != nil {
			return Dataplane{}, err
		}
	}
	return dp, nil
}

// podNamespacePlaces are where DSR looks for pods' network namespaces: pinned by the
// container runtime (containerd and CRI-O pin every pod's in /run/netns), then those
// of running processes.
var podNamespacePlaces = []string{"/run/netns", podtunnel.ProcPlace}

// requiredSysctls are the kernel settings IPVS in NAT mode needs on a node:
// conntrack entries for IPVS connections (so nat POSTROUTING can masquerade them),
// dropping connections to removed destinations and stale persistence templates at
// once, forwarding, and no ARP answers for VIPs held on the dummy interface.
var requiredSysctls = []sysctl.KV{
	{Key: "net/ipv4/vs/conntrack", Value: "1"},
	{Key: "net/ipv4/vs/expire_nodest_conn", Value: "1"},
	{Key: "net/ipv4/vs/expire_quiescent_template", Value: "1"},
	{Key: "net/ipv4/ip_forward", Value: "1"},
	{Key: "net/ipv4/conf/all/arp_ignore", Value: "1"},
	{Key: "net/ipv4/conf/all/arp_announce", Value: "2"},
}
