package routing

import (
	"errors"
	"log/slog"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

// reconcileKernel makes our routes and tunnels in the kernel equal to the desired
// ones, touching only what differs. keep spares an undesired route (and its tunnel)
// for now: after a restart, routes to nodes we have not heard from yet stay until
// their session is up. One failing route or tunnel does not stop the others.
func reconcileKernel(k route.Interface, routes []route.Route, tunnels []route.Tunnel, keep func(route.Route) bool, log *slog.Logger) (installed int, err error) {
	var errs []error
	haveTunnels, err := k.Tunnels()
	if err != nil {
		return 0, err
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
		return 0, errors.Join(append(errs, err)...)
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
		if err := k.ReplaceRoute(r); err != nil {
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
	return installed, errors.Join(errs...)
}
