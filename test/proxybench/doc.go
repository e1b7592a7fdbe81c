// Package proxybench runs kube-routerd's service proxy and kube-proxy, in IPVS and in
// nftables mode, side by side inside the test VM (`-tags vm`) on one workload in one
// API server: each as its real binary in a fresh node namespace, measured from
// outside the same way (full sync, the sync of one change, API write to kernel
// latency, peak memory). kube-proxy is built from the Kubernetes release the test API
// server comes from (`hack/kube-bin.sh kube-proxy`). It holds benchmarks, which
// `make bench` runs (`-test.short` runs them at 100 and 1,000 Services, a quick check
// of the harness), and the host-side test of how it reads kube-proxy's nftables table.
package proxybench
