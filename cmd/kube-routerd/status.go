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
		out, err := json.MarshalIndent(rep.Details[n], "  ", "  ")
		if err != nil {
			continue
		}
		fmt.Fprintf(w, "\n%s:\n  %s\n", n, strings.TrimSpace(string(out)))
	}
}
