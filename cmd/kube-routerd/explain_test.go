package main

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/netpol"
)

// verdictJSON is an /explain answer as a running daemon sends it: the source on
// another node, denied by the destination's isolation here.
const verdictJSON = `{
  "source": {"pod": "b/client", "ip": "10.244.2.5", "node": "node-b"},
  "destination": {"pod": "a/web", "ip": "10.244.1.7", "node": "node-a"},
  "protocol": "tcp", "port": 8080, "family": 4,
  "egress": {"pod": "b/client", "enforcedOn": "node-b", "thisNode": false, "tier": "allowed by policy", "allowed": true,
    "policies": ["b/egress"], "allowedBy": [{"policy": "b/egress", "rule": "egress/1", "peer": "all pods in namespaces team=a", "port": "TCP 8000:9000"}]},
  "ingress": {"pod": "a/web", "enforcedOn": "node-a", "thisNode": true, "tier": "denied by isolation", "allowed": false,
    "policies": ["a/deny", "a/from-frontend"]},
  "allowed": false
}`

// explainDaemon serves /explain like a daemon and returns a config file pointing at it
// and the query it last got.
func explainDaemon(t *testing.T) (string, *string) {
	t.Helper()
	var query string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/explain" {
			http.NotFound(w, r)
			return
		}
		query = r.URL.RawQuery
		if r.URL.Query().Get("src") == "a/nope" {
			http.Error(w, "unknown pod: a/nope (not found, finished, or without an IP yet)", http.StatusNotFound)
			return
		}
		fmt.Fprint(w, verdictJSON)
	}))
	t.Cleanup(srv.Close)
	cfg := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[health]\nlisten = %q\n", strings.TrimPrefix(srv.URL, "http://"))), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg, &query
}

func TestExplainPrintsBothSidesForAPerson(t *testing.T) {
	cfg, query := explainDaemon(t)
	var out, errOut bytes.Buffer
	if code := runMain([]string{"explain", "b/client", "a/web", "8080/tcp", "--config", cfg}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if want := "dst=a%2Fweb&port=8080%2Ftcp&src=b%2Fclient"; *query != want {
		t.Errorf("query %q, want %q", *query, want)
	}
	for _, want := range []string{
		"b/client -> a/web 8080/TCP (IPv4 10.244.2.5 -> 10.244.1.7): DENIED",
		"egress of b/client: allowed, allowed by policy",
		"enforced on node node-b, as that node compiles it",
		"allowed by b/egress egress/1: peer all pods in namespaces team=a, port TCP 8000:9000",
		"ingress of a/web: denied, denied by isolation",
		"enforced on this node (node-a), from what it applied",
		"isolated by: a/deny, a/from-frontend",
		"no rule of these policies allows this peer and port",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestExplainJSONAndErrors(t *testing.T) {
	cfg, _ := explainDaemon(t)
	var out, errOut bytes.Buffer
	if code := runMain([]string{"explain", "--config", cfg, "-o", "json", "b/client", "a/web", "8080"}, &out, &errOut); code != 0 || out.String() != verdictJSON {
		t.Errorf("-o json: exit %d, %q (%s)", code, out.String(), errOut.String())
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"b/client", "a/web"}, 2, "got 2 arguments"},
		{[]string{"b/client", "a/web", "80/icmp"}, 2, `protocol "icmp"`},
		{[]string{"-o", "yaml", "b/client", "a/web", "80"}, 2, "want text or json"},
		{[]string{"a/nope", "a/web", "80"}, 1, "unknown pod: a/nope"},
	} {
		out.Reset()
		errOut.Reset()
		args := append([]string{"explain", "--config", cfg}, tc.args...)
		if code := runMain(args, &out, &errOut); code != tc.code || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut.String(), tc.code, tc.want)
		}
	}
}

func TestExplainPrintsTheClusterNetworkPolicyRuleThatDecided(t *testing.T) {
	var out bytes.Buffer
	writeVerdict(&out, netpol.Verdict{
		Source: netpol.Endpoint{Pod: "b/client"}, Destination: netpol.Endpoint{Pod: "a/web"}, Protocol: "tcp", Port: 80, Family: 4,
		Egress: netpol.Side{Pod: "b/client", Tier: netpol.TierNotIsolated, Allowed: true},
		Ingress: netpol.Side{Pod: "a/web", Tier: netpol.TierAdminDeny, ClusterRules: []netpol.RuleMatch{
			{Policy: "protect-a", Rule: "ingress/1 (deny-team-b)", Peer: "all pods in namespaces team=b", Port: "TCP 80", Tier: "Admin", Action: "Deny"},
		}},
	})
	for _, want := range []string{
		"ingress of a/web: denied, denied by the Admin tier",
		"Admin tier cluster network policy protect-a ingress/1 (deny-team-b): Deny, peer all pods in namespaces team=b, port TCP 80",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
