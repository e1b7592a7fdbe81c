package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/kube-routerd/kube-routerd/internal/lballoc"
)

// writeLoadBalancer prints the allocator: who allocates, the pools, each Service's
// addresses and what it cannot do.
func writeLoadBalancer(w io.Writer, d lballoc.Details) {
	role := "standing by"
	if d.Leading {
		role = "allocating"
	}
	leader := d.Leader
	if leader == "" {
		leader = "none seen yet"
	}
	fmt.Fprintf(w, "load-balancer allocator: %s (Lease %s, leader %s)\n", role, d.Lease, leader)
	for _, p := range d.Pools {
		fmt.Fprintf(w, "  %s pools %s: %d of %.0f addresses used\n", p.Family, strings.Join(p.Pools, ", "), p.Used, p.Size)
	}
	services := make([]string, 0, len(d.Services))
	for s := range d.Services {
		services = append(services, s)
	}
	sort.Strings(services)
	for _, s := range services {
		fmt.Fprintf(w, "  %s: %s\n", s, strings.Join(d.Services[s], ", "))
	}
	held := make([]string, 0, len(d.Held))
	for ip := range d.Held {
		held = append(held, ip)
	}
	sort.Strings(held)
	for _, ip := range held {
		fmt.Fprintf(w, "  %s held by %s (not ours to assign)\n", ip, d.Held[ip])
	}
	for _, p := range d.Problems {
		fmt.Fprintf(w, "  %s %s: %s\n", p.Service, p.Reason, p.Message)
	}
}
