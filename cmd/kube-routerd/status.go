package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/lballoc"
	"github.com/kube-routerd/kube-routerd/internal/netpol"
	"github.com/kube-routerd/kube-routerd/internal/podnet"
	"github.com/kube-routerd/kube-routerd/internal/proxy"
	"github.com/kube-routerd/kube-routerd/internal/routing"
	"github.com/kube-routerd/kube-routerd/internal/takeover"
)

// printStatus asks the running daemon (its health listener) for its status report
// and prints it for a person, or as JSON.
func printStatus(cfg config.Config, asJSON bool, stdout, stderr io.Writer) int {
	if cfg.Health.Listen == "" {
		fmt.Fprintln(stderr, "status needs health.listen to be set in the config")
		return 1
	}
	url := "http://" + string(cfg.Health.Listen) + "/status"
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(stderr, "cannot reach kube-routerd at %s: %v (is the service running?)\n", url, err)
		return 1
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "kube-routerd at %s answered %s: %v\n", url, resp.Status, err)
		return 1
	}
	if asJSON {
		_, _ = stdout.Write(body)
		return 0
	}
	var rep daemon.StatusReport
	if err := json.Unmarshal(body, &rep); err != nil {
		fmt.Fprintf(stderr, "cannot decode status from %s: %v\n", url, err)
		return 1
	}
	writeStatus(stdout, rep)
	return 0
}

