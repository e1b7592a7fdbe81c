#!/bin/sh
# Stop the service before its files go. The programmed dataplane stays until
# `kube-routerd cleanup` is run, so removing the package does not cut traffic by
# itself.
set -e
case "$1" in
    remove|0)
        if [ -d /run/systemd/system ]; then
            systemctl disable --now kube-routerd.service >/dev/null 2>&1 || true
        fi
        ;;
esac
exit 0
