package netpol

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netns"
)

// Cleanup removes every chain, jump and set the policy controller owns, in the IPv4
// and IPv6 filter tables of the daemon's network namespace.
func Cleanup(ctx context.Context) error {
	dp, err := KernelDataplane(netns.None())
	if err != nil {
		return err
	}
	return cleanup(ctx, dp, slog.Default())
}

// cleanup is Cleanup for a given dataplane (tests, other namespaces).
func cleanup(ctx context.Context, dp Dataplane, log *slog.Logger) error {
	for _, ipt := range dp.IPTables {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := newWriter(ipt, dp.IPSets, log).Cleanup(); err != nil {
			return fmt.Errorf("cleaning up network policy state (%s): %w", ipt.Family(), err)
		}
	}
	return nil
}
