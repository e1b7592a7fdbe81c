package main

import (
	"context"
	"errors"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
)

// buildControllers constructs the controllers the config enables, in the order
// their dataplanes depend on each other.
func buildControllers(cfg config.Config, env daemon.Env) ([]daemon.Controller, error) {
	var out []daemon.Controller
	return out, nil
}

// cleanup removes everything each controller programs, whether or not it is enabled
// now (it may have been before), and reports every failure.
func cleanup(ctx context.Context, cfg config.Config) error {
	var errs []error
	return errors.Join(errs...)
}
