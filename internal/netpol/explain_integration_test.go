//go:build integration

package netpol

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"

	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestExplainEndpoint asks the controller's /explain handler, over HTTP, about pods
// a real API server knows, with a policy the real kernel enforces.
func TestExplainEndpoint(t *testing.T) {
	c := startCluster(t)
	fromB := policy(c.nsA, "from-b-http", map[string]string{"app": "a"}, ingress(port(tcp, intstr.FromString("http")), pods(map[string]string{"app": "b"})))
	c.setPolicies(t, fromB)
	c.waitMatrix(t, "named port from app=b", c.expect(func(from, to string, tg target) bool {
		return to != "A/a" || (from == "A/b" && tg.proto == tnetns.TCP && tg.port == 80)
	}))

	mux := http.NewServeMux()
	for pattern, h := range c.ctrl.Handlers() {
		mux.HandleFunc(pattern, h)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	get := func(src, dst, port string) (int, Verdict) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/explain?" + url.Values{"src": {src}, "dst": {dst}, "port": {port}}.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v Verdict
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode, v
	}
	a, b, cc := c.nsA+"/a", c.nsA+"/b", c.nsB+"/c"
	code, v := get(b, a, "80/TCP")
	want := RuleMatch{Policy: c.nsA + "/from-b-http", Rule: "ingress/0", Peer: "pods app=b in namespace " + c.nsA, Port: "TCP/http (named port)"}
	if code != http.StatusOK || !v.Allowed || v.Ingress.Tier != TierPolicy || !slices.Equal(v.Ingress.AllowedBy, []RuleMatch{want}) ||
		!v.Ingress.ThisNode || v.Ingress.EnforcedOn != c.node.Name || v.Egress.Tier != TierNotIsolated {
		t.Errorf("%s -> %s 80/TCP: %d %+v", b, a, code, v)
	}
	code, v = get(cc, a, "80/udp")
	if code != http.StatusOK || v.Allowed || v.Ingress.Tier != TierIsolation || !slices.Equal(v.Ingress.Policies, []string{c.nsA + "/from-b-http"}) {
		t.Errorf("%s -> %s 80/udp: %d %+v", cc, a, code, v)
	}
	if code, _ := get(c.nsA+"/nope", a, "80"); code != http.StatusNotFound {
		t.Errorf("unknown pod: %d, want 404", code)
	}
	if code, _ := get(b, a, "80/icmp"); code != http.StatusBadRequest {
		t.Errorf("bad protocol: %d, want 400", code)
	}
}
