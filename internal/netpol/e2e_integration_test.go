//go:build integration

package netpol

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestReachabilityMatrix(t *testing.T) {
	c := startCluster(t)
	all := func(string, string, target) bool { return true }
	c.waitMatrix(t, "no policies", c.expect(all))

	nsOf := func(key string) string { return key[:1] }
	denyA := policy(c.nsA, "deny", nil)
	c.setPolicies(t, denyA)
	c.waitMatrix(t, "default deny ingress in A", c.expect(func(from, to string, _ target) bool { return nsOf(to) != "A" }))

	fromB := policy(c.nsA, "from-b-http", map[string]string{"app": "a"}, ingress(port(tcp, intstr.FromString("http")), pods(map[string]string{"app": "b"})))
	c.setPolicies(t, denyA, fromB)
	abHTTP := func(from, to string, tg target) bool {
		return from == "A/b" && to == "A/a" && tg.proto == tnetns.TCP && tg.port == 80
	}
	c.waitMatrix(t, "named port from app=b", c.expect(func(from, to string, tg target) bool {
		return nsOf(to) != "A" || abHTTP(from, to, tg)
	}))

	fromTeamB := policy(c.nsA, "from-team-b", nil, ingress(nil, nss(map[string]string{"team": "b"})))
	c.setPolicies(t, denyA, fromB, fromTeamB)
	c.waitMatrix(t, "union with namespaceSelector team=b", c.expect(func(from, to string, tg target) bool {
		return nsOf(to) != "A" || abHTTP(from, to, tg) || nsOf(from) == "B"
	}))

	c.relabelPod(t, "A/b", map[string]string{"app": "x"})
	c.waitMatrix(t, "pod relabelled out of the peer selector", c.expect(func(from, to string, _ target) bool {
		return nsOf(to) != "A" || nsOf(from) == "B"
	}))

	c.labelNamespace(t, c.nsB, map[string]string{"team": "c"})
	c.waitMatrix(t, "namespace relabelled out of the namespaceSelector", c.expect(func(from, to string, _ target) bool {
		return nsOf(to) != "A"
	}))

	ipb := policy(c.nsA, "ipblock", nil, ingress(port(udp, intstr.FromInt32(80)),
		block(netip.PrefixFrom(c.pods["B/c"].IPv4, 24).Masked().String(), netip.PrefixFrom(c.pods["A/b"].IPv4, 32).String())))
	c.setPolicies(t, denyA, ipb)
	c.waitMatrix(t, "ipBlock (IPv4) with except on udp/80", c.expect(func(from, to string, tg target) bool {
		return nsOf(to) != "A" || (from != "A/b" && tg == target{tnetns.UDP, 80, false})
	}))

	egressB := policy(c.nsB, "egress-deny", nil, types(networkingv1.PolicyTypeEgress))
	c.setPolicies(t, egressB)
	c.waitMatrix(t, "egress deny in B (replies to B still pass)", c.expect(func(from, _ string, _ target) bool {
		return nsOf(from) != "B"
	}))

	toPodsNamedHTTP := policy(c.nsB, "to-http-in-pod-cidrs", nil, types(networkingv1.PolicyTypeEgress),
		egress(port(tcp, intstr.FromString("http")), block(c.node.PodCIDRv4.String()), block(c.node.PodCIDRv6.String())))
	c.setPolicies(t, toPodsNamedHTTP)
	c.waitMatrix(t, "egress named port to ipBlocks of the pod CIDRs", c.expect(func(from, to string, tg target) bool {
		return nsOf(from) != "B" || (to == "A/a" && tg.proto == tnetns.TCP && tg.port == 80)
	}))

	c.setPolicies(t)
	c.waitMatrix(t, "policies deleted", c.expect(all))

	c.annotateNamespace(t, c.nsA, betaIsolationAnnotation, `{"ingress":{"isolation":"DefaultDeny"}}`)
	c.waitMatrix(t, "beta annotation isolates A for ingress", c.expect(func(_, to string, _ target) bool { return nsOf(to) != "A" }))

	c.annotateNamespace(t, c.nsA, betaIsolationAnnotation, "")
	c.waitMatrix(t, "beta annotation removed", c.expect(all))
}

