//go:build tools

// Package tools pins the real control-plane binaries the integration tests run:
// kube-apiserver and etcd at the versions the Kubernetes release was tested with, and
// the kube-proxy of the same release that `make bench` compares the service proxy with.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
