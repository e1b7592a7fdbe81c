package routing

import (
	"context"
	"errors"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

// Cleanup removes every route, tunnel and VXLAN peer the routing controller created
// in this network namespace (`kube-routerd cleanup`), and the FOU receive port cfg
// names (or would, with encapsulation FOU), and nothing else.
func Cleanup(ctx context.Context, cfg config.Routing) error {
	return cleanupKernel(route.Netlink{}, cfg)
}

func cleanupKernel(k route.Interface, cfg config.Routing) error {
	var errs []error
	// A FOU port carries no owner: only the configured one is ours to close, also
	// after the encapsulation changed. A tunnel device takes its peers with it.
	open, err := k.FOUPorts()
	errs = append(errs, err)
	for _, p := range open {
		if p.Port == cfg.FOUPort() {
			errs = append(errs, k.DeleteFOUPort(p))
		}
	}
	routes, err := k.Routes()
	errs = append(errs, err)
	for _, r := range routes {
		errs = append(errs, k.DeleteRoute(r))
	}
	tunnels, err := k.Tunnels()
	errs = append(errs, err)
	for _, t := range tunnels {
		errs = append(errs, k.DeleteTunnel(t.Name))
	}
	return errors.Join(errs...)
}