// TestReachabilityOfPodsAddedMidTest adds pods to a node whose neighbours are already
// isolated: a new pod knows no neighbour, so its first packets to each peer on the
// bridge depend on IPv6 neighbour discovery passing the policies.
func TestReachabilityOfPodsAddedMidTest(t *testing.T) {
	c := startCluster(t)
	nsOf := func(key string) string { return key[:1] }
	notToA := func(_, to string, _ target) bool { return nsOf(to) != "A" }
	c.setPolicies(t, policy(c.nsA, "deny", nil))
	c.waitMatrix(t, "default deny ingress in A", c.expect(notToA))
	c.addPod(t, "A/d", map[string]string{"app": "d"})
	c.waitMatrix(t, "pod added to A under default deny ingress", c.expect(notToA))

	c.setPolicies(t, policy(c.nsB, "to-a-http", nil, types(networkingv1.PolicyTypeEgress),
		egress(port(tcp, intstr.FromInt32(80)), both(map[string]string{"app": "a"}, map[string]string{"team": "a"}))))
	fromBOnlyToAHTTP := func(from, to string, tg target) bool {
		return nsOf(from) != "B" || (to == "A/a" && tg.proto == tnetns.TCP && tg.port == 80)
	}
	c.waitMatrix(t, "B isolated for egress, allowed to A/a TCP 80", c.expect(fromBOnlyToAHTTP))
	c.addPod(t, "B/e", map[string]string{"app": "e"})
	c.waitMatrix(t, "pod added to B under egress isolation", c.expect(fromBOnlyToAHTTP))
}

// TestDroppedPacketsAreLoggedToNFLOG checks that with log_drops a blocked probe really
// passes through the NFLOG rule (its kernel packet counter moves), within the limit.
func TestDroppedPacketsAreLoggedToNFLOG(t *testing.T) {
	c := startClusterWith(t, func(cfg *config.NetworkPolicy) {
		cfg.LogDrops = true
		cfg.NFLOGGroup = 42
	})
	c.setPolicies(t, policy(c.nsA, "deny", nil))
	c.waitMatrix(t, "default deny ingress in A", c.expect(func(_, to string, _ target) bool { return to[:1] != "A" }))
	nflogPackets := regexp.MustCompile(`(?m)^\[(\d+):\d+\] .*-j NFLOG --nflog-prefix "DROP ingress [^"]*" --nflog-group 42`)
	testenv.Eventually(t, "a dropped packet counted by the NFLOG rule", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		_, _ = c.pods["B/c"].Probe(ctx, tnetns.TCP, netip.AddrPortFrom(c.pods["A/a"].IPv4, 80))
		for _, m := range nflogPackets.FindAllStringSubmatch(c.node.Save(t, "iptables-save", "-c", "-t", "filter"), -1) {
			if m[1] != "0" {
				return true
			}
		}
		return false
	})
}

