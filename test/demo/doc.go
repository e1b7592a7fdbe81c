// Package demo is `make demo`: kube-routerd at work on a small simulated cluster, told
// step by step in the terminal. Its scenes are tests, so `make test` runs them too (in
// smoke mode: the story goes to the test log instead of the terminal) and the demo
// cannot rot. Network policy, routing and an external BIRD router run in network
// namespaces on the host (`-tags integration`); the service proxy needs IPVS, which the
// host kernel lacks, so its scene runs in the test VM (`-tags vm`, hack/vm/run-tests.sh).
package demo
