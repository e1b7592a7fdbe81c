package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/lballoc"
	"github.com/kube-routerd/kube-routerd/internal/netpol"
	"github.com/kube-routerd/kube-routerd/internal/podnet"
	"github.com/kube-routerd/kube-routerd/internal/proxy"
	"github.com/kube-routerd/kube-routerd/internal/routing"
	"github.com/kube-routerd/kube-routerd/internal/takeover"
)

// buildControllers constructs the controllers the config enables. Each registers its
// informers here, before the daemon starts the shared factory.
func buildControllers(cfg config.Config, env daemon.Env) ([]daemon.Controller, error) {
	var out []daemon.Controller
	if cfg.ServiceProxy.Enabled {
		dp, err := proxy.KernelDataplane(cfg.ServiceProxy, netns.None())
		if err != nil {
			return nil, fmt.Errorf("service proxy dataplane: %w", err)
		}
		c, err := proxy.New(env, cfg.ServiceProxy, dp)
		if err != nil {
			return nil, fmt.Errorf("service proxy: %w", err)
		}
		out = append(out, c)
	}
	if cfg.NetworkPolicy.Enabled {
		dp, err := netpol.KernelDataplane(netns.None())
		if err != nil {
			return nil, fmt.Errorf("network policy dataplane: %w", err)
		}
		dp.ServiceLedger = cfg.ServiceProxy.Enabled
		c, err := netpol.New(env, cfg.NetworkPolicy, dp)
		if err != nil {
			return nil, fmt.Errorf("network policy: %w", err)
		}
		out = append(out, c)
	}
	if cfg.Routing.Enabled {
		rcfg := cfg.Routing
		if cfg.ServiceProxy.Enabled {
			ranges := cfg.ServiceProxy.IPRanges()
			rcfg.ServiceIPRanges = &ranges
		}
		c, err := routing.New(env, rcfg, routing.KernelDataplane())
		if err != nil {
			return nil, fmt.Errorf("routing: %w", err)
		}
		out = append(out, c)
	}
	if cfg.PodNetwork.Enabled() {
		k, err := podnet.KernelDataplane(netns.None())
		if err != nil {
			return nil, fmt.Errorf("pod network dataplane: %w", err)
		}
		c, err := podnet.New(env, podNetworkOptions(cfg), k)
		if err != nil {
			return nil, fmt.Errorf("pod network: %w", err)
		}
		out = append(out, c)
	}
	if cfg.LoadBalancer.Enabled {
		// A node that stops hands the Lease over at once.
		c, err := lballoc.New(env, lballoc.Options{Config: cfg.LoadBalancer, ReleaseOnStop: true})
		if err != nil {
			return nil, fmt.Errorf("load-balancer allocator: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

// newTakeover returns the takeover from kube-router, which knows which of the
// controllers replace kube-router's objects.
func newTakeover(cfg config.Config, env daemon.Env) (*takeover.Controller, error) {
	k, err := takeover.KernelAt(netns.None(), cfg.PodNetwork.CNIConfigFile)
	if err != nil {
		return nil, fmt.Errorf("takeover from kube-router: %w", err)
	}
	return takeover.New(env, takeover.Options{
		Enabled: map[takeover.Domain]bool{
			takeover.DomainProxy:   cfg.ServiceProxy.Enabled,
			takeover.DomainNetpol:  cfg.NetworkPolicy.Enabled,
			takeover.DomainRouting: cfg.Routing.Enabled,
			takeover.DomainPodNet:  cfg.PodNetwork.Enabled(),
		},
		DummyInterface: cfg.ServiceProxy.DummyInterface,
	}, k), nil
}

// podNetworkOptions gathers what the pod network depends on from every section.
func podNetworkOptions(cfg config.Config) podnet.Options {
	// The configuration was validated: the encapsulation parses.
	encap, _ := route.ParseEncap(cfg.Routing.OverlayEncap)
	opts := podnet.Options{
		Config:    cfg.PodNetwork,
		MayTunnel: cfg.Routing.Enabled && cfg.Routing.Overlay != "never",
		Encap:     encap,
	}
	for _, p := range cfg.ServiceProxy.ClusterCIDRs {
		opts.ClusterCIDRs = append(opts.ClusterCIDRs, p.Prefix)
	}
	return opts
}

// cleanup removes everything each controller programs, whether or not it is enabled
// now (it may have been before), and reports every failure.
func cleanup(ctx context.Context, cfg config.Config) error {
	var errs []error
	// Network policy first: its INPUT jump names the service proxy's ledger sets,
	// which the kernel keeps while a rule refers to them.
	if err := netpol.Cleanup(ctx); err != nil {
		errs = append(errs, fmt.Errorf("network policy: %w", err))
	}
	if err := proxy.Cleanup(ctx, cfg.ServiceProxy); err != nil {
		errs = append(errs, fmt.Errorf("service proxy: %w", err))
	}
	if err := routing.Cleanup(ctx, cfg.Routing); err != nil {
		errs = append(errs, fmt.Errorf("routing: %w", err))
	}
	// The pod bridge is ours only when our conflist told the bridge plugin to make it.
	bridge := ""
	if cfg.PodNetwork.WriteCNIConfig {
		bridge = cfg.PodNetwork.Bridge
	}
	if err := podnet.Cleanup(ctx, cfg.PodNetwork.CNIConfigFile, bridge); err != nil {
		errs = append(errs, fmt.Errorf("pod network: %w", err))
	}
	return errors.Join(errs...)
}
