//go:build integration || vm

package netpol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/printer"
	"go/token"
	"net/netip"
	"reflect"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// conformanceInterpreter runs the statements of a conformance test's Go source
// against the namespace ground. It knows the conformance utilities the tests call
// (kubernetes.GetPod, PokeServer, PatchClusterNetworkPolicy, SetPodLabel, ...), and
// evaluates the Go they use around them: variables, field and index paths,
// composite literals of the API types, conversions, append, if. Anything else stops
// the test there: the statement is reported and the rest is not run.
type conformanceInterpreter struct {
	g        *conformanceGround
	ct       *conformanceTest
	vars     map[string]reflect.Value // addressable
	pending  []probeCase
	cleanups [][]ast.Stmt

	subtests, subtestsRun, probes int
	// sctpSkipped are SCTP probes a kernel without SCTP cannot run; otherSkipped the
	// TCP and UDP probes the VM leaves to the host tier.
	sctpSkipped, otherSkipped int
	// stopped is the statement the interpreter could not run, and why.
	stopped string
}

// conformanceSuite is what the tests read from their ConformanceTestSuite `s`.
type conformanceSuite struct {
	HostNetworkPorts []int
	Client           *conformanceClient
}

// conformanceClient is the part of the controller-runtime client the tests use.
type conformanceClient struct{ g *conformanceGround }

// Get reads a NetworkPolicy into obj.
func (c *conformanceClient) Get(_ any, key k8stypes.NamespacedName, obj any) error {
	np, ok := obj.(*networkingv1.NetworkPolicy)
	if !ok {
		return fmt.Errorf("get of a %T", obj)
	}
	got, err := c.g.cs.NetworkingV1().NetworkPolicies(key.Namespace).Get(context.Background(), key.Name, metav1.GetOptions{})
	if err == nil {
		*np = *got
	}
	return err
}

// Delete deletes a NetworkPolicy.
func (c *conformanceClient) Delete(_ any, obj any) error {
	np, ok := obj.(*networkingv1.NetworkPolicy)
	if !ok {
		return fmt.Errorf("delete of a %T", obj)
	}
	return c.g.cs.NetworkingV1().NetworkPolicies(np.Namespace).Delete(context.Background(), np.Name, metav1.DeleteOptions{})
}

// conformanceTypes are the types the tests' composite literals and conversions
// name, conformanceConsts the API's constants they use.
var (
	conformanceTypes  = map[string]reflect.Type{}
	conformanceConsts = map[string]reflect.Value{}
)

func init() {
	for _, v := range []any{
		policyv1beta1.ClusterNetworkPolicyEgressRule{}, policyv1beta1.ClusterNetworkPolicyIngressRule{},
		policyv1beta1.ClusterNetworkPolicyEgressPeer{}, policyv1beta1.ClusterNetworkPolicyIngressPeer{},
		policyv1beta1.ClusterNetworkPolicyProtocol{}, policyv1beta1.ClusterNetworkPolicyProtocolTCP{},
		policyv1beta1.ClusterNetworkPolicyProtocolUDP{}, policyv1beta1.ClusterNetworkPolicyProtocolSCTP{},
		policyv1beta1.Port{}, policyv1beta1.PortRange{}, policyv1beta1.CIDR(""), policyv1beta1.NamespacedPod{},
		policyv1beta1.ClusterNetworkPolicyRuleAction(""), policyv1beta1.DomainName(""),
	} {
		conformanceTypes["api."+reflect.TypeOf(v).Name()] = reflect.TypeOf(v)
	}
	for _, v := range []any{policyv1beta1.ClusterNetworkPolicyRuleActionAccept, policyv1beta1.ClusterNetworkPolicyRuleActionDeny,
		policyv1beta1.ClusterNetworkPolicyRuleActionPass} {
		conformanceConsts["api.ClusterNetworkPolicyRuleAction"+fmt.Sprint(v)] = reflect.ValueOf(v)
	}
	conformanceConsts["api.AdminTier"] = reflect.ValueOf(policyv1beta1.AdminTier)
	conformanceConsts["api.BaselineTier"] = reflect.ValueOf(policyv1beta1.BaselineTier)
	conformanceTypes["metav1.LabelSelector"] = reflect.TypeOf(metav1.LabelSelector{})
	conformanceTypes["networkingv1.NetworkPolicy"] = reflect.TypeOf(networkingv1.NetworkPolicy{})
	conformanceTypes["client.ObjectKey"] = reflect.TypeOf(k8stypes.NamespacedName{})
	for _, v := range []any{"", 0, int32(0), false} {
		conformanceTypes[reflect.TypeOf(v).Name()] = reflect.TypeOf(v)
	}
}

