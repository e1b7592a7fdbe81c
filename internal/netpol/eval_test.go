package netpol

import (
	"net/netip"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
)

// kernel evaluates packets against what a fake dataplane holds, with the evaluator
// explain uses. It is how unit tests check semantics (who may talk to whom) instead
// of rule text.
type kernel struct{ e *evaluator }

func readKernel(t *testing.T, ipt iptables.Interface, sets ipset.Interface) *kernel {
	t.Helper()
	chains, err := ipt.SaveChains(iptables.TableFilter)
	if err != nil {
		t.Fatal(err)
	}
	all, err := sets.ListAll(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &kernel{e: newEvaluator(chains, all)}
}

// allowed reports whether the packet leaves FORWARD without being dropped.
func (k *kernel) allowed(t *testing.T, p packet) bool { return k.passes(t, "FORWARD", p) }

// allowedOut reports whether the packet leaves OUTPUT without being dropped: the path
// of what the node sends itself, and of what IPVS forwards to a Service's backend.
func (k *kernel) allowedOut(t *testing.T, p packet) bool { return k.passes(t, "OUTPUT", p) }

// allowedIn reports whether the packet leaves INPUT without being dropped: the path
// of what reaches the node's own addresses.
func (k *kernel) allowedIn(t *testing.T, p packet) bool { return k.passes(t, "INPUT", p) }

func (k *kernel) passes(t *testing.T, hook string, p packet) bool {
	t.Helper()
	dropped, _, err := k.e.verdict(hook, p)
	if err != nil {
		t.Fatal(err)
	}
	return !dropped
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
