package lballoc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// sync decides every Service's addresses and writes the status of those whose
// status differs: first those losing an address, so an address moving between two
// Services is never in both.
func (c *Controller) sync(ctx context.Context, _ bool) (string, error) {
	c.changes.Take()
	svcs, err := c.view()
	if err != nil {
		return "", err
	}
	a := Allocate(c.params, svcs)
	byKey := make(map[string]Service, len(svcs))
	for _, s := range svcs {
		byKey[s.Key] = s
	}
	var losing, gaining []string
	for key, want := range a.Status {
		s := byKey[key]
		switch {
		case !s.IngressOther && slices.Equal(s.Ingress, want):
		case slices.ContainsFunc(s.Ingress, func(ip netip.Addr) bool { return !slices.Contains(want, ip) }):
			losing = append(losing, key)
		default:
			gaining = append(gaining, key)
		}
	}
	slices.Sort(losing)
	slices.Sort(gaining)
	var errs []error
	for _, key := range append(losing, gaining...) {
		if err := c.writeStatus(ctx, byKey[key], a.Status[key]); err != nil {
			errs = append(errs, err)
		}
	}
	c.report(a)
	return summary(a), errors.Join(errs...)
}

// view reads every Service, each in the newest version this node knows: the
// cache's, or the one our last write returned while the cache lags behind it.
func (c *Controller) view() ([]Service, error) {
	list, err := c.services.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing services: %w", err)
	}
	cached := make(map[string]bool, len(list))
	out := make([]Service, 0, len(list))
	for _, s := range list {
		key := s.Namespace + "/" + s.Name
		cached[key] = true
		if w, ok := c.written[key]; ok {
			if newer, err := resourceversion.CompareResourceVersion(w.ResourceVersion, s.ResourceVersion); err == nil && newer > 0 {
				s = w
			} else {
				delete(c.written, key)
			}
		}
		out = append(out, serviceOf(s))
	}
	for key := range c.written {
		if !cached[key] { // deleted since we wrote it
			delete(c.written, key)
		}
	}
	return out, nil
}

// waitForCache blocks until the informer cache holds every Service of a consistent
// list from the API server in that version or a newer one: a new leader's first
// decision then sees every address the old leader wrote.
func (c *Controller) waitForCache(ctx context.Context) error {
	start := time.Now()
	for {
		list, err := c.client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		if err != nil {
			c.log.Warn("listing services from the API server before allocating", "err", err)
		} else if lagging := c.cacheLagging(ctx, list.Items); lagging == "" {
			c.log.Info("informer cache is current; allocating", "services", len(list.Items), "took", time.Since(start).Round(time.Millisecond))
			return nil
		} else {
			c.log.Info("waiting for the informer cache before allocating", "service", lagging)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// cacheLagging polls the cache for up to a second and names a Service it holds in
// an older version than live (or not at all), or returns "".
func (c *Controller) cacheLagging(ctx context.Context, live []corev1.Service) string {
	deadline := time.Now().Add(time.Second)
	for {
		lagging := ""
		for i := range live {
			s := &live[i]
			key := s.Namespace + "/" + s.Name
			obj, ok, _ := c.indexer.GetByKey(key)
			cached, isService := obj.(*corev1.Service)
			if !ok || !isService {
				lagging = key
				break
			}
			if cmp, err := resourceversion.CompareResourceVersion(cached.ResourceVersion, s.ResourceVersion); err != nil || cmp < 0 {
				lagging = key
				break
			}
		}
		if lagging == "" || time.Now().After(deadline) || ctx.Err() != nil {
			return lagging
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// writeStatus sets a Service's status.loadBalancer.ingress to ips (nil clears it)
// with a merge patch that holds only if the Service is still in the version the
// decision was made on.
func (c *Controller) writeStatus(ctx context.Context, s Service, ips []netip.Addr) error {
	ns, name, _ := strings.Cut(s.Key, "/")
	var ingress []map[string]string
	for _, ip := range ips {
		ingress = append(ingress, map[string]string{"ip": ip.String()})
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": s.ResourceVersion},
		"status":   map[string]any{"loadBalancer": map[string]any{"ingress": ingress}},
	})
	if err != nil {
		return fmt.Errorf("encoding the status of service %s: %w", s.Key, err)
	}
	got, err := c.client.CoreV1().Services(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	switch {
	case apierrors.IsNotFound(err):
		c.metrics.writes.WithLabelValues("gone").Inc()
		return nil
	case apierrors.IsConflict(err):
		c.metrics.writes.WithLabelValues("conflict").Inc()
		return fmt.Errorf("service %s changed since it was read; deciding again: %w", s.Key, err)
	case err != nil:
		c.metrics.writes.WithLabelValues("error").Inc()
		return fmt.Errorf("writing load-balancer status of service %s: %w", s.Key, err)
	}
	c.metrics.writes.WithLabelValues("ok").Inc()
	c.written[s.Key] = k8s.Strip(got).(*corev1.Service)
	if len(ips) == 0 {
		c.log.Info("cleared load-balancer status", "service", s.Key, "was", s.Ingress)
	} else {
		c.log.Info("assigned load-balancer IPs", "service", s.Key, "ips", ips, "was", s.Ingress)
	}
	return nil
}

// report logs each problem once while it holds, and updates metrics and details.
func (c *Controller) report(a Allocation) {
	now := map[Problem]bool{}
	for _, p := range a.Problems {
		now[p] = true
		if !c.reported[p] {
			c.log.Warn("load-balancer IP: "+p.Message, "service", p.Service, "reason", p.Reason)
		}
	}
	for p := range c.reported {
		if !now[p] {
			c.log.Info("load-balancer IP problem resolved", "service", p.Service, "reason", p.Reason)
		}
	}
	c.reported = now
	c.metrics.record(a)
	c.setAllocation(a)
}

func summary(a Allocation) string {
	assigned := 0
	for _, ips := range a.Status {
		if len(ips) > 0 {
			assigned++
		}
	}
	s := fmt.Sprintf("leading, %d services with addresses", assigned)
	for _, f := range ipfamily.Both {
		if a.Size[f] > 0 {
			s += fmt.Sprintf(", %s %d used %.0f free", f, a.Used[f], a.Free(f))
		}
	}
	if len(a.Problems) > 0 {
		s += fmt.Sprintf(", %d problems", len(a.Problems))
	}
	return s
}
