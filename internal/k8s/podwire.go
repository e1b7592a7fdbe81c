package k8s

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
)

// A pod as the API server sends it is 5–10 KB of protobuf (containers with their env
// and probes, statuses, managed fields), of which CompactPod reads about 200 bytes.
// Decoding the whole of it allocates every string and struct only for the
// transform to drop them: at start-up on a 150,000-pod cluster that was most of the
// daemon's allocation, and so most of its collector's work. The pod decoder below
// first copies, from the wire bytes, only the fields CompactPod reads, and decodes
// that.

// wireMessage says which fields of a protobuf message are kept.
type wireMessage struct {
	// fields maps a kept field's number to how its value is trimmed in turn; nil
	// keeps the value whole.
	fields map[protowire.Number]*wireMessage
	// keepEntry, on a map field's entry, keeps the entries whose key it accepts,
	// whole, and drops the others.
	keepEntry func(key []byte) bool
}

// podWire keeps what CompactPod reads, what stripMeta keeps, and the one annotation
// of a bookmark that ends a streaming list's initial events (client-go waits for it).
var podWire = func() *wireMessage {
	pod := keptFields(reflect.TypeFor[corev1.Pod](),
		"ObjectMeta.Name", "ObjectMeta.Namespace", "ObjectMeta.UID", "ObjectMeta.ResourceVersion",
		"ObjectMeta.Generation", "ObjectMeta.DeletionTimestamp", "ObjectMeta.Labels",
		"Spec.Containers.Name", "Spec.Containers.Ports",
		"Spec.InitContainers.Name", "Spec.InitContainers.Ports", "Spec.InitContainers.RestartPolicy",
		"Spec.NodeName", "Spec.HostNetwork",
		"Status.Phase", "Status.PodIP", "Status.PodIPs")
	meta := pod.fields[protoFieldNumber(reflect.TypeFor[corev1.Pod](), "ObjectMeta")]
	meta.fields[protoFieldNumber(reflect.TypeFor[metav1.ObjectMeta](), "Annotations")] = &wireMessage{
		keepEntry: func(key []byte) bool { return string(key) == metav1.InitialEventsAnnotationKey },
	}
	return pod
}()

// podListWire keeps a PodList's metadata and its items as podWire does.
var podListWire = &wireMessage{fields: map[protowire.Number]*wireMessage{
	protoFieldNumber(reflect.TypeFor[corev1.PodList](), "ListMeta"): nil,
	protoFieldNumber(reflect.TypeFor[corev1.PodList](), "Items"):    podWire,
}}

// keptFields builds the wireMessage of Go type t that keeps the fields at paths
// (Go field names joined by dots; slices and pointers are looked through), with the
// field numbers of the generated protobuf tags. It panics on a path t lacks: the
// paths are constants, and every test of the package would fail.
func keptFields(t reflect.Type, paths ...string) *wireMessage {
	root := &wireMessage{fields: map[protowire.Number]*wireMessage{}}
	for _, path := range paths {
		m, typ := root, t
		names := strings.Split(path, ".")
		for i, name := range names {
			num := protoFieldNumber(typ, name)
			if i == len(names)-1 {
				m.fields[num] = nil
				break
			}
			next := m.fields[num]
			if next == nil {
				next = &wireMessage{fields: map[protowire.Number]*wireMessage{}}
				m.fields[num] = next
			}
			f, _ := typ.FieldByName(name)
			m, typ = next, f.Type
			for typ.Kind() == reflect.Slice || typ.Kind() == reflect.Pointer {
				typ = typ.Elem()
			}
		}
	}
	return root
}

