package config

import "time"

// NetworkPolicy configures the network policy controller.
type NetworkPolicy struct {
	Enabled bool `toml:"enabled"`
	// SyncPeriod is the interval of the full resync that repairs drift.
	SyncPeriod Duration `toml:"sync_period"`
	// MinSyncInterval is the shortest time between two syncs; events in between coalesce.
	MinSyncInterval Duration `toml:"min_sync_interval"`
	// BetaNamespaceIsolation honours the pre-v1 annotation
	// net.beta.kubernetes.io/network-policy: {"ingress":{"isolation":"DefaultDeny"}}.
	BetaNamespaceIsolation bool `toml:"beta_namespace_isolation"`
	// IsolatePodsUntilEnforced drops new traffic from and to this node's pod
	// addresses until the controller has put their policies in force (the enforced
	// ledger), so no pod passes a packet its policies deny in its first moments.
	IsolatePodsUntilEnforced bool `toml:"isolate_pods_until_enforced"`
	// LogDrops sends dropped packets to NFLOG group NFLOGGroup, at most LogRatePerMinute.
	LogDrops         bool `toml:"log_drops"`
	NFLOGGroup       int  `toml:"nflog_group"`
	LogRatePerMinute int  `toml:"log_rate_per_minute"`
}

func defaultNetworkPolicy() NetworkPolicy {
	return NetworkPolicy{
		Enabled:                  true,
		IsolatePodsUntilEnforced: true,
		SyncPeriod:               Duration{5 * time.Minute},
		MinSyncInterval:          Duration{100 * time.Millisecond},
		NFLOGGroup:               100,
		LogRatePerMinute:         10,
	}
}

func (c NetworkPolicy) validate(v *validator) {
	if c.SyncPeriod.Duration < time.Second {
		v.add("network_policy.sync_period", "must be at least 1s")
	}
	if c.MinSyncInterval.Duration > c.SyncPeriod.Duration {
		v.add("network_policy.min_sync_interval", "must not exceed sync_period")
	}
	if c.NFLOGGroup < 0 || c.NFLOGGroup > 65535 {
		v.add("network_policy.nflog_group", "must be 0-65535")
	}
	if c.LogRatePerMinute < 1 {
		v.add("network_policy.log_rate_per_minute", "must be at least 1")
	}
}