var errUnsupported = errors.New("not something the interpreter runs")

func newConformanceInterpreter(g *conformanceGround, ct *conformanceTest) *conformanceInterpreter {
	s := &conformanceSuite{HostNetworkPorts: conformanceHostPorts, Client: &conformanceClient{g}}
	return &conformanceInterpreter{g: g, ct: ct, vars: map[string]reflect.Value{"s": reflect.ValueOf(s).Elem()}}
}

func (in *conformanceInterpreter) source(n ast.Node) string {
	var b bytes.Buffer
	_ = printer.Fprint(&b, in.ct.fset, n)
	return b.String()
}

// block runs statements; a t.Run is a subtest, run with its probes checked at its
// end and its t.Cleanup statements after them.
func (in *conformanceInterpreter) block(t *testing.T, stmts []ast.Stmt) {
	for _, st := range stmts {
		name, body, isSubtest := subtestOf(st)
		if isSubtest {
			in.subtests++
		}
		if in.stopped != "" {
			continue
		}
		if !isSubtest {
			if err := in.stmt(t, st); err != nil {
				in.stopped = fmt.Sprintf("%q (%v)", in.source(st), err)
				t.Logf("not run from here on: %s", in.stopped)
			}
			continue
		}
		t.Run(name, func(t *testing.T) {
			outer := in.cleanups
			in.cleanups = nil
			in.block(t, body.List)
			in.flush(t)
			for i := len(in.cleanups) - 1; i >= 0; i-- {
				in.block(t, in.cleanups[i])
			}
			in.flush(t)
			in.cleanups = outer
			if in.stopped != "" {
				t.Skipf("not run from %s", in.stopped)
			}
		})
		if in.stopped == "" {
			in.subtestsRun++
		}
	}
}

// subtestOf recognises `t.Run("name", func(t *testing.T) {...})`.
func subtestOf(st ast.Stmt) (string, *ast.BlockStmt, bool) {
	es, ok := st.(*ast.ExprStmt)
	if !ok {
		return "", nil, false
	}
	call, ok := es.X.(*ast.CallExpr)
	if !ok || len(call.Args) != 2 || pkgCall(call) != "t.Run" {
		return "", nil, false
	}
	lit, ok1 := call.Args[0].(*ast.BasicLit)
	fn, ok2 := call.Args[1].(*ast.FuncLit)
	if !ok1 || !ok2 {
		return "", nil, false
	}
	name, _ := strconv.Unquote(lit.Value)
	return name, fn.Body, true
}

// pkgCall returns "x.F" for a call of F on an identifier x.
func pkgCall(call *ast.CallExpr) string {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return ""
	}
	x, ok := sel.X.(*ast.Ident)
	if !ok {
		return ""
	}
	return x.Name + "." + sel.Sel.Name
}

// flush checks the probes made since the last change.
func (in *conformanceInterpreter) flush(t *testing.T) {
	if len(in.pending) > 0 {
		in.g.runProbes(t, in.pending)
		in.pending = nil
	}
}

