//go:build integration || vm

package netpol

import (
	"bytes"
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes"
	clientscheme "k8s.io/client-go/kubernetes/scheme"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance"
	policyclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	policyscheme "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned/scheme"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// The module's conformance suite (sigs.k8s.io/network-policy-api/conformance) runs
// against a real cluster: it applies base/manifests.yaml (namespaces and
// StatefulSets of agnhost servers), then each test's manifests, and its tests
// (tests/*.go) poke servers from client pods with `kubectl exec`. Here the same
// manifests and the same test code drive the namespace test ground: the base
// StatefulSets become netns pods on one node (their replicas, labels, named ports
// and the servers their containers run), the host-network StatefulSet serves on the
// node, and each test's Go source, which the module embeds, is interpreted
// statement by statement (conformanceInterpreter): its pokes become probes between
// netns pods, its policy, pod label and namespace label changes go to the API
// server, and the real controller enforces everything with iptables and ipsets.
// What the interpreter cannot read is reported as not run, with the reason. SCTP is
// split between the tiers: the host kernel has no sctp module, so the integration
// tier runs the TCP and UDP probes and the VM tier the SCTP probes, of the tests
// that have them.

// crdPath is the module's CRD of a channel ("standard" or "experimental").
func crdPath(t *testing.T, channel string) string {
	return filepath.Join(testenv.ModuleDir(t, "sigs.k8s.io/network-policy-api"), "config", "crd", channel)
}

// installClusterPolicyCRD installs the module's experimental CRD (a superset of the
// standard one: node peers, named ports) into the test API server.
func installClusterPolicyCRD(t *testing.T) {
	rc, _ := testenv.APIServer(t)
	testenv.InstallCRDs(t, rc, crdPath(t, "experimental"))
}

// conformanceHostPorts are the suite's HostNetworkPorts, which the host-network pods
// serve on the node.
var conformanceHostPorts = []int{34340, 34341, 34342, 34343, 34344, 34345, 34346, 34347}

// conformanceGround is the base manifests on the namespace ground.
type conformanceGround struct {
	cs   kubernetes.Interface
	pc   policyclient.Interface
	node *tnetns.Node
	pods map[string]*tnetns.Pod // "namespace/name"
	ctrl *Controller
	hb   *daemon.Heartbeat
	// base are the labels each namespace and pod had in the base manifests, to
	// restore after each test.
	nsLabels  map[string]map[string]string
	podLabels map[string]map[string]string
	decoder   runtime.Decoder
	// sctp: the kernel has SCTP; sctpOnly: the probes of other protocols are left to
	// the host tier (in the VM).
	sctp, sctpOnly bool
}

func TestClusterNetworkPolicyConformance(t *testing.T) {
	installClusterPolicyCRD(t)
	g := newConformanceGround(t)
	tests := loadConformanceTests(t)
	if g.sctpOnly {
		tests = slices.DeleteFunc(tests, func(ct *conformanceTest) bool { return !ct.probesSCTP() })
	}
	var report []string
	for _, ct := range tests {
		ok := t.Run(ct.name, func(t *testing.T) {
			if ct.result = g.run(t, ct); strings.HasPrefix(ct.result, "not run") {
				t.Skip(ct.result)
			}
		})
		status := "pass; "
		switch {
		case !ok:
			status = "FAIL; "
		case strings.HasPrefix(ct.result, "not run"):
			status = ""
		}
		report = append(report, fmt.Sprintf("%s: %s%s", ct.name, status, ct.result))
	}
	t.Logf("conformance tests on the namespace ground:\n%s", strings.Join(report, "\n"))
}

func newConformanceGround(t *testing.T) *conformanceGround {
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	pc, err := policyclient.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientscheme.AddToScheme, policyscheme.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	g := &conformanceGround{cs: cs, pc: pc, pods: map[string]*tnetns.Pod{}, sctp: kernelHasSCTP(), sctpOnly: testenv.InVM(),
		nsLabels: map[string]map[string]string{}, podLabels: map[string]map[string]string{},
		decoder: serializer.NewCodecFactory(scheme).UniversalDeserializer()}
	g.node = tnetns.NewNode(t, tnetns.NodeOptions{Client: cs, Labels: map[string]string{"kubernetes.io/os": "linux"}})
	for _, obj := range g.manifest(t, "base/manifests.yaml") {
		switch o := obj.(type) {
		case *corev1.Namespace:
			// The API server labels every namespace with its name.
			o.Labels["kubernetes.io/metadata.name"] = o.Name
			g.nsLabels[o.Name] = o.Labels
			if _, err := cs.CoreV1().Namespaces().Create(context.Background(), o, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		case *appsv1.StatefulSet:
			g.addStatefulSet(t, o)
		default:
			t.Fatalf("base manifest holds a %T", obj)
		}
	}
	g.restoreLabels(t)
	g.ctrl, g.hb = startController(t, daemon.Env{Client: cs, PolicyClient: pc, NodeName: g.node.Name}, g.node, nil, false)
	return g
}

// manifest reads, renders and decodes one of the module's manifests.
func (g *conformanceGround) manifest(t *testing.T, path string) []runtime.Object {
	t.Helper()
	raw, err := fs.ReadFile(conformance.Manifests, path)
	if err != nil {
		t.Fatal(err)
	}
	var rendered bytes.Buffer
	tmpl, err := template.New(path).Parse(string(raw))
	if err == nil {
		err = tmpl.Execute(&rendered, struct{ HostNetworkPorts []int }{conformanceHostPorts})
	}
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []runtime.Object
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(rendered.String(), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")) == "" {
			continue
		}
		obj, _, err := g.decoder.Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, obj)
	}
	return out
}

