package proxy

import (
	"context"
	"errors"
	"log/slog"

	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
)

// Cleanup removes everything the service proxy created: the IPVS services recorded
// in the ledger, the DSR tunnels in the pods it can find, the firewall jumps, chains
// and sets, the ledger itself and the dummy interface with the VIPs.
func Cleanup(ctx context.Context, cfg config.ServiceProxy) error {
	return cleanupAt(ctx, cfg, netns.None(), slog.Default())
}

// cleanupAt runs Cleanup in network namespace ns. A kernel without IPVS loaded has no
// virtual services, so IPVS is then left unopened (opening it would try to load the
// module and log moby/ipvs's warnings).
func cleanupAt(ctx context.Context, cfg config.ServiceProxy, ns netns.NsHandle, log *slog.Logger) error {
	loaded, err := ipvs.Loaded()
	if err != nil {
		return err
	}
	dp, err := kernelDataplane(cfg, ns, loaded)
	if err != nil {
		return err
	}
	if !loaded {
		log.Info("IPVS is not loaded in this kernel: no IPVS services to remove")
	}
	return cleanup(ctx, dp, log)
}

// cleanup removes what the service proxy created in dp; with dp.IPVS nil it skips the
// IPVS services.
func cleanup(ctx context.Context, dp Dataplane, log *slog.Logger) error {
	keys, err := dp.Ledger.Keys()
	if err != nil {
		return err
	}
	if dp.IPVS == nil {
		keys = nil // records of a kernel that has no IPVS services
	}
	var errs []error
	for _, k := range keys {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := dp.IPVS.DeleteService(k); err != nil && !errors.Is(err, ipvs.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	// The pods' DSR tunnels, once IPVS no longer sends them anything.
	if err := removeAllDSR(dp.Tunnels); err != nil {
		errs = append(errs, err)
	}
	// Rules before sets: the kernel keeps a set while a rule refers to it.
	if err := cleanupFirewall(dp, log); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		errs = append(errs, dp.Ledger.Destroy())
	}
	errs = append(errs, dp.Dummy.Delete())
	return errors.Join(errs...)
}

// cleanupFirewall removes our jumps, chains and sets (but the ledger set).
func cleanupFirewall(dp Dataplane, log *slog.Logger) error {
	var errs []error
	for _, ff := range newFirewall(dp, FirewallOptions{}, nil, log).families {
		errs = append(errs, ff.netfilter.Cleanup())
	}
	return errors.Join(errs...)
}
