// Package vmsmoke holds the smoke test of the VM test tier (`-tags vm`, run by
// hack/vm/run-tests.sh): it proves the guest kernel forwards through IPVS and the guest
// reaches the real API server on the host.
package vmsmoke