var (
	servePort   = regexp.MustCompile(`--(tcp|udp) .*--port (\d+)`)
	netexecUDP  = regexp.MustCompile(`--udp-port (\d+)`)
	sctpPortEnv = regexp.MustCompile(`^SERVE_SCTP_PORT_(\d+)$`)
)

// addStatefulSet starts the StatefulSet's replicas as pods on the node, serving what
// their containers serve; host-network ones are the node itself.
func (g *conformanceGround) addStatefulSet(t *testing.T, s *appsv1.StatefulSet) {
	t.Helper()
	tmpl := s.Spec.Template
	var ports []corev1.ContainerPort
	type served struct {
		proto tnetns.Proto
		port  int
	}
	var servers []served
	for _, c := range tmpl.Spec.Containers {
		ports = append(ports, c.Ports...)
		cmd := strings.Join(c.Command, " ")
		if m := servePort.FindStringSubmatch(cmd); m != nil {
			port, _ := strconv.Atoi(m[2])
			servers = append(servers, served{tnetns.Proto(m[1]), port})
		}
		if m := netexecUDP.FindStringSubmatch(cmd); m != nil {
			port, _ := strconv.Atoi(m[1])
			servers = append(servers, served{tnetns.UDP, port})
		}
		for _, e := range c.Env {
			if m := sctpPortEnv.FindStringSubmatch(e.Name); m != nil {
				port, _ := strconv.Atoi(m[1])
				servers = append(servers, served{tnetns.SCTP, port})
			}
		}
	}
	replicas := 1
	if s.Spec.Replicas != nil {
		replicas = int(*s.Spec.Replicas)
	}
	if tmpl.Spec.HostNetwork {
		for _, sv := range servers {
			if sv.proto != tnetns.SCTP || g.sctp {
				g.node.Serve(t, sv.proto, sv.port)
			}
		}
	}
	for i := range replicas {
		name := fmt.Sprintf("%s-%d", s.Name, i)
		key := s.Namespace + "/" + name
		// What the StatefulSet controller adds to its pods' labels.
		labels := map[string]string{"statefulset.kubernetes.io/pod-name": name, "apps.kubernetes.io/pod-index": strconv.Itoa(i)}
		for k, v := range tmpl.Labels {
			labels[k] = v
		}
		g.podLabels[key] = labels
		if tmpl.Spec.HostNetwork {
			testenv.CreatePod(t, g.cs, testenv.PodSpec{Namespace: s.Namespace, Name: name, NodeName: g.node.Name, HostNetwork: true,
				IPs: []string{g.node.IPv4.String(), g.node.IPv6.String()}, HostIP: g.node.IPv4.String(), Labels: labels, Ports: ports})
			continue
		}
		p := g.node.AddPod(t, tnetns.PodOptions{Namespace: s.Namespace, Name: name, Labels: labels, Ports: ports})
		for _, sv := range servers {
			if sv.proto != tnetns.SCTP || g.sctp {
				p.Serve(t, sv.proto, sv.port)
			}
		}
		g.pods[key] = p
	}
}

