//go:build integration

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// Where the daemon's health and metrics endpoints listen inside a node namespace
// (the defaults).
const (
	healthAddr  = "127.0.0.1:20244"
	metricsAddr = "127.0.0.1:20245"
)

// apiForwarder is a forwarder to the API server, like netns.ForwardAPIServer, that the test can
// cut (listener closed, live connections reset) and restore on the same port, to
// take the control plane away from one daemon.
type apiForwarder struct {
	node     *netns.Node
	upstream string
	addr     string // inside the node namespace

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
}

// useSwitchableAPI points the daemon at a new apiForwarder by rewriting the
// kubeconfig that setupDaemon wrote.
func useSwitchableAPI(t *testing.T, d *daemon, rc *rest.Config) *apiForwarder {
	t.Helper()
	api, err := url.Parse(rc.Host)
	if err != nil {
		t.Fatal(err)
	}
	f := &apiForwarder{node: d.Node, upstream: api.Host, addr: "127.0.0.1:0", conns: map[net.Conn]bool{}}
	f.restore(t)
	t.Cleanup(f.cut)

	text, err := os.ReadFile(d.Config)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^kubeconfig = "(.*)"$`).FindSubmatch(text)
	if m == nil {
		t.Fatalf("no kubeconfig in %s", d.Config)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: "https://" + f.addr, CertificateAuthorityData: rc.CAData}
	kc.AuthInfos["node"] = &clientcmdapi.AuthInfo{ClientCertificateData: rc.CertData, ClientKeyData: rc.KeyData, Token: rc.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "node"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, string(m[1])); err != nil {
		t.Fatal(err)
	}
	return f
}

// restore listens again, on the port of the first listen.
func (f *apiForwarder) restore(t *testing.T) {
	t.Helper()
	var ln net.Listener
	if err := f.node.Do(func() (err error) {
		ln, err = net.Listen("tcp", f.addr)
		return err
	}); err != nil {
		t.Fatalf("forwarder listen inside %s: %v", f.node.Name, err)
	}
	f.mu.Lock()
	f.ln, f.addr = ln, ln.Addr().String()
	f.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
}

func (f *apiForwarder) serve(c net.Conn) {
	up, err := net.Dial("tcp", f.upstream)
	if err != nil {
		c.Close()
		return
	}
	f.mu.Lock()
	f.conns[c], f.conns[up] = true, true
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		delete(f.conns, up)
		f.mu.Unlock()
		c.Close()
		up.Close()
	}()
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	_, _ = io.Copy(c, up)
}

// cut closes the listener (new connections are refused) and every live connection.
func (f *apiForwarder) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		c.Close()
	}
}

// nodeClient is an HTTP client that connects from inside the node namespace (the
// daemon's endpoints listen on the namespace's loopback).
func nodeClient(n *netns.Node) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (c net.Conn, err error) {
			err = n.Do(func() (err error) {
				c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, a)
				return err
			})
			return c, err
		},
		DisableKeepAlives: true,
	}}
}

// nodeHTTP fetches a URL from inside the node namespace.
func nodeHTTP(n *netns.Node, path, addr string) (int, string, error) {
	resp, err := nodeClient(n).Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// samples scrapes every series the daemon exports, keyed as exposed ("name{labels}").
func samples(t testing.TB, n *netns.Node) map[string]float64 {
	t.Helper()
	code, body, err := nodeHTTP(n, "/metrics", metricsAddr)
	if err != nil || code != http.StatusOK {
		t.Fatalf("scrape metrics on %s: %d %v", n.Name, code, err)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

// sumOf adds the series of metric name whose labels contain filter ("" for all).
func sumOf(series map[string]float64, name, filter string) float64 {
	sum := 0.0
	for k, v := range series {
		if (k == name || strings.HasPrefix(k, name+"{")) && strings.Contains(k, filter) {
			sum += v
		}
	}
	return sum
}

// metric sums every series of a Prometheus metric the daemon exports.
func metric(t testing.TB, n *netns.Node, name string) float64 {
	t.Helper()
	return sumOf(samples(t, n), name, "")
}

// expectHealthy fails unless /healthz says every loop is alive and the process runs.
func (d *daemon) expectHealthy(t *testing.T) {
	t.Helper()
	if !d.Running() {
		t.Fatalf("kube-routerd on %s exited", d.Node.Name)
	}
	code, body, err := nodeHTTP(d.Node, "/healthz", healthAddr)
	if err != nil || code != http.StatusOK {
		t.Fatalf("/healthz on %s: %d %q %v", d.Node.Name, code, body, err)
	}
}

// fullState is ourState plus the IPv6 filter table, the other family the policy
// controller programs, with set names sorted (the kernel lists them in no fixed order).
func fullState(t testing.TB, n *netns.Node) string {
	t.Helper()
	var b strings.Builder
	var sets []string
	for _, l := range strings.SplitAfter(ourState(t, n), "\n") {
		if strings.HasPrefix(l, "set ") {
			sets = append(sets, l)
		} else {
			b.WriteString(l)
		}
	}
	slices.Sort(sets)
	b.WriteString(strings.Join(sets, ""))
	counters := regexp.MustCompile(`\[\d+:\d+\]`)
	for _, l := range strings.Split(n.Save(t, "ip6tables-save", "-t", "filter"), "\n") {
		if strings.Contains(l, "KUBE-ROUTER") {
			b.WriteString("v6 " + counters.ReplaceAllString(l, "") + "\n")
		}
	}
	return b.String()
}

func probeOK(p *netns.Pod, target netip.AddrPort) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := p.Probe(ctx, netns.TCP, target)
	return err == nil
}

// twoNodes runs kube-routerd on two linked nodes with a server pod on A and a client
// on B, and waits for the BGP routes between them.
func twoNodes(t *testing.T, cs kubernetes.Interface, rc *rest.Config, ns, extraConfig string) (nodeA, nodeB *netns.Node, daemonA, daemonB *daemon, podA, podB *netns.Pod) {
	t.Helper()
	link := netns.NewLink(t)
	nodeA = link.AddNode(t, netns.NodeOptions{Client: cs})
	nodeB = link.AddNode(t, netns.NodeOptions{Client: cs})
	podA = nodeA.AddPod(t, netns.PodOptions{Namespace: ns, Labels: map[string]string{"app": "a"}})
	podB = nodeB.AddPod(t, netns.PodOptions{Namespace: ns, Labels: map[string]string{"app": "b"}})
	podA.Serve(t, netns.TCP, 8080)
	daemonA = setupDaemon(t, nodeA, rc, extraConfig)
	daemonB = setupDaemon(t, nodeB, rc, extraConfig)
	return nodeA, nodeB, daemonA, daemonB, podA, podB
}

func waitRoutes(t *testing.T, nodeA, nodeB *netns.Node) {
	t.Helper()
	testenv.Eventually(t, "pod routes from BGP on both nodes", 60*time.Second, func() bool {
		return strings.Contains(ourRoutes(t, nodeA), nodeB.PodCIDRv4.String()) &&
			strings.Contains(ourRoutes(t, nodeB), nodeA.PodCIDRv4.String())
	})
}

// TestAPIServerOutageKeepsForwardingAndCatchesUp takes the API server away from both
// daemons for a minute: the kernel stays exactly as it was, the loops stay healthy,
// and a policy deleted meanwhile is removed once the API server is back.
func TestAPIServerOutageKeepsForwardingAndCatchesUp(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	nodeA, nodeB, daemonA, daemonB, podA, podB := twoNodes(t, cs, rc, ns, "")
	fwdA := useSwitchableAPI(t, daemonA, rc)
	fwdB := useSwitchableAPI(t, daemonB, rc)
	daemonA.StartReady(readyTimeout)
	daemonB.StartReady(readyTimeout)
	waitRoutes(t, nodeA, nodeB)
	target := netip.AddrPortFrom(podA.IPv4, 8080)
	createDenyPolicy(t, cs, ns)
	testenv.Eventually(t, "default deny to take effect", 30*time.Second, func() bool { return !probeOK(podB, target) })
	beforeA, beforeB := fullState(t, nodeA), fullState(t, nodeB)

	fwdA.cut()
	fwdB.cut()
	// Changed while the daemons cannot see it.
	if err := cs.NetworkingV1().NetworkPolicies(ns).Delete(context.Background(), "default-deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	const outage = 60 * time.Second
	for end := time.Now().Add(outage); time.Now().Before(end); time.Sleep(5 * time.Second) {
		if got := fullState(t, nodeA); got != beforeA {
			t.Fatalf("node A's kernel changed during the outage:\nbefore:\n%s\nnow:\n%s", beforeA, got)
		}
		if got := fullState(t, nodeB); got != beforeB {
			t.Fatalf("node B's kernel changed during the outage:\nbefore:\n%s\nnow:\n%s", beforeB, got)
		}
		daemonA.expectHealthy(t)
		daemonB.expectHealthy(t)
		if probeOK(podB, target) {
			t.Fatal("the deny policy stopped being enforced during the outage")
		}
	}

	fwdA.restore(t)
	fwdB.restore(t)
	back := time.Now()
	testenv.Eventually(t, "the policy deleted during the outage to be removed", 90*time.Second, func() bool { return probeOK(podB, target) })
	t.Logf("recovery: policy deletion made during a %s API server outage applied %s after the API server came back", outage, time.Since(back).Round(100*time.Millisecond))
	if !strings.Contains(ourRoutes(t, nodeA), nodeB.PodCIDRv4.String()) {
		t.Fatalf("node A lost its route to node B:\n%s", ourRoutes(t, nodeA))
	}
	daemonA.expectHealthy(t)
	daemonB.expectHealthy(t)
}

// manyPolicies creates n ingress policies over the namespace's pods: each selects one
// app label and admits another on a port, so every policy has a chain and a peer set.
func manyPolicies(cs kubernetes.Interface, ns string, n, apps int) error {
	tcp := corev1.ProtocolTCP
	for i := range n {
		port := intstr.FromInt32(int32(1000 + i))
		pol := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%03d", i), Namespace: ns},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint(i % apps)}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprint((i + 1) % apps)}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				}},
			},
		}
		if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(context.Background(), pol, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create policy %s: %w", pol.Name, err)
		}
	}
	return nil
}

// apiPods registers n Running pods on node (API objects only, with addresses in its
// pod CIDR), spread over apps app labels.
func apiPods(t *testing.T, cs kubernetes.Interface, node *netns.Node, ns string, n, apps int) {
	t.Helper()
	base := node.PodCIDRv4.Addr().As4()
	for i := range n {
		ip := netip.AddrFrom4([4]byte{base[0], base[1], base[2], byte(100 + i)})
		testenv.CreatePod(t, cs, testenv.PodSpec{
			Namespace: ns, Name: fmt.Sprintf("w%03d", i), NodeName: node.Name, IPs: []string{ip.String()},
			HostIP: node.IPv4.String(), Labels: map[string]string{"app": fmt.Sprint(i % apps)},
		})
	}
}

// chainCount counts our policy ingress chains in the IPv4 filter table.
func chainCount(t *testing.T, n *netns.Node) int {
	t.Helper()
	return strings.Count(n.Save(t, "iptables-save", "-t", "filter"), ":KUBE-ROUTER-NI-")
}

// settle waits until the node's kernel state has wanted policy chains and stops
// changing, and returns it.
func settle(t *testing.T, n *netns.Node, wantChains int, timeout time.Duration) string {
	t.Helper()
	var last string
	stable := 0
	testenv.Eventually(t, fmt.Sprintf("%d policy chains, unchanged over 3 samples", wantChains), timeout, func() bool {
		if chainCount(t, n) != wantChains {
			stable = 0
			return false
		}
		s := fullState(t, n)
		if s == last {
			stable++
		} else {
			stable, last = 0, s
		}
		return stable >= 3
	})
	return last
}

// TestKillDuringLargeSyncConverges kills the daemon with SIGKILL while it programs 300
// policies over 60 pods; after a restart the kernel must equal what a clean start
// produces: nothing duplicated, nothing left over.
func TestKillDuringLargeSyncConverges(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	node := netns.NewNode(t, netns.NodeOptions{Client: cs})
	const policies, pods, apps = 300, 60, 20
	apiPods(t, cs, node, ns, pods, apps)
	d := setupDaemon(t, node, rc, "")
	d.StartReady(readyTimeout)
	// Earlier tests' policies select none of this node's pods, so they have no chains
	// here; counted anyway, whatever the shared API server holds.
	others := chainCount(t, node)

	created := make(chan error, 1)
	go func() { created <- manyPolicies(cs, ns, policies, apps) }()
	testenv.Eventually(t, "the daemon to be part way through the policies", 60*time.Second, func() bool {
		n := chainCount(t, node) - others
		return n > 20 && n < policies
	})
	d.Kill()
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	t.Logf("killed with %d of %d policy chains programmed", chainCount(t, node)-others, policies)

	start := time.Now()
	d.StartReady(readyTimeout)
	afterKill := settle(t, node, others+policies, 120*time.Second)
	t.Logf("recovery: converged %s after restart (300 policies, 60 local pods)", time.Since(start).Round(100*time.Millisecond))
	d.Stop()

	d.Run("cleanup")
	if left := fullState(t, node); left != "" {
		t.Fatalf("cleanup left:\n%s", left)
	}
	d.StartReady(readyTimeout)
	clean := settle(t, node, others+policies, 120*time.Second)
	if afterKill != clean {
		t.Fatalf("state after kill -9 and restart differs from a clean start:\nafter kill:\n%s\nclean:\n%s", afterKill, clean)
	}
	if n := len(regexp.MustCompile(`(?m)^-A FORWARD `).FindAllString(clean, -1)); n != 1 {
		t.Fatalf("IPv4 FORWARD has %d jumps to our chain; want 1", n)
	}
}

// TestDriftIsRepairedAndCounted removes our chains' rules, a set's entries and a route
// by hand; the next full resync puts them back and counts them in the drift metrics.
func TestDriftIsRepairedAndCounted(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	const resync = "3s"
	extra := fmt.Sprintf("sync_period = %q\n\n[network_policy]\nsync_period = %q\n", resync, resync)
	nodeA, nodeB, daemonA, daemonB, podA, podB := twoNodes(t, cs, rc, ns, extra)
	daemonA.StartReady(readyTimeout)
	daemonB.StartReady(readyTimeout)
	waitRoutes(t, nodeA, nodeB)
	target := netip.AddrPortFrom(podA.IPv4, 8080)
	// Pod a admits only app=c on 8080: a peer set, a policy chain, a pod chain.
	createAdmitPolicy(t, cs, ns, "only-c", "a", "c", 8080)
	podC := nodeB.AddPod(t, netns.PodOptions{Namespace: ns, Labels: map[string]string{"app": "c"}})
	testenv.Eventually(t, "the policy to admit c and block b", 30*time.Second, func() bool {
		return probeOK(podC, target) && !probeOK(podB, target)
	})
	want := fullState(t, nodeA)
	// Several resyncs of an untouched kernel count nothing.
	time.Sleep(7 * time.Second)
	if got := fullState(t, nodeA); got != want {
		t.Fatalf("kernel changed without cause:\nbefore:\n%s\nnow:\n%s", want, got)
	}
	if n := metric(t, nodeA, "kube_routerd_netpol_drift_repairs_total"); n != 0 {
		t.Fatalf("netpol drift counted %v on an untouched kernel", n)
	}
	if n := metric(t, nodeA, "kube_routerd_routing_drift_repairs_total"); n != 0 {
		t.Fatalf("routing drift counted %v on an untouched kernel", n)
	}

	var peerSet string
	for _, l := range strings.Split(nodeA.Run(t, "ipset", "list", "-n"), "\n") {
		if strings.HasPrefix(l, "KUBE-ROUTER-SP-") {
			peerSet = l
		}
	}
	if peerSet == "" {
		t.Fatalf("no peer set on node A:\n%s", want)
	}
	// Vandalism: the top chain flushed (policy bypassed), the peer set emptied (c
	// blocked), the route to node B's pods deleted.
	nodeA.Run(t, "iptables", "-F", "KUBE-ROUTER-FORWARD")
	if !probeOK(podB, target) {
		t.Fatal("flushing our top chain did not open the pod (test premise)")
	}
	nodeA.Run(t, "ipset", "flush", peerSet)
	nodeA.Run(t, "ip", "route", "del", nodeB.PodCIDRv4.String())
	start := time.Now()
	testenv.Eventually(t, "the resync to repair the kernel", 30*time.Second, func() bool { return fullState(t, nodeA) == want })
	t.Logf("recovery: flushed chain, emptied set and deleted route repaired %s after the damage (sync_period %s)", time.Since(start).Round(100*time.Millisecond), resync)
	if !probeOK(podC, target) || probeOK(podB, target) {
		t.Fatal("policy not enforced as before after the repair")
	}
	if n := metric(t, nodeA, "kube_routerd_netpol_drift_repairs_total"); n < 2 {
		t.Errorf("kube_routerd_netpol_drift_repairs_total = %v; want at least 2 (chain, set)", n)
	}
	if n := metric(t, nodeA, "kube_routerd_routing_drift_repairs_total"); n < 1 {
		t.Errorf("kube_routerd_routing_drift_repairs_total = %v; want at least 1 (route)", n)
	}
	daemonA.expectHealthy(t)
}

// TestHostileObjectsAreSkipped sends objects that are valid for the API server but
// hostile to a node agent: a policy with thousands of ports, pods with huge label sets,
// IPv6 where IPv4 is expected, malformed annotations. The daemon logs them with their
// names, does not crash, and keeps applying what is well formed.
func TestHostileObjectsAreSkipped(t *testing.T) {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	ns := testenv.Namespace(t, cs)
	node := netns.NewNode(t, netns.NodeOptions{Client: cs})
	d := setupDaemon(t, node, rc, "advertise_cluster_ips = true\n")
	d.StartReady(readyTimeout)
	// Earlier tests' policies select none of this node's pods, so they have no chains
	// here; counted anyway, whatever the shared API server holds.
	others := chainCount(t, node)
	ctx := context.Background()
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP

	// Thousands of ports in one policy.
	many := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "many-ports", Namespace: ns},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "big"}}},
	}
	rule := networkingv1.NetworkPolicyIngressRule{}
	for i := range 3000 {
		p := intstr.FromInt32(int32(1 + i))
		proto := tcp
		if i%2 == 1 {
			proto = udp
		}
		rule.Ports = append(rule.Ports, networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p})
	}
	many.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{rule}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, many, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A pod with a huge label set, selected by that policy.
	labels := map[string]string{"app": "big"}
	for i := range 2000 {
		labels[fmt.Sprintf("l%04d.example.com/key-%04d", i, i)] = strings.Repeat("v", 60)
	}
	base := node.PodCIDRv4.Addr().As4()
	testenv.CreatePod(t, cs, testenv.PodSpec{Namespace: ns, Name: "big", NodeName: node.Name,
		IPs: []string{netip.AddrFrom4([4]byte{base[0], base[1], base[2], 200}).String()}, Labels: labels})
	// IPv6 where IPv4 is expected: an IPv6-only pod on the node, an IPv6 ipBlock.
	testenv.CreatePod(t, cs, testenv.PodSpec{Namespace: ns, Name: "v6only", NodeName: node.Name,
		IPs: []string{"fd00:10:244:1::c8"}, Labels: map[string]string{"app": "big"}})
	v6 := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "v6-block", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "big"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "fd00::/8", Except: []string{"fd00:1::/32"}}},
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}}},
			}}},
		},
	}
	if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, v6, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Malformed annotations on our Node and on a Service.
	nodeObj, err := cs.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nodeObj.Annotations == nil {
		nodeObj.Annotations = map[string]string{}
	}
	nodeObj.Annotations["kube-router.io/peer.ips"] = "fd00::1,not-an-ip"
	nodeObj.Annotations["kube-router.io/peer.asns"] = "65001,x"
	nodeObj.Annotations["kube-router.io/rr.client"] = "-7"
	if _, err := cs.CoreV1().Nodes().Update(ctx, nodeObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "weird", Namespace: ns, Annotations: map[string]string{
			"kube-router.io/service.advertise.clusterip": "maybe",
			"kube-router.io/service.scheduler":           "no-such-scheduler",
		}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80, Protocol: tcp}}},
	}
	if _, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	testenv.Eventually(t, "the thousands-of-ports policy to be programmed", 60*time.Second, func() bool {
		return strings.Count(node.Save(t, "iptables-save", "-t", "filter"), "--dport ") >= 3000
	})
	testenv.Eventually(t, "the bad annotations to be logged with their objects", 30*time.Second, func() bool {
		log := d.LogText()
		return strings.Contains(log, "node="+node.Name) && strings.Contains(log, "ignoring invalid peer annotations") &&
			strings.Contains(log, "service="+ns+"/weird")
	})
	// A well-formed change after all that is still applied.
	createDenyPolicy(t, cs, ns)
	testenv.Eventually(t, "a later policy to be applied", 30*time.Second, func() bool {
		return chainCount(t, node) == others+3
	})
	d.expectHealthy(t)
	if log := d.LogText(); strings.Contains(log, "panic") || strings.Contains(log, "goroutine ") {
		t.Fatalf("kube-routerd panicked:\n%s", testenv.LastLines(log, 40))
	}
	// Nothing was opened: the IPv6-only pod has no IPv4 chain, and the IPv4 rules of the
	// ipBlock policy name no IPv6 range.
	if state := node.Save(t, "iptables-save", "-t", "filter"); strings.Contains(state, "fd00") {
		t.Fatalf("IPv6 addresses in the IPv4 ruleset:\n%s", testenv.LastLines(state, 20))
	}
}