// protoFieldNumber is the protobuf field number in the generated tag of t's field name.
func protoFieldNumber(t reflect.Type, name string) protowire.Number {
	f, ok := t.FieldByName(name)
	if !ok {
		panic(fmt.Sprintf("%v has no field %s", t, name))
	}
	parts := strings.Split(f.Tag.Get("protobuf"), ",")
	if len(parts) < 2 {
		panic(fmt.Sprintf("%v.%s has no protobuf tag", t, name))
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil {
		panic(fmt.Sprintf("%v.%s: protobuf tag %q: %v", t, name, f.Tag.Get("protobuf"), err))
	}
	return protowire.Number(n)
}

// trim appends to dst the fields of the encoded message msg that m keeps, in their
// order, and returns it.
func (m *wireMessage) trim(dst, msg []byte) ([]byte, error) {
	for len(msg) > 0 {
		num, typ, tagLen := protowire.ConsumeTag(msg)
		if tagLen < 0 {
			return nil, protowire.ParseError(tagLen)
		}
		valueLen := protowire.ConsumeFieldValue(num, typ, msg[tagLen:])
		if valueLen < 0 {
			return nil, protowire.ParseError(valueLen)
		}
		field := msg[:tagLen+valueLen]
		msg = msg[tagLen+valueLen:]
		sub, kept := m.fields[num]
		switch {
		case !kept:
			continue
		case sub == nil:
			dst = append(dst, field...)
			continue
		case typ != protowire.BytesType:
			return nil, fmt.Errorf("field %d: wire type %d where a message was expected", num, typ)
		}
		value, _ := protowire.ConsumeBytes(field[tagLen:])
		if sub.keepEntry != nil {
			if sub.keepEntry(bytesField(value, mapEntryKey)) {
				dst = append(dst, field...)
			}
			continue
		}
		var err error
		if dst, err = sub.appendTrimmed(dst, num, value); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

// appendTrimmed appends field num holding the encoded message msg trimmed by m.
// The trimmed length is known only once it is written: it is written after the
// tag, then moved behind its length.
func (m *wireMessage) appendTrimmed(dst []byte, num protowire.Number, msg []byte) ([]byte, error) {
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	start := len(dst)
	dst, err := m.trim(dst, msg)
	if err != nil {
		return nil, err
	}
	var buf [binary.MaxVarintLen64]byte
	length := protowire.AppendVarint(buf[:0], uint64(len(dst)-start))
	dst = append(dst, length...)
	copy(dst[start+len(length):], dst[start:len(dst)-len(length)])
	copy(dst[start:], length)
	return dst, nil
}

// bytesField is the value of the first length-delimited field num of the encoded
// message msg, or nil.
func bytesField(msg []byte, num protowire.Number) []byte {
	for len(msg) > 0 {
		got, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return nil
		}
		if got == num && typ == protowire.BytesType {
			value, _ := protowire.ConsumeBytes(msg[n:])
			return value
		}
		skip := protowire.ConsumeFieldValue(got, typ, msg[n:])
		if skip < 0 {
			return nil
		}
		msg = msg[n+skip:]
	}
	return nil
}

// protobufMagic starts every object the API server encodes as protobuf.
var protobufMagic = []byte("k8s\x00")

// Fields of runtime.Unknown, the envelope of an encoded object, and of its TypeMeta.
var (
	unknownTypeMeta = protoFieldNumber(reflect.TypeFor[runtime.Unknown](), "TypeMeta")
	unknownRaw      = protoFieldNumber(reflect.TypeFor[runtime.Unknown](), "Raw")
	typeMetaKind    = protoFieldNumber(reflect.TypeFor[runtime.TypeMeta](), "Kind")
)

// mapEntryKey is the field of a map entry that holds its key.
const mapEntryKey protowire.Number = 1

// trimPodObject returns the encoded object data with a Pod or PodList in it trimmed
// by podWire, and true; anything else, or data it cannot parse, it leaves to the
// decoder (false).
func trimPodObject(data []byte) ([]byte, bool) {
	envelope, ok := bytes.CutPrefix(data, protobufMagic)
	if !ok {
		return nil, false
	}
	var wire *wireMessage
	var raw []byte
	for rest := envelope; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			return nil, false
		}
		value, m := protowire.ConsumeBytes(rest[n:])
		if typ != protowire.BytesType || m < 0 {
			return nil, false
		}
		rest = rest[n+m:]
		switch num {
		case unknownTypeMeta:
			switch kind := string(bytesField(value, typeMetaKind)); kind {
			case "Pod":
				wire = podWire
			case "PodList":
				wire = podListWire
			default:
				return nil, false
			}
		case unknownRaw:
			raw = value
		}
	}
	if wire == nil || raw == nil {
		return nil, false
	}
	out := append(make([]byte, 0, 512), protobufMagic...)
	for rest := envelope; len(rest) > 0; {
		num, _, n := protowire.ConsumeTag(rest)
		_, m := protowire.ConsumeBytes(rest[n:])
		if num != unknownRaw {
			out = append(out, rest[:n+m]...)
		} else {
			var err error
			if out, err = wire.appendTrimmed(out, unknownRaw, raw); err != nil {
				return nil, false
			}
		}
		rest = rest[n+m:]
	}
	return out, true
}

// podTrimmingDecoder decodes protobuf as its Serializer does, pods and pod lists
// trimmed to podWire first.
type podTrimmingDecoder struct{ runtime.Serializer }

func (d podTrimmingDecoder) Decode(data []byte, gvk *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if trimmed, ok := trimPodObject(data); ok {
		data = trimmed
	}
	return d.Serializer.Decode(data, gvk, into)
}

// podTrimmingSerializers is a NegotiatedSerializer whose protobuf decoder trims pods.
type podTrimmingSerializers struct{ runtime.NegotiatedSerializer }

func (s podTrimmingSerializers) SupportedMediaTypes() []runtime.SerializerInfo {
	infos := append([]runtime.SerializerInfo(nil), s.NegotiatedSerializer.SupportedMediaTypes()...)
	for i, info := range infos {
		if info.MediaType == runtime.ContentTypeProtobuf {
			infos[i].Serializer = podTrimmingDecoder{info.Serializer}
		}
	}
	return infos
}

// podTrimmingClientset is a clientset whose CoreV1 decodes pods trimmed: for the
// pod informer only, whose transform keeps no more than podWire does.
type podTrimmingClientset struct {
	kubernetes.Interface
	core corev1client.CoreV1Interface
}

func (c podTrimmingClientset) CoreV1() corev1client.CoreV1Interface { return c.core }

// NewPodListClient returns the client the pod informer lists and watches with: cs
// for everything but pods, which it decodes trimmed to the fields the cache keeps.
func NewPodListClient(cs kubernetes.Interface, rc *rest.Config) (kubernetes.Interface, error) {
	c := rest.CopyConfig(rc)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = podTrimmingSerializers{scheme.Codecs.WithoutConversion()}
	httpClient, err := rest.HTTPClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("creating the pod client: %w", err)
	}
	restClient, err := rest.RESTClientForConfigAndClient(c, httpClient)
	if err != nil {
		return nil, fmt.Errorf("creating the pod client: %w", err)
	}
	return podTrimmingClientset{Interface: cs, core: corev1client.New(restClient)}, nil
}
