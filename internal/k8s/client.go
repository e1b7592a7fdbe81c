// Package k8s builds the API client and the shared informers the controllers read.
package k8s

import (
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-routerd/kube-routerd/internal/config"
)

// UserAgent identifies kube-routerd's requests in API server logs and audit.
const UserAgent = "kube-routerd"

// RESTConfig loads the kubeconfig named in the config, or the in-cluster config when
// the path is empty and we run inside a pod.
func RESTConfig(c config.Kubernetes) (*rest.Config, error) {
	var (
		rc  *rest.Config
		err error
	)
	if c.Kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %q: %w", c.Kubeconfig, err)
	}
	rc.UserAgent = UserAgent
	rc.QPS = float32(c.QPS)
	rc.Burst = c.Burst
	return rc, nil
}

// NewClient returns a typed clientset for rc.
func NewClient(rc *rest.Config) (kubernetes.Interface, error) {
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client: %w", err)
	}
	return cs, nil
}

// NewInformerFactory returns the shared informer factory every controller registers
// its informers on, so each object kind is watched once per daemon. Its caches hold
// objects stripped to the fields the controllers read (StripForCache). client-go
// lists through a streaming watch (WatchListClient, on by default) where the API
// server supports it, so start-up does not hold a whole page list in memory.
// Pods are listed and watched with pods (NewPodListClient), or cs when it is nil.
// Objects received are counted in m when it is not nil.
func NewInformerFactory(cs, pods kubernetes.Interface, resync time.Duration, m *APIMetrics) informers.SharedInformerFactory {
	transform := cache.TransformFunc(StripForCache)
	if m != nil {
		transform = m.CountingTransform(transform)
	}
	f := informers.NewSharedInformerFactoryWithOptions(cs, resync, informers.WithTransform(transform))
	// Pods are looked up by key and listed whole, never by namespace: without the
	// namespace index every pod costs about 70 bytes less.
	if pods == nil {
		pods = cs
	}
	f.InformerFor(&corev1.Pod{}, func(_ kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return coreinformers.NewPodInformer(pods, metav1.NamespaceAll, resync, cache.Indexers{})
	})
	return f
}

// NodeName returns the configured node name, else the host name.
func NodeName(c config.Kubernetes) (string, error) {
	if c.NodeName != "" {
		return c.NodeName, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("node name not configured and host name unknown: %w", err)
	}
	return h, nil
}
