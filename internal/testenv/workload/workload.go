// Package workload makes Kubernetes objects shaped like the ones real clusters hold,
// at any count, for benchmarks and for the tests that check the informers' cache
// transform: Pods as kubelet and the ReplicaSet controller leave them (several
// containers with env, probes, resources and mounts, statuses, owner references,
// managed fields), Nodes with their status, images and conditions, Services with
// several ports and kubectl's last-applied annotation, EndpointSlices of up to 100
// endpoints, and NetworkPolicies.
//
// Everything is a pure function of the index, so two calls give equal objects.
package workload

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Size is how many objects of each kind a cluster has.
type Size struct {
	Nodes, Pods, Namespaces int
	// Services each have EndpointsPerService endpoints (pods of the cluster), in
	// EndpointSlices of at most 100 endpoints, as the EndpointSlice controller packs them.
	Services, EndpointsPerService int
	Policies                      int
}

// Envelope is Kubernetes' published scalability envelope (5,000 nodes, 150,000 pods,
// 10,000 Services) with 100,000 endpoints and 1,000 policies.
var Envelope = Size{Nodes: 5000, Pods: 150000, Namespaces: 500, Services: 10000, EndpointsPerService: 10, Policies: 1000}

// Scale returns s with every count multiplied by f (at least one of each kind that
// s has), keeping endpoints per Service.
func (s Size) Scale(f float64) Size {
	n := func(x int) int {
		if x == 0 {
			return 0
		}
		return max(1, int(float64(x)*f))
	}
	return Size{Nodes: n(s.Nodes), Pods: n(s.Pods), Namespaces: n(s.Namespaces), Services: n(s.Services),
		EndpointsPerService: s.EndpointsPerService, Policies: n(s.Policies)}
}

func (s Size) String() string {
	return fmt.Sprintf("%d nodes, %d pods, %d Services x %d endpoints, %d policies",
		s.Nodes, s.Pods, s.Services, s.EndpointsPerService, s.Policies)
}

// MaxSliceEndpoints is the EndpointSlice controller's default slice size.
const MaxSliceEndpoints = 100

// created is the creation time every object carries: fixed, so objects are equal.
var created = metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))

// NodeName is node i's name.
func NodeName(i int) string { return fmt.Sprintf("node-%05d", i) }

// NamespaceName is namespace i's name.
func NamespaceName(i int) string { return fmt.Sprintf("team-%04d", i) }

// NodeIP is node i's InternalIP, in 10.128.0.0/14.
func NodeIP(i int) netip.Addr { return addrAt(netip.MustParseAddr("10.128.0.0"), i+1) }

// PodCIDR is node i's pod CIDR, a /24 in 100.64.0.0/10.
func PodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(addrAt(netip.MustParseAddr("100.64.0.0"), i*256), 24)
}

// PodNode is the node pod i runs on: pods are spread round robin.
func (s Size) PodNode(i int) int { return i % s.Nodes }

// PodIP is pod i's address inside its node's pod CIDR.
func (s Size) PodIP(i int) netip.Addr {
	return addrAt(PodCIDR(s.PodNode(i)).Addr(), 2+(i/s.Nodes)%250)
}

// PodNamespace is the namespace of pod i.
func (s Size) PodNamespace(i int) string { return NamespaceName(i % s.Namespaces) }

// PodName is pod i's name.
func PodName(i int) string { return fmt.Sprintf("web-7d9f8b6c4d-%06d", i) }

// Tier is pod i's tier label: frontend, backend or data, varying within every
// namespace and app.
func Tier(i int) string { return []string{"frontend", "backend", "data"}[(i/7)%3] }

// App is the app label of pod i: every pod of an app sits in one namespace, and a
// Service or policy selects one app.
func (s Size) App(i int) string { return fmt.Sprintf("app-%d", i%max(1, s.Services)) }

