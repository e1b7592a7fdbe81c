package routing

import (
	"errors"
	"log/slog"
	"net/netip"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

// reconcileKernel makes our routes and tunnels in the kernel equal to the desired
// ones, touching only what differs. keep spares an undesired route (and its tunnel)
// for now: after a restart, routes to nodes we have not heard from yet stay until
// their session is up. One failing route or tunnel does not stop the others. Routes
// whose next hop is off every connected network are returned as unreachable, not as
// errors: no retry can install them.
func reconcileKernel(k route.Interface, routes []route.Route, tunnels []route.Tunnel, keep func(route.Route) bool, log *slog.Logger) (installed int, unreachable []route.Route, err error) {
	var errs []error
	haveTunnels, err := k.Tunnels()
	if err != nil {
		return 0, nil, err
	}
	current := map[string]route.Tunnel{}
	for _, t := range haveTunnels {
		current[t.Name] = t
	}
	tunnelOK := map[string]bool{}
	for _, t := range tunnels {
		if have, ok := current[t.Name]; ok && have == t {
			tunnelOK[t.Name] = true
			continue
		}
		if err := k.EnsureTunnel(t); err != nil {
			errs = append(errs, err)
			continue
		}
		tunnelOK[t.Name] = true
		log.Info("created tunnel", "tunnel", t.Name, "remote", t.Remote)
	}

	haveRoutes, err := k.Routes()
	if err != nil {
		return 0, nil, errors.Join(append(errs, err)...)
	}
	byDst := map[string]route.Route{}
	for _, r := range haveRoutes {
		byDst[r.Dst.String()] = r
	}
	want := map[string]bool{}
	for _, r := range routes {
		want[r.Dst.String()] = true
		if r.Device != "" && !tunnelOK[r.Device] {
			continue // its tunnel failed; already reported
		}
		if have, ok := byDst[r.Dst.String()]; ok && have == r {
			installed++
			continue
		}
		if err := k.ReplaceRoute(r); errors.Is(err, route.ErrNextHopUnreachable) {
			unreachable = append(unreachable, r)
			continue
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		installed++
		log.Debug("installed route", "route", r.String())
	}
	keptTunnels := map[string]bool{}
	for _, r := range haveRoutes {
		if want[r.Dst.String()] {
			continue
		}
		if keep(r) {
			keptTunnels[r.Device] = true
			continue
		}
		if err := k.DeleteRoute(r); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Debug("removed route", "route", r.String())
	}
	for _, t := range haveTunnels {
		if tunnelOK[t.Name] || keptTunnels[t.Name] {
			continue
		}
		if err := k.DeleteTunnel(t.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("removed tunnel", "tunnel", t.Name, "remote", t.Remote)
	}
	return installed, unreachable, errors.Join(errs...)
}

// driftDetector remembers what the last fully successful reconcile left in the
// kernel, so that the next sync can count the routes and tunnels someone else removed
// or changed meanwhile (which that sync's reconcile then repairs).
type driftDetector struct {
	routes  map[netip.Prefix]route.Route
	tunnels map[string]route.Tunnel
}

// count returns how many of the routes and tunnels wanted now, and left in the kernel
// the same way last time, the kernel no longer holds as we left them.
func (d *driftDetector) count(k route.Interface, routes []route.Route, tunnels []route.Tunnel) (int, error) {
	if d.routes == nil {
		return 0, nil
	}
	haveRoutes, err := k.Routes()
	if err != nil {
		return 0, err
	}
	haveTunnels, err := k.Tunnels()
	if err != nil {
		return 0, err
	}
	byDst := make(map[netip.Prefix]route.Route, len(haveRoutes))
	for _, r := range haveRoutes {
		byDst[r.Dst] = r
	}
	byName := make(map[string]route.Tunnel, len(haveTunnels))
	for _, t := range haveTunnels {
		byName[t.Name] = t
	}
	n := 0
	for _, r := range routes {
		if last, ok := d.routes[r.Dst]; ok && last == r && byDst[r.Dst] != r {
			n++
		}
	}
	for _, t := range tunnels {
		if last, ok := d.tunnels[t.Name]; ok && last == t && byName[t.Name] != t {
			n++
		}
	}
	return n, nil
}

// remember records what a reconcile left in the kernel; after a failed one the
// kernel's state is unknown and nothing counts as drift next time.
func (d *driftDetector) remember(routes []route.Route, tunnels []route.Tunnel, ok bool) {
	d.routes, d.tunnels = nil, nil
	if !ok {
		return
	}
	d.routes = make(map[netip.Prefix]route.Route, len(routes))
	for _, r := range routes {
		d.routes[r.Dst] = r
	}
	d.tunnels = make(map[string]route.Tunnel, len(tunnels))
	for _, t := range tunnels {
		d.tunnels[t.Name] = t
	}
}
