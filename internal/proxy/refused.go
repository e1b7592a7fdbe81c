package proxy

import (
	"slices"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-routerd/kube-routerd/internal/config"
)

// desiredOptions are the options the desired state is computed with.
func desiredOptions(cfg config.ServiceProxy) options {
	return options{Scheduler: cfg.Scheduler, IPRanges: cfg.IPRanges()}
}

// noteRefused records the addresses a Service was refused (nil: none, or the Service
// is gone) and logs them when they change, not at every resync.
func (c *Controller) noteRefused(name types.NamespacedName, refused []refusedAddr) {
	if slices.Equal(c.refused[name], refused) {
		return
	}
	if len(refused) == 0 {
		if _, gone := c.refused[name]; gone {
			delete(c.refused, name)
			c.log.Info("service no longer has addresses outside the allowed ranges", "service", name.String())
		}
		return
	}
	c.refused[name] = refused
	c.log.Warn("not programming addresses outside service_proxy.external_ip_ranges or loadbalancer_ip_ranges",
		"service", name.String(), "refused", refusedStrings(refused))
}

func refusedStrings(refused []refusedAddr) []string {
	out := make([]string, len(refused))
	for i, r := range refused {
		out[i] = r.String()
	}
	return out
}

// refusedDetails sets the refused-address gauges and returns the status's list.
func (c *Controller) refusedDetails() map[string][]string {
	counts := map[Kind]int{ExternalIP: 0, LoadBalancerIP: 0}
	var out map[string][]string
	for name, refused := range c.refused {
		if out == nil {
			out = make(map[string][]string, len(c.refused))
		}
		out[name.String()] = refusedStrings(refused)
		for _, r := range refused {
			counts[r.Kind]++
		}
	}
	for kind, n := range counts {
		c.metrics.refused.WithLabelValues(kind.String()).Set(float64(n))
	}
	return out
}
