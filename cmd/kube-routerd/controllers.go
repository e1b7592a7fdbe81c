package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/netpol"
	"github.com/kube-routerd/kube-routerd/internal/proxy"
	"github.com/kube-routerd/kube-routerd/internal/routing"
)

// buildControllers constructs the controllers the config enables. Each registers its
// informers here, before the daemon starts the shared factory.
func buildControllers(cfg config.Config, env daemon.Env) ([]daemon.Controller, error) {
	var out []daemon.Controller
	if cfg.ServiceProxy.Enabled {
		c, err := proxy.New(env, cfg.ServiceProxy)
		if err != nil {
			return nil, fmt.Errorf("service proxy: %w", err)
		}
		out = append(out, c)
	}
	if cfg.NetworkPolicy.Enabled {
		dps, err := netpol.KernelDataplanes(netns.None())
		if err != nil {
			return nil, fmt.Errorf("network policy dataplane: %w", err)
		}
		c, err := netpol.New(env, cfg.NetworkPolicy, dps)
		if err != nil {
			return nil, fmt.Errorf("network policy: %w", err)
		}
		out = append(out, c)
	}
	if cfg.Routing.Enabled {
		c, err := routing.New(env, cfg.Routing)
		if err != nil {
			return nil, fmt.Errorf("routing: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

// cleanup removes everything each controller programs, whether or not it is enabled
// now (it may have been before), and reports every failure.
func cleanup(ctx context.Context, cfg config.Config) error {
	var errs []error
	if err := proxy.Cleanup(ctx, cfg.ServiceProxy); err != nil {
		errs = append(errs, fmt.Errorf("service proxy: %w", err))
	}
	if err := netpol.Cleanup(ctx); err != nil {
		errs = append(errs, fmt.Errorf("network policy: %w", err))
	}
	if err := routing.Cleanup(ctx); err != nil {
		errs = append(errs, fmt.Errorf("routing: %w", err))
	}
	return errors.Join(errs...)
}