func (in *conformanceInterpreter) stmt(t *testing.T, st ast.Stmt) error {
	switch s := st.(type) {
	case *ast.AssignStmt:
		if len(s.Lhs) == 2 && len(s.Rhs) == 1 {
			if call, ok := s.Rhs[0].(*ast.CallExpr); ok && pkgCall(call) == "context.WithTimeout" {
				// The context the tests pass on: nothing here reads it.
				for _, l := range s.Lhs {
					in.vars[l.(*ast.Ident).Name] = reflect.New(reflect.TypeOf((*any)(nil)).Elem()).Elem()
				}
				return nil
			}
		}
		if len(s.Lhs) != 1 || len(s.Rhs) != 1 {
			return errUnsupported
		}
		v, err := in.eval(t, s.Rhs[0])
		if err != nil {
			return err
		}
		if s.Tok == token.DEFINE {
			id, ok := s.Lhs[0].(*ast.Ident)
			if !ok {
				return errUnsupported
			}
			nv := reflect.New(v.Type()).Elem()
			nv.Set(v)
			in.vars[id.Name] = nv
			return nil
		}
		lhs, err := in.eval(t, s.Lhs[0])
		if err != nil {
			return err
		}
		if !lhs.CanSet() {
			return fmt.Errorf("cannot assign to %s", in.source(s.Lhs[0]))
		}
		cv, err := convertTo(v, lhs.Type())
		if err != nil {
			return err
		}
		lhs.Set(cv)
		return nil
	case *ast.ExprStmt:
		_, err := in.eval(t, s.X)
		return err
	case *ast.DeclStmt:
		gd := s.Decl.(*ast.GenDecl)
		for _, spec := range gd.Specs {
			vs, ok := spec.(*ast.ValueSpec)
			if !ok || len(vs.Values) > 0 {
				return errUnsupported
			}
			typ, err := in.typeOf(vs.Type)
			if err != nil {
				return err
			}
			for _, n := range vs.Names {
				in.vars[n.Name] = reflect.New(typ).Elem()
			}
		}
		return nil
	case *ast.IfStmt:
		if s.Init != nil {
			return errUnsupported
		}
		cond, err := in.eval(t, s.Cond)
		if err != nil {
			return err
		}
		if cond.Kind() != reflect.Bool {
			return fmt.Errorf("condition is a %s", cond.Type())
		}
		var branch []ast.Stmt
		switch {
		case cond.Bool():
			branch = s.Body.List
		case s.Else != nil:
			branch = []ast.Stmt{s.Else}
		}
		for _, b := range branch {
			if err := in.stmt(t, b); err != nil {
				return err
			}
		}
		return nil
	case *ast.BlockStmt:
		for _, b := range s.List {
			if err := in.stmt(t, b); err != nil {
				return err
			}
		}
		return nil
	case *ast.DeferStmt:
		if _, ok := s.Call.Fun.(*ast.Ident); ok {
			return nil // defer cancel(): the placeholder context
		}
	}
	return errUnsupported
}

func (in *conformanceInterpreter) eval(t *testing.T, e ast.Expr) (reflect.Value, error) {
	switch x := e.(type) {
	case *ast.BasicLit:
		switch x.Kind {
		case token.INT:
			n, err := strconv.Atoi(x.Value)
			return reflect.ValueOf(n), err
		case token.STRING:
			s, err := strconv.Unquote(x.Value)
			return reflect.ValueOf(s), err
		}
	case *ast.Ident:
		if v, ok := in.vars[x.Name]; ok {
			return v, nil
		}
		if c, ok := in.ct.consts[x.Name]; ok {
			return reflect.ValueOf(c), nil
		}
		switch x.Name {
		case "true", "false":
			return reflect.ValueOf(x.Name == "true"), nil
		}
		return reflect.Value{}, fmt.Errorf("unknown name %s", x.Name)
	case *ast.ParenExpr:
		return in.eval(t, x.X)
	case *ast.SelectorExpr:
		if c, ok := conformanceConsts[in.source(x)]; ok {
			return c, nil
		}
		base, err := in.eval(t, x.X)
		if err != nil {
			return base, err
		}
		for base.Kind() == reflect.Pointer || base.Kind() == reflect.Interface {
			base = base.Elem()
		}
		if base.Kind() != reflect.Struct {
			return reflect.Value{}, fmt.Errorf("%s is not a struct", in.source(x.X))
		}
		f := base.FieldByName(x.Sel.Name)
		if !f.IsValid() {
			return f, fmt.Errorf("no field %s in %s", x.Sel.Name, base.Type())
		}
		return f, nil
	case *ast.IndexExpr:
		base, err := in.eval(t, x.X)
		if err != nil {
			return base, err
		}
		i, err := in.eval(t, x.Index)
		if err != nil {
			return i, err
		}
		for base.Kind() == reflect.Pointer {
			base = base.Elem()
		}
		if base.Kind() != reflect.Slice || !i.CanInt() || int(i.Int()) >= base.Len() {
			return reflect.Value{}, fmt.Errorf("bad index %s", in.source(x))
		}
		return base.Index(int(i.Int())), nil
	case *ast.BinaryExpr:
		a, err1 := in.eval(t, x.X)
		b, err2 := in.eval(t, x.Y)
		if err := errors.Join(err1, err2); err != nil {
			return reflect.Value{}, err
		}
		if x.Op == token.ADD && a.Kind() == reflect.String && b.Kind() == reflect.String {
			return reflect.ValueOf(a.String() + b.String()), nil
		}
	case *ast.UnaryExpr:
		if x.Op == token.AND {
			v, err := in.eval(t, x.X)
			if err != nil {
				return v, err
			}
			p := reflect.New(v.Type())
			p.Elem().Set(v)
			return p, nil
		}
	case *ast.CompositeLit:
		typ, err := in.typeOf(x.Type)
		if err != nil {
			return reflect.Value{}, err
		}
		return in.composite(t, x, typ)
	case *ast.CallExpr:
		return in.call(t, x)
	}
	return reflect.Value{}, fmt.Errorf("%w: %s", errUnsupported, in.source(e))
}

