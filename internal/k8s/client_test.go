package k8s

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/config"
)

// TestRESTConfigFollowsTheCompressionSetting: compression is the client's to ask
// for; false must reach client-go, which otherwise asks for gzip.
func TestRESTConfigFollowsTheCompressionSetting(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, compression := range []bool{true, false} {
		c := config.Default().Kubernetes
		c.Kubeconfig, c.Compression = kubeconfig, compression
		rc, err := RESTConfig(c)
		if err != nil {
			t.Fatal(err)
		}
		if rc.DisableCompression == compression {
			t.Errorf("compression = %v gave DisableCompression %v", compression, rc.DisableCompression)
		}
	}
}