func addrAt(base netip.Addr, n int) netip.Addr {
	b := base.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// managedFields is an entry like those the API server records per field manager:
// the JSON of every field the manager set.
func managedFields(manager string, op metav1.ManagedFieldsOperationType, subresource string, fields ...string) metav1.ManagedFieldsEntry {
	var b strings.Builder
	b.WriteString(`{"f:metadata":{"f:labels":{".":{}`)
	for _, f := range fields {
		fmt.Fprintf(&b, `,"f:%s":{}`, f)
	}
	b.WriteString(`}},"f:spec":{`)
	for i, f := range fields {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"f:%s":{".":{},"f:name":{},"f:value":{}}`, f)
	}
	b.WriteString(`}}`)
	return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, APIVersion: "v1", Time: &created,
		FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(b.String()), Subresource: subresource}
}

// Node is node i of the cluster, as kubelet and the node controllers write it.
func (s Size) Node(i int) *corev1.Node {
	name := NodeName(i)
	zone := fmt.Sprintf("zone-%c", 'a'+i%3)
	images := make([]corev1.ContainerImage, 40)
	for j := range images {
		images[j] = corev1.ContainerImage{
			Names: []string{
				fmt.Sprintf("registry.example.com/team-%d/service-%d@sha256:%064x", j%7, j, j*7919+i),
				fmt.Sprintf("registry.example.com/team-%d/service-%d:v1.%d.%d", j%7, j, j, i%10),
			},
			SizeBytes: int64(20_000_000 + j*1_000_003),
		}
	}
	conditions := make([]corev1.NodeCondition, 0, 5)
	for _, c := range []struct {
		t      corev1.NodeConditionType
		status corev1.ConditionStatus
		reason string
	}{
		{corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"},
		{corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"},
		{corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"},
		{corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"},
		{"NetworkUnavailable", corev1.ConditionFalse, "RouteCreated"},
	} {
		conditions = append(conditions, corev1.NodeCondition{Type: c.t, Status: c.status, Reason: c.reason,
			Message: "kubelet is posting " + c.reason, LastHeartbeatTime: created, LastTransitionTime: created})
	}
	resources := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("32"),
		corev1.ResourceMemory:           resource.MustParse("131900724Ki"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("479079112Ki"),
		"hugepages-1Gi":                 resource.MustParse("0"),
		"hugepages-2Mi":                 resource.MustParse("0"),
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, CreationTimestamp: created,
			Labels: map[string]string{
				"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
				"beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
				corev1.LabelTopologyZone: zone, corev1.LabelTopologyRegion: "region-1",
				corev1.LabelInstanceTypeStable: "m6i.8xlarge", "node.example.com/pool": fmt.Sprintf("pool-%d", i%4),
			},
			Annotations: map[string]string{
				"node.alpha.kubernetes.io/ttl":                           "0",
				"volumes.kubernetes.io/controller-managed-attach-detach": "true",
				"kubeadm.alpha.kubernetes.io/cri-socket":                 "unix:///run/containerd/containerd.sock",
				"csi.volume.kubernetes.io/nodeid":                        fmt.Sprintf(`{"ebs.csi.aws.com":"i-%017x"}`, i),
			},
			ManagedFields: []metav1.ManagedFieldsEntry{
				managedFields("kubelet", metav1.ManagedFieldsOperationUpdate, "", "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch"),
				managedFields("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, "", "podCIDR", "podCIDRs"),
				managedFields("kubelet", metav1.ManagedFieldsOperationUpdate, "status", "conditions", "images", "nodeInfo", "allocatable", "capacity"),
			},
		},
		Spec: corev1.NodeSpec{
			PodCIDR: PodCIDR(i).String(), PodCIDRs: []string{PodCIDR(i).String()},
			ProviderID: fmt.Sprintf("aws:///%s/i-%017x", zone, i),
		},
		Status: corev1.NodeStatus{
			Capacity: resources, Allocatable: resources, Conditions: conditions, Images: images,
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: NodeIP(i).String()},
				{Type: corev1.NodeHostName, Address: name},
				{Type: corev1.NodeInternalDNS, Address: name + ".region-1.compute.internal"},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
			NodeInfo: corev1.NodeSystemInfo{
				MachineID: fmt.Sprintf("%032x", i), SystemUUID: fmt.Sprintf("ec2%029x", i), BootID: fmt.Sprintf("%032x", i*31),
				KernelVersion: "6.1.0-28-amd64", OSImage: "Debian GNU/Linux 12 (bookworm)", ContainerRuntimeVersion: "containerd://1.7.24",
				KubeletVersion: "v1.37.0", OperatingSystem: "linux", Architecture: "amd64",
			},
		},
	}
}

// Namespace is namespace i.
func (s Size) Namespace(i int) *corev1.Namespace {
	name := NamespaceName(i)
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: name, CreationTimestamp: created,
		Labels: map[string]string{"kubernetes.io/metadata.name": name, "team": fmt.Sprintf("team-%d", i%20), "env": []string{"prod", "staging"}[i%2]},
		Annotations: map[string]string{
			"kubectl.kubernetes.io/last-applied-configuration": fmt.Sprintf(`{"apiVersion":"v1","kind":"Namespace","metadata":{"labels":{"team":"team-%d"},"name":"%s"}}`, i%20, name),
		},
		ManagedFields: []metav1.ManagedFieldsEntry{managedFields("kubectl-client-side-apply", metav1.ManagedFieldsOperationUpdate, "", "team", "env")},
	}}
}

func container(name, image string, port int32, env int) corev1.Container {
	c := corev1.Container{
		Name: name, Image: image,
		Command: []string{"/bin/" + name}, Args: []string{"--listen=:" + fmt.Sprint(port), "--log-format=json", "--metrics"},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "config", MountPath: "/etc/" + name, ReadOnly: true},
			{Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
		},
		TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile,
		ImagePullPolicy: corev1.PullIfNotPresent,
	}
	if port != 0 {
		c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: port, Protocol: corev1.ProtocolTCP}}
		probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http"), Scheme: corev1.URISchemeHTTP}},
			PeriodSeconds: 10, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3}
		c.LivenessProbe, c.ReadinessProbe = probe, probe
	}
	for j := range env {
		c.Env = append(c.Env, corev1.EnvVar{Name: fmt.Sprintf("SETTING_%02d", j), Value: fmt.Sprintf("value-of-setting-%d-for-%s", j, name)})
	}
	return c
}

// Pod is pod i, Running on its node, as the ReplicaSet controller and kubelet leave it.
func (s Size) Pod(i int) *corev1.Pod {
	ns, app := s.PodNamespace(i), s.App(i)
	node := s.PodNode(i)
	ip, hostIP := s.PodIP(i).String(), NodeIP(node).String()
	truth := true
	spec := corev1.PodSpec{
		NodeName: NodeName(node), ServiceAccountName: "default", RestartPolicy: corev1.RestartPolicyAlways,
		DNSPolicy: corev1.DNSClusterFirst, SchedulerName: "default-scheduler", EnableServiceLinks: &truth,
		InitContainers: []corev1.Container{container("migrate", "registry.example.com/"+app+"/migrate:v1.2.3", 0, 4)},
		Containers: []corev1.Container{
			container("server", "registry.example.com/"+app+"/server:v1.2.3", 8080, 12),
			container("metrics-exporter", "registry.example.com/exporter:v0.9.1", 9100, 3),
		},
		Volumes: []corev1.Volume{
			{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: app + "-config"}}}},
			{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
				{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
			}}}},
		},
		Tolerations: []corev1.Toleration{
			{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
			{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
		},
	}
	// The metrics exporter's port is named too: named ports are what network policy reads.
	spec.Containers[1].Ports[0].Name = "metrics"
	statuses := make([]corev1.ContainerStatus, len(spec.Containers))
	for j, c := range spec.Containers {
		statuses[j] = corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: fmt.Sprintf("%s@sha256:%064x", c.Image, i*7+j),
			ContainerID: fmt.Sprintf("containerd://%064x", i*13+j), Ready: true, Started: &truth,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: created}},
		}
	}
	var conditions []corev1.PodCondition
	for _, t := range []corev1.PodConditionType{"PodReadyToStartContainers", corev1.PodInitialized, corev1.PodReady, corev1.ContainersReady, corev1.PodScheduled} {
		conditions = append(conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: created})
	}
	rs := app + "-7d9f8b6c4d"
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: PodName(i), Namespace: ns, UID: types.UID(fmt.Sprintf("6f1c2e4a-0000-4000-8000-%012d", i)), CreationTimestamp: created,
			GenerateName: rs + "-",
			Labels:       map[string]string{"app": app, "pod-template-hash": "7d9f8b6c4d", "tier": Tier(i), "version": "v1"},
			Annotations:  map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "9100", "kubectl.kubernetes.io/restartedAt": created.Format(time.RFC3339)},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs,
				UID: types.UID(fmt.Sprintf("9a1c2e4a-0000-4000-8000-%012d", i%max(1, s.Services))), Controller: &truth, BlockOwnerDeletion: &truth}},
			ManagedFields: []metav1.ManagedFieldsEntry{
				managedFields("kube-controller-manager", metav1.ManagedFieldsOperationUpdate, "", "app", "pod-template-hash", "tier", "version", "containers", "initContainers", "volumes"),
				managedFields("kubelet", metav1.ManagedFieldsOperationUpdate, "status", "conditions", "containerStatuses", "initContainerStatuses", "podIP", "podIPs", "hostIP"),
			},
		},
		Spec: spec,
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, Conditions: conditions, QOSClass: corev1.PodQOSBurstable,
			HostIP: hostIP, HostIPs: []corev1.HostIP{{IP: hostIP}},
			PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &created,
			ContainerStatuses: statuses,
			InitContainerStatuses: []corev1.ContainerStatus{{Name: "migrate", Image: spec.InitContainers[0].Image, Ready: true,
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: created, FinishedAt: created}}}},
		},
	}
}

// ServiceName is Service i's name.
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// ServiceNamespace is Service i's namespace: the one its app's pods live in.
func (s Size) ServiceNamespace(i int) string { return s.PodNamespace(i) }

// ClusterIP is Service i's cluster IP, in 10.96.0.0/16 (the test API server's range).
func ClusterIP(i int) netip.Addr { return addrAt(netip.MustParseAddr("10.96.1.0"), i) }

// Service is Service i, selecting app i, with an HTTP, a gRPC and a metrics port.
func (s Size) Service(i int) *corev1.Service {
	name, ns := ServiceName(i), s.ServiceNamespace(i)
	single := corev1.IPFamilyPolicySingleStack
	cluster := corev1.ServiceInternalTrafficPolicyCluster
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns, CreationTimestamp: created, UID: types.UID(fmt.Sprintf("5e7c2e4a-0000-4000-8000-%012d", i)),
			Labels: map[string]string{"app": s.App(i), "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": "web-1.4.2"},
			Annotations: map[string]string{
				"meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": ns,
				"kubectl.kubernetes.io/last-applied-configuration": fmt.Sprintf(`{"apiVersion":"v1","kind":"Service","metadata":{"labels":{"app":"%s"},"name":"%s","namespace":"%s"},"spec":{"ports":[{"name":"http","port":80,"targetPort":"http"},{"name":"grpc","port":9090,"targetPort":9090},{"name":"metrics","port":9100,"targetPort":"metrics"}],"selector":{"app":"%s"}}}`, s.App(i), name, ns, s.App(i)),
			},
			ManagedFields: []metav1.ManagedFieldsEntry{managedFields("helm", metav1.ManagedFieldsOperationUpdate, "", "app", "ports", "selector")},
		},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: ClusterIP(i).String(), ClusterIPs: []string{ClusterIP(i).String()},
			Selector: map[string]string{"app": s.App(i)}, SessionAffinity: corev1.ServiceAffinityNone,
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}, IPFamilyPolicy: &single, InternalTrafficPolicy: &cluster,
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "grpc", Port: 9090, TargetPort: intstr.FromInt32(9090), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: 9100, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}

// ServicePods are the pod indexes behind Service i: its app's pods, wrapping around.
func (s Size) ServicePods(i int) []int {
	out := make([]int, s.EndpointsPerService)
	for j := range out {
		out[j] = (i + j*max(1, s.Services)) % s.Pods
	}
	return out
}

// EndpointSlices are Service i's slices of at most MaxSliceEndpoints endpoints.
func (s Size) EndpointSlices(i int) []*discoveryv1.EndpointSlice {
	svc := s.Service(i)
	pods := s.ServicePods(i)
	var out []*discoveryv1.EndpointSlice
	for start := 0; start < len(pods); start += MaxSliceEndpoints {
		chunk := pods[start:min(len(pods), start+MaxSliceEndpoints)]
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Name: fmt.Sprintf("%s-%05x", svc.Name, start), Namespace: svc.Namespace, CreationTimestamp: created,
				GenerateName: svc.Name + "-",
				Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io",
					"app": s.App(i)},
				Annotations:     map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": created.Format(time.RFC3339)},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID}},
				ManagedFields:   []metav1.ManagedFieldsEntry{managedFields("endpointslice-controller.k8s.io", metav1.ManagedFieldsOperationUpdate, "", "addressType", "endpoints", "ports")},
			},
			AddressType: discoveryv1.AddressTypeIPv4,
		}
		for _, name := range []string{"http", "grpc", "metrics"} {
			port := map[string]int32{"http": 8080, "grpc": 9090, "metrics": 9100}[name]
			proto := corev1.ProtocolTCP
			slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
		}
		for _, p := range chunk {
			ready, serving, terminating := true, true, false
			node, zone := NodeName(s.PodNode(p)), fmt.Sprintf("zone-%c", 'a'+s.PodNode(p)%3)
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{s.PodIP(p).String()},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
				NodeName:   &node, Zone: &zone,
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: s.PodNamespace(p), Name: PodName(p),
					UID: types.UID(fmt.Sprintf("6f1c2e4a-0000-4000-8000-%012d", p))},
			})
		}
		out = append(out, slice)
	}
	return out
}

// NetworkPolicy is policy i: it isolates one app for ingress and egress and admits
// its own tier, a team's namespaces and a monitoring CIDR on named and numbered ports.
func (s Size) NetworkPolicy(i int) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	http, grpc := intstr.FromString("http"), intstr.FromInt32(9090)
	ns := s.ServiceNamespace(i)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("allow-%05d", i), Namespace: ns, CreationTimestamp: created,
			Annotations:   map[string]string{"kubectl.kubernetes.io/last-applied-configuration": fmt.Sprintf(`{"kind":"NetworkPolicy","metadata":{"name":"allow-%05d"}}`, i)},
			ManagedFields: []metav1.ManagedFieldsEntry{managedFields("kubectl-client-side-apply", metav1.ManagedFieldsOperationUpdate, "", "podSelector", "ingress", "egress")},
		},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": s.App(i)}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &http}, {Protocol: &tcp, Port: &grpc}},
				From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "frontend"}}},
					{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("team-%d", i%20)}}},
					{IPBlock: &networkingv1.IPBlock{CIDR: "10.200.0.0/16", Except: []string{"10.200.1.0/24"}}},
				},
			}},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "data"}}}},
			}},
		},
	}
}