// typeOf resolves a type expression the tests use.
func (in *conformanceInterpreter) typeOf(e ast.Expr) (reflect.Type, error) {
	switch x := e.(type) {
	case *ast.Ident:
		if typ, ok := conformanceTypes[x.Name]; ok {
			return typ, nil
		}
	case *ast.SelectorExpr:
		if typ, ok := conformanceTypes[in.source(x)]; ok {
			return typ, nil
		}
	case *ast.ArrayType:
		if x.Len == nil {
			elem, err := in.typeOf(x.Elt)
			if err != nil {
				return nil, err
			}
			return reflect.SliceOf(elem), nil
		}
	case *ast.MapType:
		k, err1 := in.typeOf(x.Key)
		v, err2 := in.typeOf(x.Value)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		return reflect.MapOf(k, v), nil
	case *ast.StarExpr:
		elem, err := in.typeOf(x.X)
		if err != nil {
			return nil, err
		}
		return reflect.PointerTo(elem), nil
	}
	return nil, fmt.Errorf("unknown type %s", in.source(e))
}

// composite builds a composite literal of typ (elided element types take theirs
// from the container).
func (in *conformanceInterpreter) composite(t *testing.T, lit *ast.CompositeLit, typ reflect.Type) (reflect.Value, error) {
	elem := func(e ast.Expr, want reflect.Type) (reflect.Value, error) {
		if inner, ok := e.(*ast.CompositeLit); ok && inner.Type == nil {
			if want.Kind() == reflect.Pointer {
				v, err := in.composite(t, inner, want.Elem())
				if err != nil {
					return v, err
				}
				p := reflect.New(want.Elem())
				p.Elem().Set(v)
				return p, nil
			}
			return in.composite(t, inner, want)
		}
		v, err := in.eval(t, e)
		if err != nil {
			return v, err
		}
		return convertTo(v, want)
	}
	switch typ.Kind() {
	case reflect.Slice:
		out := reflect.MakeSlice(typ, 0, len(lit.Elts))
		for _, e := range lit.Elts {
			v, err := elem(e, typ.Elem())
			if err != nil {
				return v, err
			}
			out = reflect.Append(out, v)
		}
		return out, nil
	case reflect.Map:
		out := reflect.MakeMap(typ)
		for _, e := range lit.Elts {
			kv := e.(*ast.KeyValueExpr)
			k, err1 := elem(kv.Key, typ.Key())
			v, err2 := elem(kv.Value, typ.Elem())
			if err := errors.Join(err1, err2); err != nil {
				return reflect.Value{}, err
			}
			out.SetMapIndex(k, v)
		}
		return out, nil
	case reflect.Struct:
		out := reflect.New(typ).Elem()
		for _, e := range lit.Elts {
			kv, ok := e.(*ast.KeyValueExpr)
			if !ok {
				return out, fmt.Errorf("%w: unkeyed struct literal", errUnsupported)
			}
			f := out.FieldByName(kv.Key.(*ast.Ident).Name)
			if !f.IsValid() {
				return out, fmt.Errorf("no field %s in %s", in.source(kv.Key), typ)
			}
			v, err := elem(kv.Value, f.Type())
			if err != nil {
				return v, err
			}
			f.Set(v)
		}
		return out, nil
	}
	return reflect.Value{}, fmt.Errorf("composite literal of %s", typ)
}

