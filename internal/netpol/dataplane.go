package netpol

import (
	"log/slog"

	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
)

// Dataplane is the kernel state network policy is written to, in one network
// namespace: one iptables per IP family served, and the namespace's IP sets.
type Dataplane struct {
	IPTables []iptables.Interface
	IPSets   ipset.Interface
	// ServiceLedger: the service proxy runs here, and what it serves is left to IPVS
	// in INPUT (see inputJumpRule). New makes sure its ledger sets exist.
	ServiceLedger bool
}

// newWriter returns the one owner of one family's chains and sets
// (internal/dataplane/netfilter): the controller only computes the Ruleset it hands over.
func newWriter(ipt iptables.Interface, sets ipset.Interface, log *slog.Logger) netfilter.Interface {
	return netfilter.NewWriter(Owner, ipt, sets, log)
}

// KernelDataplane returns the real IPv4 and IPv6 dataplane of network namespace ns
// (netns.None() for the daemon's own namespace).
func KernelDataplane(ns netns.NsHandle) (Dataplane, error) {
	tables, sets, err := netfilter.KernelTables(ns)
	if err != nil {
		return Dataplane{}, err
	}
	return Dataplane{IPTables: tables, IPSets: sets}, nil
}