func (c *cluster) relabelPod(t *testing.T, key string, labels map[string]string) {
	t.Helper()
	p := c.pods[key]
	ctx := context.Background()
	obj, err := c.cs.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	obj.Labels = labels
	if _, err := c.cs.CoreV1().Pods(p.Namespace).Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// matrix probes from every source (the pods and the node) every pod and target port
// and returns "from -> to proto/port: ok|blocked" lines, sorted. One source probes at
// a time, all its targets at once, after every namespace forgot its neighbours: so
// each probe also proves that its neighbour resolution passes the policies, which
// neither warm caches nor a peer probing back at the same time (its solicitation
// teaches the address) would show.
func (c *cluster) matrix(t *testing.T) []string {
	t.Helper()
	sources := map[string]*tnetns.NS{"node": c.node.NS}
	for k, p := range c.pods {
		sources[k] = p.NS
	}
	var lines []string
	for _, from := range sortedKeys(sources) {
		for _, ns := range sources {
			ns.FlushNeighbours(t)
		}
		lines = append(lines, c.probeFrom(from, sources[from])...)
	}
	sort.Strings(lines)
	return lines
}

// probeFrom probes every other pod and target port from src at once.
func (c *cluster) probeFrom(from string, src *tnetns.NS) []string {
	var (
		mu    sync.Mutex
		lines []string
		wg    sync.WaitGroup
	)
	for to, dst := range c.pods {
		if from == to {
			continue
		}
		for _, tg := range matrixTargets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				verdict := "ok"
				addr := dst.IPv4
				if tg.v6 {
					addr = dst.IPv6
				}
				if _, err := src.Probe(ctx, tg.proto, netip.AddrPortFrom(addr, uint16(tg.port))); err != nil {
					verdict = "blocked"
				}
				mu.Lock()
				lines = append(lines, fmt.Sprintf("%s -> %s %s: %s", from, to, tg, verdict))
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	return lines
}

// expect builds the expected matrix from allowed(from, to, target).
func (c *cluster) expect(allowed func(from, to string, tg target) bool) []string {
	var lines []string
	sources := []string{"node"}
	for k := range c.pods {
		sources = append(sources, k)
	}
	for _, from := range sources {
		for to := range c.pods {
			if from == to {
				continue
			}
			for _, tg := range matrixTargets {
				verdict := "blocked"
				if from == "node" || allowed(from, to, tg) {
					verdict = "ok"
				}
				lines = append(lines, fmt.Sprintf("%s -> %s %s: %s", from, to, tg, verdict))
			}
		}
	}
	sort.Strings(lines)
	return lines
}

// waitMatrix probes until the matrix equals want; on timeout it fails with the diff.
func (c *cluster) waitMatrix(t *testing.T, step string, want []string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := c.matrix(t)
		if strings.Join(got, "\n") == strings.Join(want, "\n") {
			t.Logf("%s: matrix as expected (%d probes)", step, len(got))
			c.checkExplain(t, step, got)
			return
		}
		if time.Now().After(deadline) {
			var diff []string
			for i := range got {
				if got[i] != want[i] {
					diff = append(diff, fmt.Sprintf("  got %s, want %s", got[i], want[i][strings.LastIndex(want[i], " ")+1:]))
				}
			}
			t.Fatalf("%s: reachability differs (controller: %+v):\n%s", step, c.hb.Status(time.Minute), strings.Join(diff, "\n"))
		}
	}
}

// annotateNamespace sets (or, with an empty value, removes) an annotation.
func (c *cluster) annotateNamespace(t *testing.T, name, key, value string) {
	t.Helper()
	ctx := context.Background()
	ns, err := c.cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ns.Annotations == nil {
		ns.Annotations = map[string]string{}
	}
	if value == "" {
		delete(ns.Annotations, key)
	} else {
		ns.Annotations[key] = value
	}
	if _, err := c.cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// checkExplain asks explain about every pod-to-pod probe of a matrix the kernel
// answered and fails where its verdict differs from what the packets did.
func (c *cluster) checkExplain(t *testing.T, step string, matrix []string) {
	t.Helper()
	kernel := map[string]string{}
	for _, line := range matrix {
		probe, verdict, _ := strings.Cut(line, ": ")
		kernel[probe] = verdict
	}
	checked := 0
	for from, src := range c.pods {
		for to, dst := range c.pods {
			if from == to {
				continue
			}
			for _, tg := range matrixTargets {
				family := ipfamily.IPv4
				if tg.v6 {
					family = ipfamily.IPv6
				}
				v, err := c.ctrl.Explain(src.Namespace+"/"+src.Name, dst.Namespace+"/"+dst.Name, string(tg.proto), tg.port, family)
				if err != nil {
					t.Fatalf("%s: explain %s -> %s %s: %v", step, from, to, tg, err)
				}
				explained := "blocked"
				if v.Allowed {
					explained = "ok"
				}
				probe := fmt.Sprintf("%s -> %s %s", from, to, tg)
				if kernel[probe] != explained {
					t.Errorf("%s: %s: the kernel says %s, explain %s: %+v", step, probe, kernel[probe], explained, v)
				}
				checked++
			}
		}
	}
	t.Logf("%s: explain agrees with the kernel on %d probes", step, checked)
}
