//go:build vm

package proxy

import (
	"fmt"
	"net/http"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestHealthCheckNodePortOfAServiceInTheAPIServer: the API server allocates a Local
// LoadBalancer Service's healthCheckNodePort, and the proxy answers probes on it with
// this node's ready endpoints: 200 while there is one, 503 once it is not ready, and
// nothing after the Service is deleted.
func TestHealthCheckNodePortOfAServiceInTheAPIServer(t *testing.T) {
	cs, namespace, _, node := vmCluster(t)
	ctx := t.Context()
	backend := node.AddPod(t, netns.PodOptions{Namespace: namespace})
	dp := testKernelDataplane(t, node.NS)
	startController(t, cs, node.Name, config.Default().ServiceProxy, dp)

	svc := apiService{name: "lb", proto: corev1.ProtocolTCP, port: 80, target: 8080,
		svcType: corev1.ServiceTypeLoadBalancer, local: true}.create(t, cs, namespace, node, backend)
	if svc.Spec.HealthCheckNodePort == 0 {
		t.Fatal("the API server allocated no healthCheckNodePort")
	}
	// The proxy listens on every node address by default; the test process shares
	// the VM's namespace with it.
	url := fmt.Sprintf("http://127.0.0.1:%d/", svc.Spec.HealthCheckNodePort)
	body := fmt.Sprintf(`{"service":{"namespace":%q,"name":"lb"},"localEndpoints":%%d,"serviceProxyHealthy":true}`, namespace)
	testenv.Eventually(t, "the health check node port to answer 200", vmWait, func() bool {
		return get(t, url).status == http.StatusOK
	})
	wantProbe(t, "one ready local endpoint", get(t, url), http.StatusOK, fmt.Sprintf(body, 1))

	slice, err := cs.DiscoveryV1().EndpointSlices(namespace).Get(ctx, "lb-ipv4", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice.Endpoints[0].Conditions.Ready = ptr.To(false)
	if _, err := cs.DiscoveryV1().EndpointSlices(namespace).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "503 once the endpoint is not ready", vmWait, func() bool {
		return get(t, url).status == http.StatusServiceUnavailable
	})
	wantProbe(t, "no ready local endpoint", get(t, url), http.StatusServiceUnavailable, fmt.Sprintf(body, 0))

	if err := cs.CoreV1().Services(namespace).Delete(ctx, "lb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the port to close with its Service", vmWait, func() bool {
		return get(t, url).err != nil
	})
}
