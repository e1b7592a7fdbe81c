# control-plane.sh — sourced by the VM runners (hack/vm/run-tests.sh,
# hack/node/run-tests.sh): a real etcd and kube-apiserver on the host's loopback for a
# guest that reaches them through qemu's forward.

# kubeconfig_for SERVER CA_FILE USER TOKEN: a kubeconfig for USER at https://SERVER. The
# serving certificate names kubernetes(.default.svc) and loopback, not the forwarded
# guest address, hence tls-server-name.
kubeconfig_for() {
  cat <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: host
  cluster:
    server: https://$1
    tls-server-name: kubernetes
    certificate-authority-data: $(base64 -w0 <"$2")
contexts:
- name: host
  context: {cluster: host, user: $3}
current-context: host
users:
- name: $3
  user:
    token: $4
KUBECONFIG
}

# free_port prints a free loopback TCP port whose successor is free too.
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
      ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# start_control_plane RUN GUEST_ADDR KUBE_BIN [NODE_USER]: starts etcd and kube-apiserver
# (binaries from KUBE_BIN, data, certificates and logs in RUN/control-plane) and waits
# up to 120 s for readiness. Sets etcd_pid, apiserver_pid and apiserver_port; writes
# RUN/kubeconfig, a cluster admin at https://GUEST_ADDR, and given NODE_USER
# RUN/node-kubeconfig, that user in the group system:kube-routerd (the one
# packaging/rbac.yaml binds). Returns non-zero, with the logs' tails on stderr, when
# the control plane does not become ready.
start_control_plane() {
  local run=$1 guest_addr=$2 kube_bin=$3 node_user=${4:-}
  local cp_dir=$run/control-plane etcd_port token node_token="" started
  mkdir -p "$cp_dir/pki" "$cp_dir/etcd"
  etcd_port=$(free_port)
  apiserver_port=$(free_port)
  "$kube_bin/etcd" --name default --data-dir "$cp_dir/etcd" --log-level warn --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((etcd_port + 1))" >"$cp_dir/etcd.log" 2>&1 &
  etcd_pid=$!
  token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  echo "$token,admin,admin,system:masters" >"$cp_dir/pki/tokens.csv"
  if [[ -n $node_user ]]; then
    node_token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    echo "$node_token,$node_user,$node_user,system:kube-routerd" >>"$cp_dir/pki/tokens.csv"
  fi
  openssl genrsa -out "$cp_dir/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$cp_dir/pki/sa.key" -pubout -out "$cp_dir/pki/sa.pub" 2>/dev/null
  # Loopback advertise address needs the none endpoint reconciler; no controller-manager
  # runs, so the ServiceAccount admission plugin would reject every Pod. Dual-stack
  # Service ranges, so tests can create IPv6 and dual-stack Services.
  "$kube_bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --secure-port="$apiserver_port" \
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --cert-dir="$cp_dir/pki" --service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/108 \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$cp_dir/pki/sa.pub" \
    --service-account-signing-key-file="$cp_dir/pki/sa.key" \
    --token-auth-file="$cp_dir/pki/tokens.csv" --authorization-mode=RBAC \
    --disable-admission-plugins=ServiceAccount --allow-privileged=true \
    >"$cp_dir/kube-apiserver.log" 2>&1 &
  apiserver_pid=$!
  started=$(date +%s)
  until curl -skf -H "Authorization: Bearer $token" "https://127.0.0.1:$apiserver_port/readyz" >/dev/null 2>&1; do
    if ! kill -0 "$apiserver_pid" 2>/dev/null || ! kill -0 "$etcd_pid" 2>/dev/null ||
      (($(date +%s) - started > 120)); then
      tail -20 "$cp_dir/etcd.log" "$cp_dir/kube-apiserver.log" >&2
      return 1
    fi
    sleep 0.2
  done
  kubeconfig_for "$guest_addr" "$cp_dir/pki/apiserver.crt" admin "$token" >"$run/kubeconfig"
  if [[ -n $node_user ]]; then
    kubeconfig_for "$guest_addr" "$cp_dir/pki/apiserver.crt" "$node_user" "$node_token" >"$run/node-kubeconfig"
  fi
}
