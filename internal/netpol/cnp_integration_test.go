//go:build integration

package netpol

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// setClusterPolicies replaces every ClusterNetworkPolicy with policies.
func (c *cluster) setClusterPolicies(t *testing.T, policies ...*policyv1beta1.ClusterNetworkPolicy) {
	t.Helper()
	ctx := context.Background()
	api := c.pc.PolicyV1beta1().ClusterNetworkPolicies()
	if err := api.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range policies {
		if _, err := api.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = api.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}) })
}

// TestClusterNetworkPolicyCRDPickedUpWithoutRestart starts the controller on an API
// server without the CRD (NetworkPolicies work as before), then installs it: the
// controller finds it and enforces a ClusterNetworkPolicy created afterwards.
func TestClusterNetworkPolicyCRDPickedUpWithoutRestart(t *testing.T) {
	rc, _ := testenv.APIServer(t)
	// The CRD is process-wide: take it away if an earlier test installed it.
	opts := envtest.CRDInstallOptions{Paths: []string{crdPath(t, "experimental")}}
	if err := envtest.UninstallCRDs(rc, opts); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	dc := discovery.NewDiscoveryClientForConfigOrDie(rc)
	testenv.Eventually(t, "the CRD no longer served", 30*time.Second, func() bool {
		served, err := clusterPoliciesServed(dc)
		return err == nil && !served
	})
	defer func(old time.Duration) { crdPollInterval = old }(crdPollInterval)
	crdPollInterval = 200 * time.Millisecond

	c := startCluster(t)
	nsOf := func(key string) string { return key[:1] }
	c.setPolicies(t, policy(c.nsA, "deny", nil))
	c.waitMatrix(t, "without the CRD, NetworkPolicies as before", c.expect(func(_, to string, _ target) bool { return nsOf(to) != "A" }))
	c.setPolicies(t)

	installClusterPolicyCRD(t)
	c.setClusterPolicies(t, cnp("deny-b-to-a", admin, 10, l("team", "a"), cIn(deny, nil, cNS(l("team", "b")))))
	c.waitMatrix(t, "CRD installed later: its Admin Deny enforced", c.expect(func(from, to string, _ target) bool {
		return !(nsOf(from) == "B" && nsOf(to) == "A")
	}))
}

// TestClusterNetworkPolicyTiersOnTheKernel drives the tiers through the real API
// server, iptables and ipsets, and probes: Admin Deny over a NetworkPolicy, Pass to
// it, Baseline where no NetworkPolicy isolates; a malformed policy is reported and
// skipped while the others hold. Every step's matrix is checked against explain.
func TestClusterNetworkPolicyTiersOnTheKernel(t *testing.T) {
	installClusterPolicyCRD(t)
	c := startCluster(t)
	nsOf := func(key string) string { return key[:1] }
	teamA, teamB := l("team", "a"), l("team", "b")
	isTCP80 := func(tg target) bool { return tg.proto == tnetns.TCP && tg.port == 80 }

	// A NetworkPolicy lets only B into A; the Admin tier denies B's TCP 80 anyway.
	fromB := policy(c.nsA, "from-b", nil, ingress(nil, nss(teamB)))
	c.setPolicies(t, fromB)
	c.setClusterPolicies(t, cnp("deny-b-http", admin, 10, teamA, cIn(deny, cPort("tcp", 80), cNS(teamB))))
	c.waitMatrix(t, "Admin Deny over a NetworkPolicy allow", c.expect(func(from, to string, tg target) bool {
		return nsOf(to) != "A" || (nsOf(from) == "B" && !isTCP80(tg))
	}))

	// Pass hands B's TCP 80 to the NetworkPolicy before the Deny sees it.
	c.setClusterPolicies(t,
		cnp("pass-b-http", admin, 5, teamA, cIn(pass, cPort("tcp", 80), cNS(teamB))),
		cnp("deny-b-http", admin, 10, teamA, cIn(deny, cPort("tcp", 80), cNS(teamB))))
	c.waitMatrix(t, "Admin Pass to the NetworkPolicy", c.expect(func(from, to string, _ target) bool {
		return nsOf(to) != "A" || nsOf(from) == "B"
	}))

	// Without NetworkPolicies the Baseline tier decides; an Admin Accept skips it.
	c.setPolicies(t)
	bad := cnp("bad-selector", admin, 1, nil, func(s *policyv1beta1.ClusterNetworkPolicySpec) {
		s.Subject.Namespaces = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Bogus"}}}
	}, cIn(deny, nil, cNS(nil)))
	c.setClusterPolicies(t, bad,
		cnp("accept-a-udp", admin, 10, teamB, cIn(accept, cPort("udp", 80), cNS(teamA))),
		cnp("baseline-deny", base, 10, nil, func(s *policyv1beta1.ClusterNetworkPolicySpec) { s.Subject.Namespaces = &metav1.LabelSelector{} },
			cIn(deny, nil, cNS(nil))))
	c.waitMatrix(t, "Baseline Deny, Admin Accept over it, malformed policy skipped", c.expect(func(from, to string, tg target) bool {
		return nsOf(from) == "A" && nsOf(to) == "B" && tg.proto == tnetns.UDP
	}))
	if problems := c.ctrl.Details().(Details).Problems["clusternetworkpolicy/bad-selector"]; len(problems) == 0 {
		t.Error("the malformed policy's problem is not in the status details")
	}

	// A NetworkPolicy isolating A takes A out of the Baseline tier.
	c.setPolicies(t, policy(c.nsA, "a-open-http", nil, ingress(port(tcp, intstr.FromInt32(80)))))
	c.waitMatrix(t, "a NetworkPolicy overrides the Baseline tier", c.expect(func(from, to string, tg target) bool {
		return (nsOf(to) == "A" && isTCP80(tg)) || (nsOf(from) == "A" && nsOf(to) == "B" && tg.proto == tnetns.UDP)
	}))
	if got := c.ctrl.Details().(Details).ClusterPolicies; got != 3 {
		t.Errorf("status counts %d cluster network policies, want 3", got)
	}
}