func convertTo(v reflect.Value, typ reflect.Type) (reflect.Value, error) {
	switch {
	case v.Type().AssignableTo(typ):
		return v, nil
	case v.Type().ConvertibleTo(typ) && v.Kind() != reflect.Pointer:
		return v.Convert(typ), nil
	}
	return reflect.Value{}, fmt.Errorf("cannot use a %s as %s", v.Type(), typ)
}

// strArg evaluates a call argument that must be a string.
func (in *conformanceInterpreter) strArg(t *testing.T, call *ast.CallExpr, i int) (string, error) {
	v, err := in.eval(t, call.Args[i])
	if err != nil {
		return "", err
	}
	if v.Kind() != reflect.String {
		return "", fmt.Errorf("argument %d is a %s", i, v.Type())
	}
	return v.String(), nil
}

// call runs the conformance utilities, conversions, append and methods.
func (in *conformanceInterpreter) call(t *testing.T, call *ast.CallExpr) (reflect.Value, error) {
	ctx := context.Background()
	g := in.g
	none := reflect.ValueOf(struct{}{})
	strs := func(idx ...int) ([]string, error) {
		out := make([]string, len(idx))
		for k, i := range idx {
			s, err := in.strArg(t, call, i)
			if err != nil {
				return nil, err
			}
			out[k] = s
		}
		return out, nil
	}
	switch pkgCall(call) {
	case "kubernetes.GetPod":
		a, err := strs(2, 3)
		if err != nil {
			return none, err
		}
		pod, err := g.cs.CoreV1().Pods(a[0]).Get(ctx, a[1], metav1.GetOptions{})
		return reflect.ValueOf(pod), err
	case "kubernetes.GetClusterNetworkPolicy":
		a, err := strs(2)
		if err != nil {
			return none, err
		}
		p, err := g.pc.PolicyV1beta1().ClusterNetworkPolicies().Get(ctx, a[0], metav1.GetOptions{})
		return reflect.ValueOf(p), err
	case "kubernetes.GetNamespace":
		a, err := strs(2)
		if err != nil {
			return none, err
		}
		ns, err := g.cs.CoreV1().Namespaces().Get(ctx, a[0], metav1.GetOptions{})
		return reflect.ValueOf(ns), err
	case "kubernetes.PatchClusterNetworkPolicy":
		v, err := in.eval(t, call.Args[3])
		if err != nil {
			return none, err
		}
		in.flush(t)
		_, err = g.pc.PolicyV1beta1().ClusterNetworkPolicies().Update(ctx, v.Interface().(*policyv1beta1.ClusterNetworkPolicy), metav1.UpdateOptions{})
		g.settle()
		return none, err
	case "kubernetes.PatchNamespace":
		v, err := in.eval(t, call.Args[3])
		if err != nil {
			return none, err
		}
		in.flush(t)
		_, err = g.cs.CoreV1().Namespaces().Update(ctx, v.Interface().(*corev1.Namespace), metav1.UpdateOptions{})
		g.settle()
		return none, err
	case "kubernetes.SetPodLabel", "kubernetes.RemovePodLabel":
		idx := []int{2, 3, 4}
		if pkgCall(call) == "kubernetes.SetPodLabel" {
			idx = append(idx, 5)
		}
		a, err := strs(idx...)
		if err != nil {
			return none, err
		}
		in.flush(t)
		pod, err := g.cs.CoreV1().Pods(a[0]).Get(ctx, a[1], metav1.GetOptions{})
		if err != nil {
			return none, err
		}
		labels := map[string]string{}
		for k, v := range pod.Labels {
			labels[k] = v
		}
		if len(a) == 4 {
			labels[a[2]] = a[3]
		} else {
			delete(labels, a[2])
		}
		pod.Labels = labels
		_, err = g.cs.CoreV1().Pods(a[0]).Update(ctx, pod, metav1.UpdateOptions{})
		g.settle()
		return none, err
	case "kubernetes.PokeServer":
		return none, in.poke(t, call)
	case "net.IsIPv4String":
		a, err := strs(0)
		if err != nil {
			return none, err
		}
		addr, err := netip.ParseAddr(a[0])
		return reflect.ValueOf(err == nil && addr.Is4()), nil
	case "require.NoErrorf", "require.NoError":
		v, err := in.eval(t, call.Args[1])
		if err != nil {
			return none, err
		}
		if !v.IsNil() {
			return none, fmt.Errorf("%s: %v", in.source(call), v.Interface())
		}
		return none, nil
	case "t.Cleanup":
		fn, ok := call.Args[0].(*ast.FuncLit)
		if !ok {
			return none, errUnsupported
		}
		in.cleanups = append(in.cleanups, fn.Body.List)
		return none, nil
	case "t.Log", "t.Logf":
		return none, nil
	}
	if id, ok := call.Fun.(*ast.Ident); ok && id.Name == "append" {
		return in.appendCall(t, call)
	}
	if typ, err := in.typeOf(call.Fun); err == nil && len(call.Args) == 1 {
		v, err := in.eval(t, call.Args[0])
		if err != nil {
			return v, err
		}
		return convertTo(v, typ)
	}
	if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
		recv, err := in.eval(t, sel.X)
		if err != nil {
			return recv, err
		}
		m := recv.MethodByName(sel.Sel.Name)
		if !m.IsValid() && recv.CanAddr() {
			m = recv.Addr().MethodByName(sel.Sel.Name)
		}
		if !m.IsValid() {
			return m, fmt.Errorf("no method %s on %s", sel.Sel.Name, recv.Type())
		}
		var args []reflect.Value
		for i, a := range call.Args {
			v, err := in.eval(t, a)
			if err != nil {
				return v, err
			}
			if v, err = convertTo(v, m.Type().In(i)); err != nil {
				return v, err
			}
			args = append(args, v)
		}
		out := m.Call(args)
		if len(out) == 0 {
			return none, nil
		}
		return out[0], nil
	}
	return none, fmt.Errorf("%w: %s", errUnsupported, in.source(call.Fun))
}

