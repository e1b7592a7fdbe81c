package k8s

import (
	"bytes"
	"fmt"
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/randfill"

	"github.com/kube-routerd/kube-routerd/internal/testenv/workload"
)

// protobufSerializer is client-go's own protobuf serializer, as the pod client
// negotiates it.
func protobufSerializer(t testing.TB) runtime.Serializer {
	t.Helper()
	for _, info := range scheme.Codecs.WithoutConversion().SupportedMediaTypes() {
		if info.MediaType == runtime.ContentTypeProtobuf {
			return info.Serializer
		}
	}
	t.Fatal("client-go has no protobuf serializer")
	return nil
}

// encodeProtobuf encodes obj as the API server sends it, its kind in the envelope.
func encodeProtobuf(t testing.TB, obj runtime.Object) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := scheme.Codecs.EncoderForVersion(protobufSerializer(t), corev1.SchemeGroupVersion).Encode(obj, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// decodeBoth decodes data whole and trimmed.
func decodeBoth(t testing.TB, data []byte, into func() runtime.Object) (whole, trimmed runtime.Object) {
	t.Helper()
	s := protobufSerializer(t)
	whole, _, err := s.Decode(data, nil, into())
	if err != nil {
		t.Fatalf("decoding whole: %v", err)
	}
	trimmed, _, err = podTrimmingDecoder{s}.Decode(data, nil, into())
	if err != nil {
		t.Fatalf("decoding trimmed: %v", err)
	}
	return whole, trimmed
}

// samePodToTheCache fails t unless the trimmed pod reads, to the cache and every
// controller, as the whole one.
func samePodToTheCache(t *testing.T, whole, trimmed *corev1.Pod) {
	t.Helper()
	w, tr := CompactPod(whole), CompactPod(trimmed)
	if !w.Equal(tr) || w.ResourceVersion != tr.ResourceVersion {
		t.Errorf("pod %s/%s: trimmed compacts to\n%+v, whole to\n%+v", whole.Namespace, whole.Name, tr, w)
	}
	if got, want := stripMeta(trimmed.ObjectMeta, nil), stripMeta(whole.ObjectMeta, nil); !equalMeta(got, want) {
		t.Errorf("pod %s/%s: trimmed metadata %+v, whole %+v", whole.Namespace, whole.Name, got, want)
	}
}

func equalMeta(a, b metav1.ObjectMeta) bool {
	return a.Name == b.Name && a.Namespace == b.Namespace && a.UID == b.UID && a.ResourceVersion == b.ResourceVersion &&
		a.Generation == b.Generation && a.DeletionTimestamp.Equal(b.DeletionTimestamp) && maps.Equal(a.Labels, b.Labels)
}

func TestTrimmedPodReadsAsTheWholeOne(t *testing.T) {
	size := workload.Size{Nodes: 10, Pods: 50, Namespaces: 3, Services: 5}
	always := corev1.ContainerRestartPolicyAlways
	edge := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "sidecars", ResourceVersion: "77",
			DeletionTimestamp: &metav1.Time{}, Annotations: map[string]string{"big": "x"}},
			Spec: corev1.PodSpec{HostNetwork: true, NodeName: "n",
				InitContainers: []corev1.Container{
					{Name: "migrate", Ports: []corev1.ContainerPort{{Name: "ignored", ContainerPort: 1}}},
					{Name: "proxy", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "mesh", ContainerPort: 15001}}}},
				Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodFailed, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "bare"}},
	}
	var total, trimmedTotal int
	for i := range size.Pods + len(edge) {
		pod := func() *corev1.Pod {
			if i < size.Pods {
				p := size.Pod(i)
				p.ResourceVersion, p.UID = "12345", "0b1e7c1e-0000-4000-8000-000000000001"
				return p
			}
			return edge[i-size.Pods]
		}()
		data := encodeProtobuf(t, pod)
		trimmedData, ok := trimPodObject(data)
		if !ok {
			t.Fatalf("pod %s not trimmed", pod.Name)
		}
		total, trimmedTotal = total+len(data), trimmedTotal+len(trimmedData)
		whole, trimmed := decodeBoth(t, data, func() runtime.Object { return &corev1.Pod{} })
		samePodToTheCache(t, whole.(*corev1.Pod), trimmed.(*corev1.Pod))
		if tp := trimmed.(*corev1.Pod); len(tp.Annotations) != 0 || len(tp.ManagedFields) != 0 || len(tp.Status.Conditions) != 0 {
			t.Errorf("pod %s: trimmed keeps annotations, managed fields or conditions", pod.Name)
		}
	}
	t.Logf("the workload's pods: %d bytes of protobuf a pod, %d trimmed", total/(size.Pods+len(edge)), trimmedTotal/(size.Pods+len(edge)))
}

