package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	policyclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// run starts the enabled controllers against the API server and supervises them
// until ctx ends.
func run(ctx context.Context, cfg config.Config, version string) error {
	nodeName, err := k8s.NodeName(cfg.Kubernetes)
	if err != nil {
		return err
	}
	rc, err := k8s.RESTConfig(cfg.Kubernetes)
	if err != nil {
		return err
	}
	client, err := k8s.NewClient(rc)
	if err != nil {
		return err
	}
	podClient, err := k8s.NewPodListClient(client, rc)
	if err != nil {
		return err
	}
	policyClient, err := policyclient.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("creating the policy.networking.k8s.io client: %w", err)
	}
	// The package inits have run: most of the executable is mapped, and little of
	// it runs again.
	daemon.ReleaseCodePages("package inits")
	listed := make(chan struct{})
	daemon.CapGCHeadroom(ctx, uint64(cfg.Memory.GCHeadroomMiB)<<20, listed, slog.Default())
	registry := daemon.NewRegistry()
	env := daemon.Env{
		Client:       client,
		PolicyClient: policyClient,
		Informers:    k8s.NewInformerFactory(client, podClient, cfg.Kubernetes.ResyncPeriod.Duration, k8s.NewAPIMetrics(registry)),
		NodeName:     nodeName,
		Registry:     registry,
		Log:          slog.Default(),
	}
	controllers, err := buildControllers(cfg, env)
	if err != nil {
		return err
	}
	tk, err := newTakeover(cfg, env)
	if err != nil {
		return err
	}
	controllers = append(controllers, tk)
	names := make([]string, 0, len(controllers))
	for _, c := range controllers {
		names = append(names, c.Name())
	}
	slog.Info("starting kube-routerd", "version", version, "node", nodeName, "controllers", names)

	d := daemon.New(daemon.Options{
		HealthListen:  string(cfg.Health.Listen),
		MetricsListen: string(cfg.Metrics.Listen),
		PprofListen:   string(cfg.Debug.PprofListen),
		StallTimeout:  cfg.Health.StallTimeout.Duration,
		Notifier:      daemon.SystemdNotifier{},
		Registry:      registry,
		BeforeControllers: func(ctx context.Context) error {
			if err := startInformers(ctx, env); err != nil {
				return err
			}
			// The lists leave garbage the size of a cache (client-go's temporary
			// stores, the decoded objects). Collected and handed back now, before the
			// first syncs build on the heap, the collector's goal follows what the
			// caches hold, not what the lists held at their end; and the collection
			// comes after listed is closed, so the memory limit is set from it on
			// (CapGCHeadroom), instead of from whenever the next one comes.
			close(listed)
			debug.FreeOSMemory()
			return tk.Adopt(ctx)
		},
	}, controllers...)
	tk.StartAfter(d.Ready())
	return d.Run(ctx)
}

// startInformers starts every informer the controllers registered and waits until
// their caches hold a full list, logging while the API server does not answer.
func startInformers(ctx context.Context, env daemon.Env) error {
	env.Informers.Start(ctx.Done())
	done := make(chan map[string]bool, 1)
	go func() {
		synced := map[string]bool{}
		for typ, ok := range env.Informers.WaitForCacheSync(ctx.Done()) {
			synced[typ.String()] = ok
		}
		done <- synced
	}()
	start := time.Now()
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case synced := <-done:
			for typ, ok := range synced {
				if !ok {
					return fmt.Errorf("informer cache for %s did not sync: %w", typ, context.Cause(ctx))
				}
			}
			slog.Info("informer caches synced", "took", time.Since(start).Round(time.Millisecond))
			return nil
		case <-tick.C:
			slog.Warn("still waiting for the API server to list objects", "waited", time.Since(start).Round(time.Second))
		}
	}
}
