//go:build integration

package lballoc

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	dto "github.com/prometheus/client_model/go"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// lbConfig is an allocator answering only a class of its own, so Services other
// tests left in the shared API server are not its business; each test gives it
// pools no other test uses.
func lbConfig(t *testing.T, ns string, v4, v6 string) config.LoadBalancer {
	cfg := config.Default().LoadBalancer
	cfg.Enabled = true
	cfg.Class = "test.kube-routerd.io/" + testenv.UniqueName("lb")
	cfg.DefaultClass = false
	cfg.LeaseNamespace = ns
	cfg.LeaseName = testenv.UniqueName("lballoc")
	for _, s := range []string{v4, v6} {
		var p config.IPPool
		if err := p.UnmarshalText([]byte(s)); err != nil {
			t.Fatal(err)
		}
		if p.First.Is4() {
			cfg.IPv4Pools = append(cfg.IPv4Pools, p)
		} else {
			cfg.IPv6Pools = append(cfg.IPv6Pools, p)
		}
	}
	whole := config.Default()
	whole.LoadBalancer = cfg
	if err := whole.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestAllocatorAssignsFreesAndLeavesOtherServicesAlone(t *testing.T) {
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	ctx := context.Background()
	cfg := lbConfig(t, ns, "192.0.2.0-192.0.2.3", "2001:db8:1::/126")

	// Another allocator's Service holding an address of our pool, one without class
	// (the default class is off) and one that is no load balancer.
	other := createService(t, cs, ns, svcSpec{name: "other", class: "example.com/other", policy: one, families: v4})
	patch := []byte(`{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.2"}]}}}`)
	if _, err := cs.CoreV1().Services(ns).Patch(ctx, other.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	createService(t, cs, ns, svcSpec{name: "noclass", policy: one, families: v4})
	createService(t, cs, ns, svcSpec{name: "plain", typ: corev1.ServiceTypeClusterIP, policy: one, families: v4})

	n := startNode(t, rc, testenv.UniqueName("node"), fastLease(cfg, true))
	testenv.Eventually(t, "the only node to lead", 30*time.Second, func() bool { return n.details().Leading })

	create := func(name string, policy corev1.IPFamilyPolicy, families []corev1.IPFamily) {
		createService(t, cs, ns, svcSpec{name: name, class: cfg.Class, policy: policy, families: families})
	}
	create("a", one, v4)
	create("b", dual, v46)
	create("c", pref, v64)
	waitStatus(t, cs, ns, "a", "192.0.2.0")
	waitStatus(t, cs, ns, "b", "192.0.2.1", "2001:db8:1::")
	// The primary family first; 192.0.2.2 is the other allocator's.
	waitStatus(t, cs, ns, "c", "2001:db8:1::1", "192.0.2.3")

	create("d", one, v4)
	testenv.Eventually(t, "d reported as waiting for a free address", 30*time.Second, func() bool {
		return slices.Contains(n.details().Problems, Problem{ns + "/d", ReasonExhausted, "no free IPv4 address in the pools"})
	})
	for _, name := range []string{"other", "noclass", "plain", "d"} {
		want := map[string][]string{"other": {"192.0.2.2"}}[name]
		if got := statusOf(t, cs, ns, name); !slices.Equal(got, want) {
			t.Errorf("%s: status %q, want %q", name, got, want)
		}
	}

	// a stops being a load balancer: its address is free (the API server clears its
	// status on the type change) and d, waiting, gets it.
	a, err := cs.CoreV1().Services(ns).Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.Spec.Type = corev1.ServiceTypeClusterIP
	a.Spec.AllocateLoadBalancerNodePorts, a.Spec.LoadBalancerClass = nil, nil
	if _, err := cs.CoreV1().Services(ns).Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, cs, ns, "a")
	waitStatus(t, cs, ns, "d", "192.0.2.0")

	// b is deleted: a new dual-stack Service gets both its addresses.
	if err := cs.CoreV1().Services(ns).Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	create("e", dual, v46)
	waitStatus(t, cs, ns, "e", "192.0.2.1", "2001:db8:1::")
	waitStatus(t, cs, ns, "c", "2001:db8:1::1", "192.0.2.3")
	waitStatus(t, cs, ns, "other", "192.0.2.2")
}

// TestFailoverKeepsEveryAssignment runs two allocators ("nodes") over one Lease,
// makes the leader's assignments differ from what allocating afresh would give
// (Services deleted in the middle), stops the leader, and checks that the other
// takes over without moving any address and still serves new Services.
func TestFailoverKeepsEveryAssignment(t *testing.T) {
	for i, tc := range []struct {
		name    string
		release bool
	}{
		{"the leader dies without releasing the Lease", false},
		{"the leader stops and releases the Lease", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, cs := testenv.APIServer(t)
			ns := testenv.Namespace(t, cs)
			ctx := context.Background()
			base4, base6 := fmt.Sprintf("198.51.100.%d", 32*i), fmt.Sprintf("2001:db8:2:%d::", i)
			cfg := lbConfig(t, ns, base4+"/27", base6+"/120")

			a := startNode(t, rc, testenv.UniqueName("node-a"), fastLease(cfg, tc.release))
			testenv.Eventually(t, "node a to lead", 30*time.Second, func() bool { return a.details().Leading })
			b := startNode(t, rc, testenv.UniqueName("node-b"), fastLease(cfg, tc.release))
			testenv.Eventually(t, "node b to see a leading", 30*time.Second, func() bool { return b.details().Leader == a.name })

			families := [][]corev1.IPFamily{v46, v4, v6}
			policies := []corev1.IPFamilyPolicy{dual, one, one}
			for k := range 10 {
				createService(t, cs, ns, svcSpec{name: fmt.Sprintf("s%d", k), class: cfg.Class, policy: policies[k%3], families: families[k%3]})
			}
			// Dual-stack s0, s3, s6, s9; IPv4 s1, s4, s7; IPv6 s2, s5, s8.
			want := map[string][]string{}
			for k, v4n, v6n := 0, 0, 0; k < 10; k++ {
				var ips []string
				if k%3 != 2 {
					ips = append(ips, nth(base4, v4n))
					v4n++
				}
				if k%3 != 1 {
					ips = append(ips, nth(base6, v6n))
					v6n++
				}
				want[fmt.Sprintf("s%d", k)] = ips
			}
			for k := range 10 {
				name := fmt.Sprintf("s%d", k)
				waitStatus(t, cs, ns, name, want[name]...)
			}
			for _, name := range []string{"s3", "s6"} {
				if err := cs.CoreV1().Services(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
				delete(want, name)
			}
			testenv.Eventually(t, "the leader to see the deletions", 30*time.Second, func() bool {
				_, s3 := a.details().Services[ns+"/s3"]
				_, s6 := a.details().Services[ns+"/s6"]
				return !s3 && !s6
			})

			a.stop()
			createService(t, cs, ns, svcSpec{name: "new", class: cfg.Class, policy: dual, families: v46})
			// The lowest free addresses: s3's.
			waitStatus(t, cs, ns, "new", nth(base4, 2), nth(base6, 2))
			if !b.details().Leading {
				t.Errorf("node b does not lead after node a stopped")
			}
			lease, err := cs.CoordinationV1().Leases(ns).Get(ctx, cfg.LeaseName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if holder := *lease.Spec.HolderIdentity; holder != b.name {
				t.Errorf("Lease held by %q, want %q", holder, b.name)
			}
			for name, ips := range want {
				if got := statusOf(t, cs, ns, name); !slices.Equal(got, ips) {
					t.Errorf("%s: status %q after the failover, %q before", name, got, ips)
				}
			}
		})
	}
}

// TestBurstIsWrittenOncePerService creates Services all at once: each gets its own
// address with one status write, none rejected for deciding on a stale view (the
// allocator remembers its writes until its cache shows them).
func TestBurstIsWrittenOncePerService(t *testing.T) {
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	cfg := lbConfig(t, ns, "10.201.0.0/24", "fd00:201::/120")
	n := startNode(t, rc, testenv.UniqueName("node"), fastLease(cfg, true))
	testenv.Eventually(t, "the node to lead", 30*time.Second, func() bool { return n.details().Leading })
	const count = 60
	var wg sync.WaitGroup
	for k := range count {
		wg.Go(func() {
			createService(t, cs, ns, svcSpec{name: fmt.Sprintf("s%d", k), class: cfg.Class, policy: dual, families: v46})
		})
	}
	wg.Wait()
	testenv.Eventually(t, "every Service to have its addresses", 30*time.Second, func() bool {
		return len(n.details().Services) == count
	})
	seen := map[string]string{}
	for k := range count {
		name := fmt.Sprintf("s%d", k)
		ips := statusOf(t, cs, ns, name)
		if len(ips) != 2 {
			t.Errorf("%s: status %q, want one address of each family", name, ips)
		}
		for _, ip := range ips {
			if other, dup := seen[ip]; dup {
				t.Errorf("%s and %s both have %s", other, name, ip)
			}
			seen[ip] = name
		}
	}
	for result, want := range map[string]float64{"ok": count, "conflict": 0} {
		var m dto.Metric
		if err := n.c.metrics.writes.WithLabelValues(result).Write(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetCounter().GetValue(); got != want {
			t.Errorf("status writes %s: %v, want %v", result, got, want)
		}
	}
}
