// Package lballoc is the load-balancer IP allocator: it gives Services of type
// LoadBalancer addresses from configured pools and writes them to
// status.loadBalancer.ingress, where the service proxy programs them and the routing
// controller advertises them. It is the daemon's only writer to the API.
//
// Every node runs it; the holder of one Lease (client-go leader election, the node
// name as identity) allocates and the others stand by, so exactly one node writes.
// The allocator keeps no state of its own: each sync decides every Service's
// addresses from the Services' status (Allocate, pure), so a new leader keeps every
// assignment the old one made. Before its first decision a new leader waits until
// its informer cache is at least as new as a consistent list from the API server,
// so it never decides on what the old leader wrote before its cache saw it; and it
// remembers its own writes until the cache shows them.
//
// Decisions, each logged once with the Service's name while it holds:
//   - answered: type LoadBalancer and spec.loadBalancerClass equal to the class, or
//     no class when default_class is on. Others are left alone, but pool addresses
//     in their status are never handed out.
//   - families: one address per family of spec.ipFamilies that has a pool (dual-stack
//     gets one of each where the pools allow), primary family first.
//   - spec.loadBalancerIP (deprecated, single address) is given when it is in a pool
//     and free; a Service holding an address moves to it then, else keeps its own.
//   - kept: an address in the status stays while it is in a pool and of a wanted
//     family. Two Services with one address: the older (then by name) keeps it, the
//     other gets a new one.
//   - new addresses are the lowest free ones, pools in their configured order; an
//     exhausted pool is reported per Service and retried on every sync (a Service
//     deleted or changed frees its address and triggers one).
//   - a deleted Service's addresses are free at once, as are those of a Service
//     whose type is no longer LoadBalancer (the API server clears its status with
//     the type change, and allows no ingress on other types).
//
// Writes are JSON merge patches of the status subresource carrying the
// resourceVersion they were decided on, so a write on a stale view fails (and is
// retried on a fresh one) instead of overwriting: RBAC needs services/status patch
// and the Lease verbs get, create and update, nothing else.
package lballoc

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/loop"
)

// Services change status often in a burst (one write each); the periodic full sync
// retries what failed and catches events missed.
const (
	minSyncInterval = 50 * time.Millisecond
	syncPeriod      = 5 * time.Minute
)

// Options configure the allocator.
type Options struct {
	Config config.LoadBalancer
	// RenewDeadline and RetryPeriod of the leader election; zero derives them from
	// Config.LeaseDuration in client-go's proportions (15s, 10s, 2s).
	RenewDeadline, RetryPeriod time.Duration
	// ReleaseOnStop gives the Lease up when Run's context ends, so another node
	// takes over at once instead of after LeaseDuration.
	ReleaseOnStop bool
}

func (o Options) timings() (lease, renew, retry time.Duration) {
	lease = o.Config.LeaseDuration.Duration
	renew, retry = o.RenewDeadline, o.RetryPeriod
	if renew == 0 {
		renew = lease * 2 / 3
	}
	if retry == 0 {
		retry = lease * 2 / 15
	}
	return lease, renew, retry
}

// Controller is the allocator (daemon.Controller).
type Controller struct {
	opts     Options
	params   Params
	nodeName string
	log      *slog.Logger
	client   kubernetes.Interface
	services corelisters.ServiceLister
	indexer  cache.Indexer
	metrics  *metrics
	runner   *loop.Runner
	changes  *loop.Tracker[struct{}]

	// term holds a token while this node allocates (a one-slot semaphore).
	term    chan struct{}
	leading atomic.Bool
	leader  atomic.Value // string: the last observed Lease holder

	// Owned by the sync loop (one leadership term at a time).
	written  map[string]*corev1.Service // our writes the cache does not show yet
	reported map[Problem]bool           // problems logged while they hold

	mu      sync.Mutex
	details Details
}

var _ daemon.Controller = (*Controller)(nil)
var _ daemon.StatusReporter = (*Controller)(nil)

// New builds the allocator and registers its Service handler. opts.Config must be
// valid and enabled.
func New(env daemon.Env, opts Options) (*Controller, error) {
	m, err := newMetrics(env)
	if err != nil {
		return nil, err
	}
	inf := env.Informers.Core().V1().Services()
	c := &Controller{
		opts:     opts,
		params:   ParamsOf(opts.Config),
		nodeName: env.NodeName,
		log:      env.Logger("lballoc"),
		client:   env.Client,
		services: inf.Lister(),
		indexer:  inf.Informer().GetIndexer(),
		metrics:  m,
		term:     make(chan struct{}, 1),
		written:  map[string]*corev1.Service{},
		reported: map[Problem]bool{},
	}
	c.leader.Store("")
	c.runner = loop.NewRunner("lballoc", c.sync, minSyncInterval, syncPeriod)
	c.changes = loop.NewTracker[struct{}](c.runner.Request)
	if err := c.changes.WatchAll(inf.Informer(), mattersToAllocation); err != nil {
		return nil, fmt.Errorf("lballoc: registering service handler: %w", err)
	}
	c.details = Details{Lease: opts.Config.LeaseNamespace + "/" + opts.Config.LeaseName}
	return c, nil
}

