package testenv

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// BenchService is a Service the benchmarks created in the API server and its one
// EndpointSlice.
type BenchService struct {
	Service *corev1.Service
	Slice   *discoveryv1.EndpointSlice
}

// BenchEndpointNode is the node the endpoints of CreateBenchServices run on: none of
// the benchmarks' nodes, so every endpoint is remote.
const BenchEndpointNode = "node-b"

// CreateBenchServices creates n ClusterIP Services svc-<first> ... svc-<first+n-1>, each
// with port 80 (named http, TCP) and one EndpointSlice of 10 ready endpoints on
// BenchEndpointNode, in parallel. The benchmarks' workload: the service proxy's and
// the side-by-side comparison with kube-proxy make the same objects.
func CreateBenchServices(t testing.TB, cs kubernetes.Interface, namespace string, first, n int) []BenchService {
	t.Helper()
	const creators = 32
	ctx := context.Background()
	out := make([]BenchService, n)
	next := make(chan int)
	errs := make(chan error, creators)
	var wg sync.WaitGroup
	for range creators {
		wg.Go(func() {
			for k := range next {
				i := first + k
				name := fmt.Sprintf("svc-%d", i)
				svc, err := cs.CoreV1().Services(namespace).Create(ctx, &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
						Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
				}, metav1.CreateOptions{})
				if err != nil {
					errs <- fmt.Errorf("creating Service %s: %w", name, err)
					return
				}
				slice := &discoveryv1.EndpointSlice{
					ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
					AddressType: discoveryv1.AddressTypeIPv4,
					Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
				}
				for j := range 10 {
					slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
						Addresses:  []string{netip.AddrFrom4([4]byte{10, byte(100 + i/65000), byte(i / 256), byte(j*25 + i%25)}).String()},
						NodeName:   ptr.To(BenchEndpointNode),
						Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
					})
				}
				if slice, err = cs.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("creating EndpointSlice of %s: %w", name, err)
					return
				}
				out[k] = BenchService{Service: svc, Slice: slice}
			}
		})
	}
	go func() {
		defer close(next)
		for k := range n {
			select {
			case next <- k:
			case err := <-errs:
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	return out
}