// restoreLabels puts back the base manifests' namespace and pod labels.
func (g *conformanceGround) restoreLabels(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for name, labels := range g.nsLabels {
		ns, err := g.cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !mapsEqual(ns.Labels, labels) {
			ns.Labels = labels
			if _, err := g.cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for key, labels := range g.podLabels {
		ns, name, _ := strings.Cut(key, "/")
		pod, err := g.cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !mapsEqual(pod.Labels, labels) {
			pod.Labels = labels
			if _, err := g.cs.CoreV1().Pods(ns).Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// apply creates a test's manifest objects and returns a function deleting them.
func (g *conformanceGround) apply(t *testing.T, paths []string) func() {
	t.Helper()
	ctx := context.Background()
	var undo []func()
	policies := 0
	for _, path := range paths {
		for _, obj := range g.manifest(t, path) {
			switch o := obj.(type) {
			case *policyv1beta1.ClusterNetworkPolicy:
				if _, err := g.pc.PolicyV1beta1().ClusterNetworkPolicies().Create(ctx, o, metav1.CreateOptions{}); err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				undo = append(undo, func() { _ = g.pc.PolicyV1beta1().ClusterNetworkPolicies().Delete(ctx, o.Name, metav1.DeleteOptions{}) })
				policies++
			case *networkingv1.NetworkPolicy:
				if _, err := g.cs.NetworkingV1().NetworkPolicies(o.Namespace).Create(ctx, o, metav1.CreateOptions{}); err != nil {
					t.Fatalf("%s: %v", path, err)
				}
				undo = append(undo, func() {
					_ = g.cs.NetworkingV1().NetworkPolicies(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{})
				})
			default:
				t.Fatalf("%s holds a %T", path, obj)
			}
		}
	}
	g.waitClusterPolicies(t, policies)
	return func() {
		for _, u := range undo {
			u()
		}
		g.waitClusterPolicies(t, 0)
	}
}

// waitClusterPolicies waits until the controller has applied n ClusterNetworkPolicies,
// so that no probe runs against the state before a test's policies.
func (g *conformanceGround) waitClusterPolicies(t *testing.T, n int) {
	t.Helper()
	testenv.Eventually(t, fmt.Sprintf("%d cluster network policies applied", n), 30*time.Second, func() bool {
		return g.ctrl.Details().(Details).ClusterPolicies == n
	})
}

// settle gives the controller the time of a sync after a change, which the next
// probes would otherwise race (they also retry, as PokeServer does).
func (g *conformanceGround) settle() {
	before := g.hb.Status(time.Minute).Syncs
	deadline := time.Now().Add(2 * time.Second)
	for g.hb.Status(time.Minute).Syncs == before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// conformanceTest is one of the module's ConformanceTests, read from its source.
type conformanceTest struct {
	name      string
	manifests []string
	body      *ast.BlockStmt
	consts    map[string]string
	src       []byte
	fset      *token.FileSet
	result    string
}

// loadConformanceTests parses the module's tests/*.go (embedded in its conformance
// package) and returns every ConformanceTest, by name.
func loadConformanceTests(t *testing.T) []*conformanceTest {
	t.Helper()
	fset := token.NewFileSet()
	consts := map[string]string{}
	var out []*conformanceTest
	files, err := fs.Glob(conformance.Manifests, "tests/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no conformance tests in the module: %v", err)
	}
	for _, path := range files {
		src, err := fs.ReadFile(conformance.Manifests, path)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, path, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok {
				continue
			}
			for _, spec := range gd.Specs {
				vs, ok := spec.(*ast.ValueSpec)
				if !ok || len(vs.Values) != len(vs.Names) {
					continue
				}
				for i, v := range vs.Values {
					if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING {
						consts[vs.Names[i].Name], _ = strconv.Unquote(lit.Value)
					}
					if ct := readConformanceTest(v, src, fset); ct != nil {
						out = append(out, ct)
					}
				}
			}
		}
	}
	for _, ct := range out {
		ct.consts = consts
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// probesSCTP reports whether the test's code names the SCTP protocol.
func (ct *conformanceTest) probesSCTP() bool {
	start, end := ct.fset.Position(ct.body.Pos()).Offset, ct.fset.Position(ct.body.End()).Offset
	return bytes.Contains(ct.src[start:end], []byte(`"sctp"`))
}

// kernelHasSCTP reports whether this kernel can open SCTP sockets (the host's has no
// sctp module; the VM's has).
func kernelHasSCTP() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// readConformanceTest reads a `suite.ConformanceTest{...}` literal.
func readConformanceTest(v ast.Expr, src []byte, fset *token.FileSet) *conformanceTest {
	lit, ok := v.(*ast.CompositeLit)
	if !ok {
		return nil
	}
	if sel, ok := lit.Type.(*ast.SelectorExpr); !ok || sel.Sel.Name != "ConformanceTest" {
		return nil
	}
	ct := &conformanceTest{src: src, fset: fset}
	for _, el := range lit.Elts {
		kv := el.(*ast.KeyValueExpr)
		switch kv.Key.(*ast.Ident).Name {
		case "ShortName":
			ct.name, _ = strconv.Unquote(kv.Value.(*ast.BasicLit).Value)
		case "Manifests":
			for _, m := range kv.Value.(*ast.CompositeLit).Elts {
				path, _ := strconv.Unquote(m.(*ast.BasicLit).Value)
				ct.manifests = append(ct.manifests, path)
			}
		case "Test":
			ct.body = kv.Value.(*ast.FuncLit).Body
		}
	}
	return ct
}

// run runs one conformance test and returns what it ran and did not.
func (g *conformanceGround) run(t *testing.T, ct *conformanceTest) string {
	remove := g.apply(t, ct.manifests)
	defer func() {
		remove()
		g.restoreLabels(t)
	}()
	in := newConformanceInterpreter(g, ct)
	in.block(t, ct.body.List)
	if in.probes > 0 && in.probes == in.sctpSkipped {
		return "not run here: every probe is SCTP, which the host kernel lacks (the VM tier runs them)"
	}
	var parts []string
	parts = append(parts, fmt.Sprintf("%d of %d subtests run, %d probes", in.subtestsRun, in.subtests, in.probes-in.sctpSkipped-in.otherSkipped))
	if in.sctpSkipped > 0 {
		parts = append(parts, fmt.Sprintf("%d SCTP probes left to the VM tier (no sctp module on the host)", in.sctpSkipped))
	}
	if in.otherSkipped > 0 {
		parts = append(parts, fmt.Sprintf("%d TCP and UDP probes left to the host tier", in.otherSkipped))
	}
	if in.stopped != "" {
		parts = append(parts, "not run from "+in.stopped)
	}
	return strings.Join(parts, "; ")
}

// probeCase is one PokeServer: a connection from a pod that must (or must not) get
// through.
type probeCase struct {
	from   string // "namespace/name"
	proto  tnetns.Proto
	target netip.AddrPort
	want   bool
}

// runProbes probes all cases at once until each gives its expected result (as
// PokeServer waits for it), and fails the test for those that never do.
func (g *conformanceGround) runProbes(t *testing.T, cases []probeCase) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for _, pc := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := g.pods[pc.from]
			deadline := time.Now().Add(20 * time.Second)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
				_, err := src.Probe(ctx, pc.proto, pc.target)
				cancel()
				if (err == nil) == pc.want {
					return
				}
				if time.Now().After(deadline) {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("%s -> %s/%s: connected=%v, want %v", pc.from, pc.target, pc.proto, err == nil, pc.want))
					mu.Unlock()
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	slices.Sort(failed)
	for _, f := range failed {
		t.Error(f)
	}
}
