package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/netpol"
)

// printExplain asks the running daemon (its health listener) which policies decide
// a connection, args being source pod, destination pod, port[/proto] and optionally
// the family, and prints the verdict for a person, or as JSON.
func printExplain(cfg config.Config, args []string, asJSON bool, stdout, stderr io.Writer) int {
	if len(args) < 3 || len(args) > 4 {
		fmt.Fprintf(stderr, "explain wants NS/SRC-POD NS/DST-POD PORT[/PROTO] [4|6], got %d arguments\n%s", len(args), usage)
		return 2
	}
	if _, _, err := netpol.ParsePortProto(args[2]); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if cfg.Health.Listen == "" {
		fmt.Fprintln(stderr, "explain needs health.listen to be set in the config")
		return 1
	}
	q := url.Values{"src": {args[0]}, "dst": {args[1]}, "port": {args[2]}}
	if len(args) == 4 {
		q.Set("family", args[3])
	}
	u := "http://" + string(cfg.Health.Listen) + "/explain?" + q.Encode()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(u)
	if err != nil {
		fmt.Fprintf(stderr, "cannot reach kube-routerd at %s: %v (is the service running?)\n", cfg.Health.Listen, err)
		return 1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "reading the answer of kube-routerd: %v\n", err)
		return 1
	case resp.StatusCode == http.StatusNotFound && !strings.HasPrefix(string(body), netpol.ErrUnknownPod.Error()):
		fmt.Fprintln(stderr, "this kube-routerd does not explain policies (network policy disabled, or an older version)")
		return 1
	case resp.StatusCode != http.StatusOK:
		fmt.Fprintf(stderr, "kube-routerd: %s", body)
		return 1
	}
	if asJSON {
		_, _ = stdout.Write(body)
		return 0
	}
	var v netpol.Verdict
	if err := json.Unmarshal(body, &v); err != nil {
		fmt.Fprintf(stderr, "cannot decode the verdict: %v\n", err)
		return 1
	}
	writeVerdict(stdout, v)
	return 0
}

// writeVerdict prints the verdict: the outcome, then each side with the node that
// enforces it and what decided it.
func writeVerdict(w io.Writer, v netpol.Verdict) {
	outcome := "DENIED"
	if v.Allowed {
		outcome = "ALLOWED"
	}
	fmt.Fprintf(w, "%s -> %s %d/%s (IPv%d %s -> %s): %s\n",
		v.Source.Pod, v.Destination.Pod, v.Port, strings.ToUpper(v.Protocol), v.Family, v.Source.IP, v.Destination.IP, outcome)
	writeSide(w, "egress", v.Egress)
	writeSide(w, "ingress", v.Ingress)
}

func writeSide(w io.Writer, dir string, s netpol.Side) {
	where := "on node " + s.EnforcedOn + ", as that node compiles it (ask its own kube-routerd for what it applied)"
	if s.ThisNode {
		where = "on this node (" + s.EnforcedOn + "), from what it applied"
	}
	verdict := "denied"
	if s.Allowed {
		verdict = "allowed"
	}
	fmt.Fprintf(w, "\n%s of %s: %s, %s\n  enforced %s\n", dir, s.Pod, verdict, s.Tier, where)
	switch {
	case s.BetaIsolation:
		fmt.Fprintln(w, "  isolated by its namespace's net.beta.kubernetes.io/network-policy annotation")
	case len(s.Policies) > 0:
		fmt.Fprintf(w, "  isolated by: %s\n", strings.Join(s.Policies, ", "))
	}
	for _, r := range s.ClusterRules {
		fmt.Fprintf(w, "  %s tier cluster network policy %s %s: %s, peer %s, port %s\n", r.Tier, r.Policy, r.Rule, r.Action, r.Peer, r.Port)
	}
	for _, r := range s.AllowedBy {
		fmt.Fprintf(w, "  allowed by %s %s: peer %s, port %s\n", r.Policy, r.Rule, r.Peer, r.Port)
	}
	if s.Tier == netpol.TierIsolation {
		fmt.Fprintln(w, "  no rule of these policies allows this peer and port")
	}
}
