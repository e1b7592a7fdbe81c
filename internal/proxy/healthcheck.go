package proxy

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// Health check node ports, as kube-proxy serves them (pkg/proxy/healthcheck): a
// LoadBalancer Service with externalTrafficPolicy Local gets spec.healthCheckNodePort
// from the API server, and the cloud load balancer probes it on every node to send
// traffic only to nodes with a ready endpoint of the Service.

// healthCheck is the health check node port one Service wants on this node.
type healthCheck struct {
	Service types.NamespacedName
	Port    uint16
	// LocalEndpoints counts the Service's ready endpoints on this node.
	LocalEndpoints int
}

// desiredHealthCheck returns the health check node port of svc, if it has one. It is
// pure. Only ready endpoints count, not terminating ones that still serve: while
// those are all a node has, the load balancer should stop sending it new
// connections (KEP-1669).
func desiredHealthCheck(svc *corev1.Service, epSlices []*k8s.EndpointSlice, nodeName string) (healthCheck, bool) {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.HealthCheckNodePort <= 0 || svc.Spec.HealthCheckNodePort > 65535 ||
		svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal || notOurs(svc.Labels) {
		return healthCheck{}, false
	}
	local := map[netip.Addr]bool{}
	unparsable := 0
	for _, slice := range epSlices {
		if sliceNotOurs(slice) {
			continue
		}
		for _, ep := range slice.Endpoints {
			if ep.NodeName == nil || *ep.NodeName != nodeName || !ep.Ready || ep.Terminating {
				continue
			}
			switch {
			case ep.Addr.IsValid():
				local[ep.Addr] = true // one endpoint, whatever number of ports
			case ep.UnparsableAddr: // not an IP (an FQDN slice's), yet an endpoint
				unparsable++
			}
		}
	}
	return healthCheck{
		Service:        types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name},
		Port:           uint16(svc.Spec.HealthCheckNodePort),
		LocalEndpoints: len(local) + unparsable,
	}, true
}

// byPort indexes health checks by port. The API server allocates each port once, so
// two Services share one only for a moment; the first by name keeps it, the other is
// returned as a clash.
func byPort(checks map[types.NamespacedName]healthCheck) (map[uint16]healthCheck, []healthCheck) {
	names := make([]types.NamespacedName, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b types.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
	out := make(map[uint16]healthCheck, len(checks))
	var clashes []healthCheck
	for _, n := range names {
		hc := checks[n]
		if _, taken := out[hc.Port]; taken {
			clashes = append(clashes, hc)
			continue
		}
		out[hc.Port] = hc
	}
	return out, clashes
}

// listenFunc opens a TCP listener on addr ("host:port"); tests bind elsewhere.
type listenFunc func(addr string) (net.Listener, error)

func listenTCP(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// healthServers runs one HTTP server per health check node port, on every listen
// address, and answers from the counts of the last apply.
type healthServers struct {
	log    *slog.Logger
	listen listenFunc
	// proxyHealthy is reported as serviceProxyHealthy; false also fails the probe.
	proxyHealthy func() bool

	mu      sync.RWMutex
	running map[uint16]*healthServer
	// failing holds each port that could not be opened and why, so that a port that
	// stays taken is logged once, not at every sync.
	failing map[uint16]healthFailure
}

// healthFailure is a port that could not be opened: for whom, and why.
type healthFailure struct {
	check healthCheck
	err   string
}

// healthServer is one open health check node port.
type healthServer struct {
	check   healthCheck
	addrs   []netip.Addr // nil: every address
	servers []*http.Server
}

func newHealthServers(log *slog.Logger, listen listenFunc, proxyHealthy func() bool) *healthServers {
	return &healthServers{log: log, listen: listen, proxyHealthy: proxyHealthy,
		running: map[uint16]*healthServer{}, failing: map[uint16]healthFailure{}}
}

// apply makes the open ports those of want, on addrs (nil: every address), and their
// counts want's. A port that cannot be opened is logged with its Service and tried
// again at the next apply; it never fails the sync.
func (h *healthServers) apply(want map[uint16]healthCheck, addrs []netip.Addr) {
	h.mu.Lock()
	for port, s := range h.running {
		w, ok := want[port]
		if ok && w.Service == s.check.Service && slices.Equal(s.addrs, addrs) {
			s.check = w
			continue
		}
		s.close()
		delete(h.running, port)
		h.log.Info("closed health check node port", "service", s.check.Service.String(), "port", port)
	}
	for port := range h.failing {
		if _, ok := want[port]; !ok {
			delete(h.failing, port)
		}
	}
	var open []healthCheck
	for port, w := range want {
		if _, ok := h.running[port]; !ok {
			open = append(open, w)
		}
	}
	h.mu.Unlock()
	// Bind outside the lock: probes of the open ports keep being answered.
	for _, w := range open {
		s, err := h.open(w, addrs)
		h.mu.Lock()
		if err != nil {
			if h.failing[w.Port].err != err.Error() {
				h.log.Warn("cannot open health check node port, will retry at the next sync",
					"service", w.Service.String(), "port", w.Port, "err", err)
			}
			h.failing[w.Port] = healthFailure{check: w, err: err.Error()}
		} else {
			delete(h.failing, w.Port)
			h.running[w.Port] = s
			h.log.Info("serving health check node port", "service", w.Service.String(), "port", w.Port, "localEndpoints", w.LocalEndpoints)
		}
		h.mu.Unlock()
	}
}

// open listens on port on each address, or on none if any fails.
func (h *healthServers) open(w healthCheck, addrs []netip.Addr) (*healthServer, error) {
	hosts := []string{""}
	if addrs != nil {
		hosts = hosts[:0]
		for _, a := range addrs {
			hosts = append(hosts, a.String())
		}
	}
	s := &healthServer{check: w, addrs: addrs}
	handler := http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { h.serve(rw, w.Port) })
	for _, host := range hosts {
		ln, err := h.listen(net.JoinHostPort(host, strconv.Itoa(int(w.Port))))
		if err != nil {
			s.close()
			return nil, err
		}
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
		s.servers = append(s.servers, srv)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				h.log.Error("health check node port stopped serving", "service", w.Service.String(), "addr", ln.Addr().String(), "err", err)
			}
		}()
	}
	return s, nil
}

