package routing

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

// reconcileKernel makes our routes, tunnels and VXLAN peers in the kernel equal to
// the desired ones, and opens the FOU ports they need, touching only what differs. A
// FOU port is never closed here: the kernel cannot say whose it is, and an open one
// only decapsulates what is sent to it (`kube-routerd cleanup` closes ours). keep
// spares an undesired route (and its tunnel or peer) for now: after a restart, routes
// to nodes we have not heard from yet stay until their session is up. One failing
// object does not stop the others. Routes whose next hop is off every connected
// network are returned as unreachable, not as errors: no retry can install them.
func reconcileKernel(k route.Interface, want route.State, keep func(route.Route) bool, log *slog.Logger) (installed int, unreachable []route.Route, err error) {
	var errs []error
	if len(want.FOUPorts) > 0 {
		open, err := k.FOUPorts()
		if err != nil {
			return 0, nil, err
		}
		for _, p := range want.FOUPorts {
			if slices.Contains(open, p) {
				continue
			}
			if err := k.AddFOUPort(p); err != nil {
				errs = append(errs, err)
				continue
			}
			log.Info("opened FOU port", "port", p.Port, "ipv6", p.V6)
		}
	}

	haveTunnels, err := k.Tunnels()
	if err != nil {
		return 0, nil, errors.Join(append(errs, err)...)
	}
	current := map[string]route.Tunnel{}
	for _, t := range haveTunnels {
		current[t.Name] = t
	}
	tunnelOK := map[string]bool{}
	for _, t := range want.Tunnels {
		if have, ok := current[t.Name]; ok && have == t {
			tunnelOK[t.Name] = true
			continue
		}
		if err := k.EnsureTunnel(t); err != nil {
			errs = append(errs, err)
			continue
		}
		tunnelOK[t.Name] = true
		log.Info("created tunnel", "tunnel", t.String())
	}

	havePeers, err := k.VXLANPeers()
	if err != nil {
		return 0, nil, errors.Join(append(errs, err)...)
	}
	// Peers are known by device and node: a listed peer whose entries are wrong (no
	// MAC) is replaced, not deleted.
	peerKey := func(p route.VXLANPeer) route.VXLANPeer { return route.VXLANPeer{Device: p.Device, Node: p.Node} }
	// By device and gateway: the peer a kept route goes through.
	type gatewayKey struct {
		device  string
		gateway netip.Addr
	}
	listed := make(map[route.VXLANPeer]bool, len(havePeers))
	byGateway := make(map[gatewayKey]route.VXLANPeer, len(havePeers))
	for _, p := range havePeers {
		listed[p] = true
		byGateway[gatewayKey{p.Device, p.Gateway()}] = p
	}
	peerOK := map[route.VXLANPeer]bool{}
	for _, p := range want.Peers {
		if !tunnelOK[p.Device] {
			continue
		}
		if !listed[p] {
			if err := k.ReplaceVXLANPeer(p); err != nil {
				errs = append(errs, err)
				continue
			}
			log.Debug("added VXLAN peer", "peer", p.String())
		}
		peerOK[peerKey(p)] = true
	}

	haveRoutes, err := k.Routes()
	if err != nil {
		return 0, nil, errors.Join(append(errs, err)...)
	}
	byDst := map[netip.Prefix]route.Route{}
	for _, r := range haveRoutes {
		byDst[r.Dst] = r
	}
	wanted := map[netip.Prefix]bool{}
	for _, r := range want.Routes {
		wanted[r.Dst] = true
		if r.Device != "" && !tunnelOK[r.Device] {
			continue // its tunnel failed; already reported
		}
		if have, ok := byDst[r.Dst]; ok && have == r {
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
		if wanted[r.Dst] {
			continue
		}
		if keep(r) {
			keptTunnels[r.Device] = true
			if p, ok := byGateway[gatewayKey{r.Device, r.Gateway}]; ok {
				peerOK[peerKey(p)] = true
			}
			continue
		}
		if err := k.DeleteRoute(r); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Debug("removed route", "route", r.String())
	}
	for _, p := range havePeers {
		deviceGoes := !tunnelOK[p.Device] && !keptTunnels[p.Device] // and its entries with it
		if peerOK[peerKey(p)] || deviceGoes {
			continue
		}
		if err := k.DeleteVXLANPeer(p); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Debug("removed VXLAN peer", "peer", p.String())
	}
	for _, t := range haveTunnels {
		if tunnelOK[t.Name] || keptTunnels[t.Name] {
			continue
		}
		if err := k.DeleteTunnel(t.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("removed tunnel", "tunnel", t.String())
	}
	return installed, unreachable, errors.Join(errs...)
}

// driftDetector remembers what the last fully successful reconcile left in the
// kernel, so that the next sync can count the routes, tunnels and peers someone else
// removed or changed meanwhile (which that sync's reconcile then repairs).
type driftDetector struct {
	last *route.State
}

// count returns how many of the objects wanted now, and left in the kernel the same
// way last time, the kernel no longer holds as we left them.
func (d *driftDetector) count(k route.Interface, want route.State) (int, error) {
	if d.last == nil {
		return 0, nil
	}
	var have route.State
	var err error
	if have.Routes, err = k.Routes(); err != nil {
		return 0, err
	}
	if have.Tunnels, err = k.Tunnels(); err != nil {
		return 0, err
	}
	if have.Peers, err = k.VXLANPeers(); err != nil {
		return 0, err
	}
	return drifted(want.Routes, d.last.Routes, have.Routes, func(r route.Route) netip.Prefix { return r.Dst }) +
		drifted(want.Tunnels, d.last.Tunnels, have.Tunnels, func(t route.Tunnel) string { return t.Name }) +
		drifted(want.Peers, d.last.Peers, have.Peers, func(p route.VXLANPeer) route.VXLANPeer { return route.VXLANPeer{Device: p.Device, Node: p.Node} }), nil
}

// drifted counts the objects of want that last left in the kernel as they are now
// wanted, and that the kernel (have) no longer holds that way; key names an object.
func drifted[T comparable, K comparable](want, last, have []T, key func(T) K) int {
	lastBy := make(map[K]T, len(last))
	for _, o := range last {
		lastBy[key(o)] = o
	}
	haveBy := make(map[K]T, len(have))
	for _, o := range have {
		haveBy[key(o)] = o
	}
	n := 0
	for _, o := range want {
		if l, ok := lastBy[key(o)]; ok && l == o && haveBy[key(o)] != o {
			n++
		}
	}
	return n
}

// remember records what a reconcile left in the kernel; after a failed one the
// kernel's state is unknown and nothing counts as drift next time.
func (d *driftDetector) remember(left route.State, ok bool) {
	d.last = nil
	if ok {
		d.last = &left
	}
}