// mattersToAllocation reports whether a Service event can change an allocation:
// a load balancer or a status address come or go, or what the allocator reads of
// one changed.
func mattersToAllocation(ch loop.Change) bool {
	o, ok1 := ch.Old.(*corev1.Service)
	n, ok2 := ch.New.(*corev1.Service)
	relevant := func(s *corev1.Service) bool {
		return s.Spec.Type == corev1.ServiceTypeLoadBalancer || len(s.Status.LoadBalancer.Ingress) > 0
	}
	switch {
	case !ok1 && !ok2:
		return false
	case !ok1:
		return relevant(n)
	case !ok2:
		return relevant(o)
	}
	return o.Spec.Type != n.Spec.Type || o.Spec.LoadBalancerIP != n.Spec.LoadBalancerIP ||
		!equality.Semantic.DeepEqual(o.Spec.LoadBalancerClass, n.Spec.LoadBalancerClass) ||
		!equality.Semantic.DeepEqual(o.Spec.IPFamilies, n.Spec.IPFamilies) ||
		!equality.Semantic.DeepEqual(o.Status.LoadBalancer, n.Status.LoadBalancer)
}

// Name implements daemon.Controller.
func (c *Controller) Name() string { return "lballoc" }

// Run implements daemon.Controller: it campaigns for the Lease until ctx ends and
// allocates while it holds it. A node standing by is ready and alive.
func (c *Controller) Run(ctx context.Context, hb *daemon.Heartbeat) error {
	if !c.changes.WaitForInitialObjects(ctx) {
		return nil
	}
	_, _, retry := c.opts.timings()
	hb.SyncDone(true, 0, nil, c.standbySummary())
	go c.beatWhileStandingBy(ctx, hb)
	for ctx.Err() == nil {
		if err := c.campaign(ctx, hb); err != nil {
			return err
		}
		select { // a lost Lease: campaign again after a pause
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
	return nil
}

// campaign runs one leader election: it waits for the Lease, allocates while it
// holds it and returns once it lost it or ctx ended, after the allocation stopped.
func (c *Controller) campaign(ctx context.Context, hb *daemon.Heartbeat) error {
	lease, renew, retry := c.opts.timings()
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: c.opts.Config.LeaseNamespace, Name: c.opts.Config.LeaseName},
			Client:     c.client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: c.nodeName},
		},
		LeaseDuration:   lease,
		RenewDeadline:   renew,
		RetryPeriod:     retry,
		ReleaseOnCancel: c.opts.ReleaseOnStop,
		Name:            "lballoc",
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				// client-go starts this in a goroutine that may run after Run
				// returned: one term at a time, and none on an ended one.
				c.term <- struct{}{}
				defer func() { <-c.term }()
				if lctx.Err() == nil {
					c.lead(lctx, hb)
				}
			},
			OnStoppedLeading: func() {},
			OnNewLeader: func(identity string) {
				c.leader.Store(identity)
				c.log.Info("load-balancer allocator leader", "leader", identity, "self", identity == c.nodeName)
				c.setLeader(identity)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("lballoc: leader election: %w", err)
	}
	le.Run(ctx)
	c.term <- struct{}{} // the term, if one started, has ended
	<-c.term
	return nil
}

// lead allocates for one leadership term.
func (c *Controller) lead(ctx context.Context, hb *daemon.Heartbeat) {
	c.leading.Store(true)
	c.metrics.leader.Set(1)
	c.log.Info("leading the load-balancer allocation", "lease", c.opts.Config.LeaseNamespace+"/"+c.opts.Config.LeaseName)
	defer func() {
		c.leading.Store(false)
		c.metrics.leader.Set(0)
		c.setLeading(false)
		hb.SyncDone(false, 0, nil, c.standbySummary())
		c.log.Info("stopped leading the load-balancer allocation")
	}()
	c.written = map[string]*corev1.Service{}
	c.reported = map[Problem]bool{}
	c.setLeading(true)
	if err := c.waitForCache(ctx); err != nil {
		return
	}
	c.runner.Run(ctx, hb)
}

// beatWhileStandingBy keeps the heartbeat of a node that does not allocate; the
// leader's sync loop beats for itself (and a stuck one is noticed).
func (c *Controller) beatWhileStandingBy(ctx context.Context, hb *daemon.Heartbeat) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !c.leading.Load() {
				hb.Beat()
			}
		}
	}
}

func (c *Controller) standbySummary() string {
	if l := c.leader.Load().(string); l != "" && l != c.nodeName {
		return "standing by, " + l + " allocates"
	}
	return "standing by"
}
