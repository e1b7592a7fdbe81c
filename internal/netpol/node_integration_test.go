//go:build integration

package netpol

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// nodePort is where the node's own server listens in these tests.
const nodePort = 2222

// TestPodTrafficToTheNodeFollowsEgressPolicies: pods reach a server on the node's own
// address only as their egress policies say, over the real kernel; the node still
// reaches every pod (its replies come back through INPUT).
func TestPodTrafficToTheNodeFollowsEgressPolicies(t *testing.T) {
	c := startCluster(t)
	c.node.Serve(t, tnetns.TCP, nodePort)
	everyone := map[string]bool{"A/a": true, "A/b": true, "B/c": true}
	c.waitNodeReach(t, "no policies", everyone)

	noEgressB := policy(c.nsB, "no-egress", nil, types(networkingv1.PolicyTypeEgress))
	c.setPolicies(t, noEgressB)
	c.waitNodeReach(t, "B isolated for egress", map[string]bool{"A/a": true, "A/b": true, "B/c": false})
	c.waitMatrix(t, "B isolated for egress: the node still reaches B's pods", c.expect(func(from, _ string, _ target) bool { return from[:1] != "B" }))

	toNode := policy(c.nsB, "to-node", nil, types(networkingv1.PolicyTypeEgress),
		egress(port(tcp, intstr.FromInt32(nodePort)), block(netip.PrefixFrom(c.node.IPv4, 32).String())))
	c.setPolicies(t, noEgressB, toNode)
	c.waitNodeReach(t, "B allowed to the node's address and port", everyone)

	toOtherPort := policy(c.nsB, "to-node", nil, types(networkingv1.PolicyTypeEgress),
		egress(port(tcp, intstr.FromInt32(nodePort+1)), block(netip.PrefixFrom(c.node.IPv4, 32).String())))
	c.setPolicies(t, noEgressB, toOtherPort)
	c.waitNodeReach(t, "B allowed to the node's address on another port only", map[string]bool{"A/a": true, "A/b": true, "B/c": false})
}

// TestWhatIPVSServesOnTheNodeIsLeftToIPVS: with the service proxy on the node, a
// node address and port in its ledger set (a NodePort) passes INPUT whatever the
// client's egress policies, since IPVS takes it there and policy applies on its way
// to the backend (OUTPUT; the VM tier proves that part with IPVS). This host has no
// IPVS, so the node's own server answers in its place.
func TestWhatIPVSServesOnTheNodeIsLeftToIPVS(t *testing.T) {
	c := startClusterOn(t, nil, true)
	c.node.Serve(t, tnetns.TCP, nodePort)
	c.setPolicies(t, policy(c.nsB, "no-egress", nil, types(networkingv1.PolicyTypeEgress)))
	c.waitNodeReach(t, "B isolated for egress, the port not served by IPVS", map[string]bool{"A/a": true, "A/b": true, "B/c": false})
	c.node.Run(t, "ipset", "add", ipvs.LedgerSetV4, fmt.Sprintf("%s,tcp:%d", c.node.IPv4, nodePort))
	c.waitNodeReach(t, "the same port in the service proxy's ledger", map[string]bool{"A/a": true, "A/b": true, "B/c": true})
}

// waitNodeReach probes the node's server at its IPv4 address from each pod until the
// answers are want.
func (c *cluster) waitNodeReach(t *testing.T, step string, want map[string]bool) {
	t.Helper()
	target := netip.AddrPortFrom(c.node.IPv4, nodePort)
	var got map[string]bool
	testenv.Eventually(t, step+": pods reach the node as their policies say", 30*time.Second, func() bool {
		got = map[string]bool{}
		for key, pod := range c.pods {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := pod.Probe(ctx, tnetns.TCP, target)
			cancel()
			got[key] = err == nil
		}
		return fmt.Sprint(got) == fmt.Sprint(want)
	})
	t.Logf("%s: %v", step, got)
}
