#!/bin/sh
# Make systemd see the (new) unit and load the kernel modules the node needs. The
# service is not started or enabled here: the operator first puts a kubeconfig in
# /etc/kube-router/ and runs
#   systemctl enable --now kube-routerd
# On upgrade a running daemon is restarted so it runs the new binary; the dataplane
# stays programmed across the restart.
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    # Load what /usr/lib/modules-load.d/kube-routerd.conf lists now, not at the next
    # boot: the service is usually started without a reboot in between.
    systemctl restart systemd-modules-load.service >/dev/null 2>&1 || true
    if systemctl is-active --quiet kube-routerd.service; then
        systemctl try-restart kube-routerd.service >/dev/null 2>&1 || true
    fi
fi
exit 0
