package netfilter

import (
	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// KernelTables returns the real iptables of both IP families and the IP sets of
// network namespace ns (netns.None(): the caller's), which every controller's
// dataplane starts from.
func KernelTables(ns netns.NsHandle) ([]iptables.Interface, *ipset.Netlink, error) {
	var tables []iptables.Interface
	for _, f := range ipfamily.Both {
		ipt, err := iptables.NewAt(f, ns)
		if err != nil {
			return nil, nil, err
		}
		tables = append(tables, ipt)
	}
	sets, err := ipset.NewAt(ns)
	if err != nil {
		return nil, nil, err
	}
	return tables, sets, nil
}
