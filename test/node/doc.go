// Package node tests kube-routerd the way an operator runs it (`-tags node`, run by
// hack/node/run-tests.sh): on a Debian 12 machine with systemd as PID 1, installed
// with `apt install ./kube-routerd_<version>_amd64.deb`, started with `systemctl enable
// --now`, reconfigured, upgraded under traffic, removed and purged. The tests run as
// root inside that machine and act through apt, systemctl, journalctl and the CNI
// plugins, as an operator and a kubelet would. The machine itself is node-1; node-2 is
// a network namespace in it running the packaged binary, joined to node-1 by a veth
// link, with its pods behind a Service.
package node
