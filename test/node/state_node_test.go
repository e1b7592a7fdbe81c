//go:build node

package node

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// cniConfigDir is where kubelet's container runtime reads CNI configurations.
const cniConfigDir = "/etc/cni/net.d"

// builtinChain is the declaration of a chain every iptables table has (a table
// appears with them once anything used it, and cleanup cannot remove them).
var builtinChain = regexp.MustCompile(`^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) `)

var (
	// kernelRoute matches routes the kernel adds and drops by itself: subnet-router
	// anycast while IPv6 forwarding is on (the daemon turns it on and cleanup leaves
	// sysctls alone), and router advertisements' routes, which forwarding stops.
	kernelRoute = regexp.MustCompile(`^anycast |proto ra `)
	// routeExpiry is the remaining lifetime of an autoconfigured route.
	routeExpiry = regexp.MustCompile(`expires \d+sec `)
)

// fallbackTunnels are the devices the kernel makes in every namespace when the ipip
// and ip6_tunnel modules load; nobody can delete them.
var fallbackTunnels = map[string]bool{"tunl0": true, "ip6tnl0": true}

// nodeState is what kube-routerd may change in the machine's own network namespace and
// files, as text to compare: iptables chains and rules (nft and legacy, both
// families), ipsets, IPVS services, links, addresses, routes and rules of every table,
// and the CNI configuration directory. Counters, times and the kernel's own chains and
// devices are left out, so an idle node compares equal to itself however many modules
// were loaded meanwhile. It reads IPVS from /proc, so taking it loads no module.
func nodeState(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	section := func(title, text string) {
		fmt.Fprintf(&b, "# %s\n%s\n", title, strings.TrimSpace(text))
	}
	for _, save := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		var kept []string
		for _, l := range strings.Split(sh(t, save), "\n") {
			if strings.HasPrefix(l, "-") || strings.HasPrefix(l, ":") && !builtinChain.MatchString(l) {
				kept = append(kept, l)
			}
		}
		section(save, strings.Join(kept, "\n"))
	}
	section("ipset list -n", sortedLines(sh(t, "ipset", "list", "-n")))
	ipvs, err := os.ReadFile("/proc/net/ip_vs")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	// Three header lines, then the services and their destinations.
	if lines := strings.SplitN(string(ipvs), "\n", 4); len(lines) == 4 {
		section("/proc/net/ip_vs", lines[3])
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		if !fallbackTunnels[l.Attrs().Name] {
			names = append(names, l.Attrs().Name+" "+l.Type())
		}
	}
	section("links", sortedLines(strings.Join(names, "\n")))
	var addrs []string
	for _, l := range strings.Split(sh(t, "ip", "-o", "addr", "show"), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && !fallbackTunnels[f[1]] {
			addrs = append(addrs, f[1]+" "+f[3])
		}
	}
	section("addresses", sortedLines(strings.Join(addrs, "\n")))
	for _, family := range []string{"-4", "-6"} {
		var routes []string
		for _, r := range strings.Split(sh(t, "ip", family, "route", "show", "table", "all"), "\n") {
			if !kernelRoute.MatchString(r) {
				routes = append(routes, routeExpiry.ReplaceAllString(r, ""))
			}
		}
		section("ip "+family+" route show table all", sortedLines(strings.Join(routes, "\n")))
		section("ip "+family+" rule", sh(t, "ip", family, "rule"))
	}
	entries, err := os.ReadDir(cniConfigDir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	names = names[:0]
	for _, e := range entries {
		names = append(names, e.Name())
	}
	section(cniConfigDir, strings.Join(names, "\n"))
	return b.String()
}

// sortedLines sorts the lines of text, for listings whose order means nothing.
func sortedLines(text string) string {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// stateDiff lists the lines only in before ("-") or only in after ("+"), under the
// section they are in.
func stateDiff(before, after string) string {
	count := func(text string) map[string]int {
		m := map[string]int{}
		section := ""
		for _, l := range strings.Split(text, "\n") {
			if strings.HasPrefix(l, "# ") {
				section = l
				continue
			}
			m[section+"\n"+l]++
		}
		return m
	}
	b, a := count(before), count(after)
	var out []string
	for k, n := range b {
		if a[k] < n {
			out = append(out, "- "+strings.Replace(k, "\n", ": ", 1))
		}
	}
	for k, n := range a {
		if b[k] < n {
			out = append(out, "+ "+strings.Replace(k, "\n", ": ", 1))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}
