// Package vme2e runs the real kube-routerd binary inside the test VM (`-tags vm`, run
// by hack/vm/run-tests.sh), whose kernel has IPVS and IPIP: nodes and pods are network
// namespaces, the API server is the host's, and each scenario is one a user would see
// on a real cluster (a restart under traffic, a multi-subnet overlay, an outside BGP
// router reaching a Service). The guest has no Go toolchain, so the tests run the
// binary `make build` leaves in bin/.
package vme2e