// Every field of a pod filled at random, many times: whatever the API server
// sends, the trimmed pod reads as the whole one.
func TestRandomTrimmedPodsReadAsTheWholeOnes(t *testing.T) {
	fill := randfill.NewWithSeed(1).NilChance(0.2).NumElements(0, 3).Funcs(
		// Quantities and IntOrStrings encode only from their valid forms.
		func(q *resource.Quantity, c randfill.Continue) {
			*q = *resource.NewQuantity(c.Int63n(1000), resource.DecimalSI)
		},
		func(v *intstr.IntOrString, c randfill.Continue) { *v = intstr.FromInt32(c.Int31()) },
		func(v *metav1.Time, c randfill.Continue) { v.Time = metav1.Unix(c.Int63n(1<<31), 0).Time },
		func(v *metav1.MicroTime, c randfill.Continue) { v.Time = metav1.Unix(c.Int63n(1<<31), 0).Time },
		func(v *runtime.RawExtension, c randfill.Continue) {},
	)
	always := corev1.ContainerRestartPolicyAlways
	for n := range 300 {
		var pod corev1.Pod
		fill.Fill(&pod)
		pod.TypeMeta = metav1.TypeMeta{}
		// Random strings are never a valid address, phase or restart policy: make
		// some of them so, for the fields CompactPod parses.
		for i := range pod.Spec.InitContainers {
			if i%2 == 0 {
				pod.Spec.InitContainers[i].RestartPolicy = &always
			}
		}
		for i := range pod.Status.PodIPs {
			pod.Status.PodIPs[i].IP = fmt.Sprintf("10.%d.0.%d", n%256, i)
		}
		if n%3 == 0 {
			pod.Status.PodIP, pod.Status.Phase = "fd00::1", corev1.PodSucceeded
		}
		data := encodeProtobuf(t, &pod)
		if _, ok := trimPodObject(data); !ok {
			t.Fatalf("random pod %x not trimmed", data)
		}
		whole, trimmed := decodeBoth(t, data, func() runtime.Object { return &corev1.Pod{} })
		samePodToTheCache(t, whole.(*corev1.Pod), trimmed.(*corev1.Pod))
	}
}

func TestTrimmedPodListReadsAsTheWholeOne(t *testing.T) {
	size := workload.Size{Nodes: 3, Pods: 7, Namespaces: 2, Services: 2}
	list := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "99", Continue: "next"}}
	for i := range size.Pods {
		list.Items = append(list.Items, *size.Pod(i))
	}
	data := encodeProtobuf(t, list)
	if _, ok := trimPodObject(data); !ok {
		t.Fatal("pod list not trimmed")
	}
	w, tr := decodeBoth(t, data, func() runtime.Object { return &corev1.PodList{} })
	whole, trimmed := w.(*corev1.PodList), tr.(*corev1.PodList)
	if trimmed.ResourceVersion != "99" || trimmed.Continue != "next" || len(trimmed.Items) != len(whole.Items) {
		t.Fatalf("trimmed list %+v, %d items; want the whole one's metadata and %d items", trimmed.ListMeta, len(trimmed.Items), len(whole.Items))
	}
	for i := range whole.Items {
		samePodToTheCache(t, &whole.Items[i], &trimmed.Items[i])
	}
}

// A streaming list ends with a bookmark whose annotation client-go waits for: the
// trimmed bookmark keeps it, and drops every other annotation.
func TestTrimmedBookmarkKeepsTheEndOfInitialEvents(t *testing.T) {
	bookmark := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "1234", Annotations: map[string]string{
		metav1.InitialEventsAnnotationKey: "true", "kubectl.kubernetes.io/last-applied-configuration": "{}",
	}}}
	_, tr := decodeBoth(t, encodeProtobuf(t, bookmark), func() runtime.Object { return &corev1.Pod{} })
	got := tr.(*corev1.Pod)
	if got.ResourceVersion != "1234" || len(got.Annotations) != 1 || got.Annotations[metav1.InitialEventsAnnotationKey] != "true" {
		t.Errorf("trimmed bookmark %+v, want resourceVersion 1234 and only %s", got.ObjectMeta, metav1.InitialEventsAnnotationKey)
	}
}

// Other kinds pass through, and data the trimmer cannot parse is left for the
// decoder to refuse as it would have.
func TestTrimmingLeavesOtherObjectsAndBadDataToTheDecoder(t *testing.T) {
	node := encodeProtobuf(t, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: map[string]string{"a": "b"}}})
	if _, ok := trimPodObject(node); ok {
		t.Error("a Node was trimmed")
	}
	s := protobufSerializer(t)
	pod := encodeProtobuf(t, workload.Size{Nodes: 1, Pods: 1, Namespaces: 1, Services: 1}.Pod(0))
	for name, data := range map[string][]byte{
		"json":         []byte(`{"kind":"Pod"}`),
		"truncated":    pod[:len(pod)/2],
		"magic only":   protobufMagic,
		"bad envelope": append(append([]byte{}, protobufMagic...), 0xff, 0xff, 0xff),
	} {
		if _, ok := trimPodObject(data); ok {
			t.Errorf("%s: trimmed", name)
		}
		_, _, wantErr := s.Decode(data, nil, &corev1.Pod{})
		_, _, gotErr := podTrimmingDecoder{s}.Decode(data, nil, &corev1.Pod{})
		if wantErr == nil || gotErr == nil || gotErr.Error() != wantErr.Error() {
			t.Errorf("%s: trimming decoder says %v, the decoder %v", name, gotErr, wantErr)
		}
	}
}

func FuzzTrimPodObject(f *testing.F) {
	f.Add(encodeProtobuf(f, workload.Size{Nodes: 1, Pods: 1, Namespaces: 1, Services: 1}.Pod(0)))
	f.Add(encodeProtobuf(f, &corev1.PodList{Items: []corev1.Pod{{}}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		trimmed, ok := trimPodObject(data)
		if !ok {
			return
		}
		// The trimmed envelope is well formed whatever its pod holds.
		if _, again := trimPodObject(trimmed); !again {
			t.Errorf("trimmed data %x does not parse again", trimmed)
		}
	})
}