// writeStatus prints the report: one line per controller, then each controller's
// details in its own section.
func writeStatus(w io.Writer, rep daemon.StatusReport) {
	state := "starting (not all controllers synced)"
	if rep.Ready {
		state = "ready"
	}
	fmt.Fprintf(w, "kube-routerd: %s\n\n", state)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTROLLER\tSTATE\tLAST SYNC\tSYNC TIME\tSYNCS\tERRORS\tSUMMARY")
	for _, c := range rep.Controllers {
		st := "ok"
		switch {
		case !c.Alive:
			st = "STUCK"
		case c.LastError != "":
			st = "error"
		case !c.Ready:
			st = "syncing"
		}
		last := "never"
		if !c.LastSync.IsZero() {
			last = rep.Time.Sub(c.LastSync).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1fms\t%d\t%d\t%s\n", c.Name, st, last, c.LastSyncMilli, c.Syncs, c.Errors, c.Summary)
	}
	_ = tw.Flush()
	for _, c := range rep.Controllers {
		if c.LastError != "" {
			fmt.Fprintf(w, "\n%s last error: %s\n", c.Name, c.LastError)
		}
	}
	names := make([]string, 0, len(rep.Details))
	for n := range rep.Details {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintln(w)
		if !writeDetails(w, n, rep.Details[n]) {
			writeJSONDetails(w, n, rep.Details[n])
		}
	}
}

// writeDetails prints the details of a controller it knows; false means it does not
// know the controller or its details do not decode (a newer daemon, say).
func writeDetails(w io.Writer, name string, raw any) bool {
	switch name {
	case "proxy":
		var d proxy.Details
		if !redecode(raw, &d) {
			return false
		}
		fmt.Fprintf(w, "service proxy: %d services as %d IPVS virtual services, %d destinations (%d draining)\n",
			d.Services, d.VirtualServices, d.Destinations, d.Draining)
		if len(d.NodePortAddresses) > 0 {
			addrs := make([]string, len(d.NodePortAddresses))
			for i, a := range d.NodePortAddresses {
				addrs[i] = a.String()
			}
			fmt.Fprintf(w, "  node ports on: %s\n", strings.Join(addrs, ", "))
		}
		fmt.Fprintf(w, "  kernel writes in the last sync: %d\n", d.LastSyncWrites)
		services := make([]string, 0, len(d.RefusedAddresses))
		for svc := range d.RefusedAddresses {
			services = append(services, svc)
		}
		sort.Strings(services)
		for _, svc := range services {
			fmt.Fprintf(w, "  refused, outside the allowed ranges, in %s: %s\n", svc, strings.Join(d.RefusedAddresses[svc], ", "))
		}
		for _, p := range d.HealthCheckNodePorts {
			if p.Error != "" {
				fmt.Fprintf(w, "  health check node port %d of %s: not open (retried at each sync): %s\n", p.Port, p.Service, p.Error)
			} else {
				fmt.Fprintf(w, "  health check node port %d of %s: %d local endpoints\n", p.Port, p.Service, p.LocalEndpoints)
			}
		}
		if t := d.IPVSTimeouts; t.TCP.Duration != 0 {
			fmt.Fprintf(w, "  IPVS timeouts: tcp %s, tcpfin %s, udp %s\n", t.TCP, t.TCPFin, t.UDP)
		}
	case "netpol":
		var d netpol.Details
		if !redecode(raw, &d) {
			return false
		}
		fmt.Fprintf(w, "network policy: %d policies isolate %d local pods: %d rules, %d sets with %d entries\n",
			d.Policies, d.Pods, d.Rules, d.Sets, d.Entries)
		if d.ClusterPolicies > 0 {
			fmt.Fprintf(w, "  %d cluster network policies\n", d.ClusterPolicies)
		}
		if d.EnforcedPods > 0 {
			fmt.Fprintf(w, "  %d local pods in force; other addresses of the pod CIDRs are isolated\n", d.EnforcedPods)
		}
		objs := make([]string, 0, len(d.Problems))
		for o := range d.Problems {
			objs = append(objs, o)
		}
		sort.Strings(objs)
		for _, o := range objs {
			for _, p := range d.Problems[o] {
				fmt.Fprintf(w, "  skipped in %s: %s\n", o, p)
			}
		}
	case "routing":
		var d routing.Details
		if !redecode(raw, &d) {
			return false
		}
		writeRouting(w, d)
	case "podnet":
		var d podnet.Details
		if !redecode(raw, &d) {
			return false
		}
		writePodNetwork(w, d)
	case "takeover":
		var d takeover.Details
		if !redecode(raw, &d) {
			return false
		}
		writeTakeover(w, d)
	case "lballoc":
		var d lballoc.Details
		if !redecode(raw, &d) {
			return false
		}
		writeLoadBalancer(w, d)
	default:
		return false
	}
	return true
}

// writeTakeover prints what became of kube-router's objects, one line each.
func writeTakeover(w io.Writer, d takeover.Details) {
	if !d.Found {
		fmt.Fprintln(w, "takeover from kube-router: nothing of kube-router's found")
		return
	}
	fmt.Fprintf(w, "takeover from kube-router: %d adopted, %d removed, %d still kept\n", len(d.Adopted), len(d.Removed), len(d.Waiting))
	for _, group := range []struct {
		what  string
		items []string
	}{{"adopted", d.Adopted}, {"removed", d.Removed}, {"kept for now", d.Waiting}, {"failed", d.Errors}} {
		for _, item := range group.items {
			fmt.Fprintf(w, "  %s: %s\n", group.what, item)
		}
	}
}

func writeRouting(w io.Writer, d routing.Details) {
	fmt.Fprintf(w, "routing: node %s (%s), AS %d, pod CIDRs %s\n", d.Node, d.Address, d.ASN, listOrNone(d.PodCIDRs))
	if len(d.Peers) == 0 {
		fmt.Fprintln(w, "  no BGP peers")
	} else {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  BGP PEER\tASN\tNODE\tSTATE\tFLAPS\tBFD")
		for _, p := range d.Peers {
			node := p.Node
			if node == "" {
				node = "(external)"
			}
			if p.RRClient {
				node += " (route reflector client)"
			}
			bfd := p.BFD
			if bfd == "" {
				bfd = "-" // not asked for
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%d\t%s\n", p.Address, p.ASN, node, p.State, p.Flaps, bfd)
		}
		_ = tw.Flush()
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  announced to nodes:       %s\n", listOrNone(d.Announced))
	fmt.Fprintf(w, "  announced to external:    %s\n", listOrNone(d.ToExternal))
	fmt.Fprintln(w, "  routes installed:")
	if len(d.Routes) == 0 {
		fmt.Fprintln(w, "    none")
	}
	for _, r := range d.Routes {
		fmt.Fprintf(w, "    %s\n", r)
	}
	for _, t := range d.Tunnels {
		fmt.Fprintf(w, "  tunnel: %s\n", t)
	}
}

func writePodNetwork(w io.Writer, d podnet.Details) {
	fmt.Fprintf(w, "pod network: pod CIDRs %s, pod MTU %d (link %d)\n", listOrNone(d.PodCIDRs), d.MTU, d.LinkMTU)
	switch d.CNIState {
	case podnet.CNIForeign:
		fmt.Fprintf(w, "  CNI config %s: NOT WRITTEN, the file there is not kube-routerd's\n", d.CNIFile)
	default:
		fmt.Fprintf(w, "  CNI config %s: %s\n", d.CNIFile, d.CNIState)
	}
	for _, f := range d.Shadowed {
		fmt.Fprintf(w, "  CNI config %s sorts first: the container runtime uses it, not ours\n", f)
	}
	if len(d.Egress) == 0 {
		fmt.Fprintln(w, "  egress masquerade: off")
	}
	for _, e := range d.Egress {
		fmt.Fprintf(w, "  egress masquerade %s: from %s to outside %d cluster destinations\n", e.Family, strings.Join(e.Sources, ", "), e.ClusterDestinations)
	}
	if d.Error != "" {
		fmt.Fprintf(w, "  last error: %s\n", d.Error)
	}
}

func writeJSONDetails(w io.Writer, name string, raw any) {
	out, err := json.MarshalIndent(raw, "  ", "  ")
	if err != nil {
		return
	}
	fmt.Fprintf(w, "%s:\n  %s\n", name, strings.TrimSpace(string(out)))
}

// redecode turns the generic JSON value of a report back into a typed value.
func redecode(raw any, into any) bool {
	b, err := json.Marshal(raw)
	if err != nil {
		return false
	}
	return json.Unmarshal(b, into) == nil
}

func listOrNone(items []string) string {
	if len(items) == 0 {
		return "none"
	}
	return strings.Join(items, ", ")
}