func (s *healthServer) close() {
	for _, srv := range s.servers {
		_ = srv.Close()
	}
}

// closeAll closes every port, when the service proxy stops.
func (h *healthServers) closeAll() {
	h.apply(nil, nil)
}

// HealthCheckPort is a health check node port as `kube-routerd status` shows it.
type HealthCheckPort struct {
	Service        string `json:"service"`
	Port           uint16 `json:"port"`
	LocalEndpoints int    `json:"localEndpoints"`
	// Error says why the port is not open; it is tried again at every sync.
	Error string `json:"error,omitempty"`
}

// details lists the ports, open or not, by port.
func (h *healthServers) details() []HealthCheckPort {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var out []HealthCheckPort
	for _, s := range h.running {
		out = append(out, HealthCheckPort{Service: s.check.Service.String(), Port: s.check.Port, LocalEndpoints: s.check.LocalEndpoints})
	}
	for _, f := range h.failing {
		out = append(out, HealthCheckPort{Service: f.check.Service.String(), Port: f.check.Port, LocalEndpoints: f.check.LocalEndpoints, Error: f.err})
	}
	slices.SortFunc(out, func(a, b HealthCheckPort) int { return int(a.Port) - int(b.Port) })
	return out
}

// serviceHealth is kube-proxy's response body, which load balancers and people read.
type serviceHealth struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// serve answers a probe of port: 200 while the Service has a ready endpoint here and
// the proxy is healthy, 503 otherwise (the load balancer then skips this node).
func (h *healthServers) serve(rw http.ResponseWriter, port uint16) {
	h.mu.RLock()
	s, ok := h.running[port]
	var check healthCheck
	if ok {
		check = s.check
	}
	h.mu.RUnlock()
	if !ok { // closed while the request was on its way
		http.Error(rw, "no health check on this port", http.StatusServiceUnavailable)
		return
	}
	var body serviceHealth
	body.Service.Namespace, body.Service.Name = check.Service.Namespace, check.Service.Name
	body.LocalEndpoints = check.LocalEndpoints
	body.ServiceProxyHealthy = h.proxyHealthy()
	writeJSON(rw, check.LocalEndpoints > 0 && body.ServiceProxyHealthy, body)
}

func writeJSON(rw http.ResponseWriter, ok bool, body any) {
	rw.Header().Set("Content-Type", "application/json")
	rw.Header().Set("X-Content-Type-Options", "nosniff")
	if ok {
		rw.WriteHeader(http.StatusOK)
	} else {
		rw.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(rw).Encode(body)
}
