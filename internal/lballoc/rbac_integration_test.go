//go:build integration

package lballoc

import (
	"context"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

const rbacPath = "../../packaging/rbac.yaml"

// TestPackagedPermissionsAreExactlyWhatTheAllocatorUses runs the allocator as a
// node identity bound by rbac.yaml alone, and checks that identity may write nothing
// else: no Service spec, no status by update, no other Lease, no events.
func TestPackagedPermissionsAreExactlyWhatTheAllocatorUses(t *testing.T) {
	rc, cs := testenv.APIServer(t)
	testenv.ApplyRBAC(t, cs, rbacPath)
	nodeName := testenv.UniqueName("node")
	user, groups := "system:kube-routerd:"+nodeName, []string{"system:kube-routerd", "system:authenticated"}

	defaults := config.Default().LoadBalancer
	for _, tc := range []struct {
		attrs authorizationv1.ResourceAttributes
		allow bool
	}{
		{authorizationv1.ResourceAttributes{Verb: "patch", Resource: "services", Subresource: "status", Namespace: "any"}, true},
		{authorizationv1.ResourceAttributes{Verb: "create", Group: "coordination.k8s.io", Resource: "leases", Namespace: defaults.LeaseNamespace}, true},
		{authorizationv1.ResourceAttributes{Verb: "get", Group: "coordination.k8s.io", Resource: "leases", Namespace: defaults.LeaseNamespace, Name: defaults.LeaseName}, true},
		{authorizationv1.ResourceAttributes{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: defaults.LeaseNamespace, Name: defaults.LeaseName}, true},
		{authorizationv1.ResourceAttributes{Verb: "update", Resource: "services", Subresource: "status", Namespace: "any"}, false},
		{authorizationv1.ResourceAttributes{Verb: "patch", Resource: "services", Namespace: "any"}, false},
		{authorizationv1.ResourceAttributes{Verb: "update", Resource: "services", Namespace: "any"}, false},
		{authorizationv1.ResourceAttributes{Verb: "delete", Group: "coordination.k8s.io", Resource: "leases", Namespace: defaults.LeaseNamespace, Name: defaults.LeaseName}, false},
		{authorizationv1.ResourceAttributes{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: defaults.LeaseNamespace, Name: "kube-controller-manager"}, false},
		{authorizationv1.ResourceAttributes{Verb: "create", Group: "coordination.k8s.io", Resource: "leases", Namespace: "default"}, false},
		{authorizationv1.ResourceAttributes{Verb: "create", Resource: "events", Namespace: "any"}, false},
	} {
		review, err := cs.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups, ResourceAttributes: &tc.attrs},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if review.Status.Allowed != tc.allow {
			t.Errorf("%+v: allowed %v, want %v (%s)", tc.attrs, review.Status.Allowed, tc.allow, review.Status.Reason)
		}
	}

	// The allocator as that identity, on the packaged Lease.
	ns := testenv.Namespace(t, cs)
	cfg := lbConfig(t, ns, "203.0.113.0/30", "2001:db8:9::/126")
	cfg.LeaseNamespace, cfg.LeaseName = defaults.LeaseNamespace, defaults.LeaseName
	node := rest.CopyConfig(rc)
	node.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	n := startNode(t, node, nodeName, fastLease(cfg, true))
	createService(t, cs, ns, svcSpec{name: "web", class: cfg.Class, policy: dual, families: v64})
	waitStatus(t, cs, ns, "web", "2001:db8:9::", "203.0.113.0")
	if !n.details().Leading {
		t.Errorf("the node identity does not lead")
	}
	n.stop()
	testenv.Eventually(t, "the stopped node to release the Lease", 30*time.Second, func() bool {
		l, err := cs.CoordinationV1().Leases(cfg.LeaseNamespace).Get(context.Background(), cfg.LeaseName, metav1.GetOptions{})
		return err == nil && (l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "")
	})
	if strings.Contains(n.logs.String(), "forbidden") {
		t.Errorf("a request was forbidden:\n%s", testenv.LastLines(n.logs.String(), 30))
	}
}
