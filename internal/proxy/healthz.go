package proxy

import (
	"errors"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The node's proxy health endpoint, kube-proxy's healthz (port 10256): load balancers
// probe it for externalTrafficPolicy Cluster Services, whose traffic any node can
// take while its proxy works and the node is not going away.

// toBeDeletedTaint is the cluster autoscaler's taint on a node it is about to delete;
// kube-proxy fails its healthz then so load balancers drain the node first (KEP-3836).
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// nodeEligible reports whether load balancers may send Cluster traffic to node: it
// exists and is neither being deleted nor tainted for deletion. A cordoned node
// (spec.unschedulable) stays eligible, as in kube-proxy: cordoning stops new pods,
// not traffic (KEP-3458).
func nodeEligible(node *corev1.Node) bool {
	if node == nil || node.DeletionTimestamp != nil {
		return false
	}
	for _, t := range node.Spec.Taints {
		if t.Key == toBeDeletedTaint {
			return false
		}
	}
	return true
}

// proxyHealth tracks whether the service proxy has synced and applies changes in
// time, as kube-proxy's ProxyHealthServer does. Safe for concurrent use.
type proxyHealth struct {
	now func() time.Time
	// timeout is how long a change may wait for a successful sync.
	timeout time.Duration

	mu sync.Mutex
	// lastUpdated is the end of the last successful sync; zero before the first.
	lastUpdated time.Time
	// pendingSince is when the oldest change not yet synced arrived; zero if none.
	pendingSince time.Time
}

// queued records that a change waits for the next sync.
func (p *proxyHealth) queued() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pendingSince.IsZero() {
		p.pendingSince = p.now()
	}
}

// syncing is called as a sync starts and takes the changes it covers: it returns
// when the oldest of them arrived, for synced.
func (p *proxyHealth) syncing() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	since := p.pendingSince
	p.pendingSince = time.Time{}
	return since
}

// synced records the end of a sync that started with the changes waiting since
// (syncing's result); a failed one leaves them waiting.
func (p *proxyHealth) synced(since time.Time, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.lastUpdated = p.now()
		return
	}
	if !since.IsZero() && (p.pendingSince.IsZero() || since.Before(p.pendingSince)) {
		p.pendingSince = since
	}
}

// healthy reports whether the proxy has synced once and no change has waited longer
// than the timeout, and when it last synced.
func (p *proxyHealth) healthy() (bool, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ok := !p.lastUpdated.IsZero() && (p.pendingSince.IsZero() || p.now().Sub(p.pendingSince) < p.timeout)
	return ok, p.lastUpdated
}

// isHealthy is healthy without the time, for the health check node ports.
func (p *proxyHealth) isHealthy() bool {
	ok, _ := p.healthy()
	return ok
}

// healthzBody is kube-proxy's healthz response body.
type healthzBody struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible bool      `json:"nodeEligible"`
}

// healthzHandler serves /healthz (proxy healthy and node eligible) and /livez (proxy
// healthy), both 200 or 503 with a JSON body, as kube-proxy does.
func (c *Controller) healthzHandler() http.Handler {
	serve := func(rw http.ResponseWriter, withNode bool) {
		ok, last := c.health.healthy()
		node, err := c.nodes.Get(c.nodeName)
		if err != nil {
			node = nil
		}
		body := healthzBody{LastUpdated: last, CurrentTime: c.health.now(), NodeEligible: nodeEligible(node)}
		writeJSON(rw, ok && (body.NodeEligible || !withNode), body)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { serve(rw, true) })
	mux.HandleFunc("GET /livez", func(rw http.ResponseWriter, _ *http.Request) { serve(rw, false) })
	return mux
}

// openHealthz listens on service_proxy.healthz_listen unless it is off or open. A
// failure (the port taken, say by a kube-proxy still running) is logged and tried
// again at the next sync: the proxy works without it.
func (c *Controller) openHealthz() {
	if c.cfg.HealthzListen == "" || c.healthz != nil {
		return
	}
	addr := string(c.cfg.HealthzListen)
	ln, err := c.listen(addr)
	if err != nil {
		if err.Error() != c.healthzErr {
			c.log.Warn("cannot open the proxy healthz endpoint, will retry at the next sync", "addr", addr, "err", err)
		}
		c.healthzErr = err.Error()
		return
	}
	c.healthzErr = ""
	c.healthz = &http.Server{Handler: c.healthzHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func(srv *http.Server) {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("proxy healthz endpoint stopped serving", "addr", addr, "err", err)
		}
	}(c.healthz)
	c.log.Info("listening", "endpoint", "proxy healthz", "addr", ln.Addr().String())
}

// closeHealth closes the healthz endpoint and every health check node port.
func (c *Controller) closeHealth() {
	if c.healthz != nil {
		_ = c.healthz.Close()
		c.healthz = nil
	}
	c.hcs.closeAll()
}
