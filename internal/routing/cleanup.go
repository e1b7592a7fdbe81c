package routing

import (
	"context"
	"errors"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

// Cleanup removes every route and tunnel the routing controller created in this
// network namespace (`kube-routerd cleanup`), and nothing else.
func Cleanup(ctx context.Context) error {
	return cleanupKernel(route.Netlink{})
}

func cleanupKernel(k route.Interface) error {
	var errs []error
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