func (in *conformanceInterpreter) appendCall(t *testing.T, call *ast.CallExpr) (reflect.Value, error) {
	base, err := in.eval(t, call.Args[0])
	if err != nil {
		return base, err
	}
	out := reflect.AppendSlice(reflect.MakeSlice(base.Type(), 0, base.Len()), base)
	for _, a := range call.Args[1:] {
		v, err := in.eval(t, a)
		if err != nil {
			return v, err
		}
		if call.Ellipsis.IsValid() {
			out = reflect.AppendSlice(out, v)
		} else {
			out = reflect.Append(out, v)
		}
	}
	return out, nil
}

// poke records a PokeServer(t, cs, kc, clientNS, clientPod, proto, host, port, tc, want).
func (in *conformanceInterpreter) poke(t *testing.T, call *ast.CallExpr) error {
	var a []string
	for _, i := range []int{3, 4, 5, 6} {
		s, err := in.strArg(t, call, i)
		if err != nil {
			return err
		}
		a = append(a, s)
	}
	port, err := in.eval(t, call.Args[7])
	if err != nil {
		return err
	}
	want, err := in.eval(t, call.Args[9])
	if err != nil {
		return err
	}
	host, err := netip.ParseAddr(a[3])
	if err != nil {
		return err
	}
	from := a[0] + "/" + a[1]
	if in.g.pods[from] == nil {
		return fmt.Errorf("no client pod %s on the ground", from)
	}
	in.probes++
	switch sctp := tnetns.Proto(a[2]) == tnetns.SCTP; {
	case sctp && !in.g.sctp:
		in.sctpSkipped++
		return nil
	case !sctp && in.g.sctpOnly:
		in.otherSkipped++
		return nil
	}
	in.pending = append(in.pending, probeCase{from: from, proto: tnetns.Proto(a[2]),
		target: netip.AddrPortFrom(host, uint16(port.Int())), want: want.Bool()})
	return nil
}
