#!/bin/bash
# Provision a real Kubernetes API server (+ kube-controller-manager for ownerReference garbage
# collection) on 127.0.0.1 for the operator's integration tests. Adapted from the project's
# shared envtest material (../shared/envtest): Debian bookworm's `kubernetes` 1.20.2 source
# package builds offline with Debian's Go; etcd comes from Debian's etcd-server.
#
#   scripts/envtest/setup.sh build            # apt + build binaries into the cache (idempotent)
#   scripts/envtest/setup.sh start            # start etcd, kube-apiserver, kube-controller-manager
#   scripts/envtest/setup.sh stop             # stop what `start` started (by recorded pid)
#   scripts/envtest/setup.sh restart-apiserver  # stop and start kube-apiserver only (etcd keeps data)
#
# Kubernetes version: $MLEP_ENVTEST_K8S, default the minor of versions.env's KUBERNETES_VERSION
# (1.37): kube-apiserver, kube-controller-manager and etcd are the cluster bed's
# (scripts/cluster.sh build-k8s: Go modules k8s.io/kubernetes at that pin + the etcd it pins,
# cached, ~0.3 s when built), which evaluate CEL validation rules.
# MLEP_ENVTEST_K8S=1.20 keeps the older path below (Debian's source, ~4 min to build).
#
# WORKDIR: $MLEP_ENVTEST_DIR, default ~/.cache/mlep-envtest-k8s-<version>. After `start`:
#   export KUBECONFIG=$WORKDIR/kubeconfig   (admin token, system:masters)
# Needs root and apt access to the machine's configured Debian archive only.
#
# Facts (each was an error first, see ../shared/envtest/README.md):
# - 1.20 builds the GOPATH way: `make WHAT=cmd/kube-apiserver` (needs rsync, jq).
# - vendored modern-go/reflect2 v1.0.1 crashes under Go >= 1.18 -> reflect2-go118.patch.
# - No plain-HTTP port: TLS with a self-made CA and a static token.
# - Service IPs: a /16 (a /24 fills up at 253 Services: "failed to allocate a serviceIP:
#   range is full", found by the 500-endpoint benchmark).
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
. "$HERE/../../versions.env"   # KUBERNETES_VERSION: the cluster bed's, whose binaries these are
K8S=${MLEP_ENVTEST_K8S:-$(echo "${KUBERNETES_VERSION#v}" | cut -d. -f1,2)}
W=${MLEP_ENVTEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlep-envtest-k8s-$K8S}
PORT=${MLEP_ENVTEST_PORT:-6443}
ETCD_PORT=${MLEP_ENVTEST_ETCD_PORT:-2379}
mkdir -p "$W"
cd "$W"

# The cluster bed's binaries (Kubernetes at versions.env's pin and etcd from the Go module proxy).
build_bed() {
  local t0 bin b
  t0=$(date +%s)
  command -v openssl >/dev/null && command -v curl >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl curl ca-certificates >/dev/null
  }
  bin=$("$HERE/../cluster.sh" build-k8s)
  mkdir -p "$W/bin"
  for b in kube-apiserver kube-controller-manager etcd; do ln -sf "$bin/$b" "$W/bin/$b"; done
  echo "[envtest] build: $(( $(date +%s)-t0 )) s ($("$W/bin/kube-apiserver" --version))"
}

build() {
  if [ "$K8S" != 1.20 ]; then build_bed; return; fi
  local t0 t1
  t0=$(date +%s)
  if [ ! -f /etc/apt/sources.list.d/debian-src.sources ]; then
    awk 'BEGIN{RS="";ORS="\n\n"} NR==1{sub(/^Types: deb\n/,"Types: deb-src\n"); print}' \
      /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/debian-src.sources
  fi
  if ! command -v etcd >/dev/null || ! command -v go >/dev/null || ! command -v rsync >/dev/null \
     || ! command -v jq >/dev/null || ! command -v openssl >/dev/null || ! command -v curl >/dev/null \
     || ! command -v dpkg-source >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      etcd-server golang-go dpkg-dev rsync jq openssl curl ca-certificates >/dev/null
  fi
  t1=$(date +%s); echo "[envtest] packages: $((t1-t0)) s"
  if [ ! -x "$W/bin/kube-apiserver" ] || [ ! -x "$W/bin/kube-controller-manager" ]; then
    if [ ! -d "$W"/src ] || ! ls -d "$W"/src/kubernetes-*/ >/dev/null 2>&1; then
      apt-get update -qq
      rm -rf src && mkdir src && (cd src && apt-get source -qq kubernetes >/dev/null 2>&1)
      K=$(echo "$W"/src/kubernetes-*/)
      (cd "$K" && patch -p1 -s < "$HERE/reflect2-go118.patch")
    fi
    K=$(echo "$W"/src/kubernetes-*/)
    for what in kube-apiserver kube-controller-manager; do
      if [ ! -x "$W/bin/$what" ]; then
        (cd "$K" && env -u GOPATH GOCACHE="$W/gocache" GOPROXY=off CGO_ENABLED=0 \
          make -s WHAT=cmd/$what GOLDFLAGS="-s -w" >"$W/build-$what.log" 2>&1) \
          || { echo "[envtest] build of $what failed, see $W/build-$what.log"; tail -20 "$W/build-$what.log"; exit 1; }
        mkdir -p "$W/bin" && cp "$K/_output/bin/$what" "$W/bin/"
      fi
    done
    # The source tree and Go cache (~1.8 GB) are only needed to build.
    rm -rf "$W/src" "$W/gocache"
  fi
  echo "[envtest] build: $(( $(date +%s)-t1 )) s ($("$W/bin/kube-apiserver" --version))"
}

pki() {
  mkdir -p "$W/pki" && cd "$W/pki"
  if [ ! -f server.crt ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj /CN=test-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 3650 -extfile server.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    echo "test-token,admin,admin-uid,system:masters" > tokens.csv
  fi
  cd "$W"
}

wait_ready() {
  local i=0
  until curl -sf --cacert "$W/pki/ca.crt" -H "Authorization: Bearer test-token" \
      "https://127.0.0.1:$PORT/readyz" >/dev/null; do
    i=$((i+1)); [ $i -lt 600 ] || { echo "[envtest] kube-apiserver not ready, see $W/apiserver.log"; tail -20 "$W/apiserver.log"; exit 1; }
    sleep 0.1
  done
}

start_apiserver() {
  "$W/bin/kube-apiserver" --etcd-servers=http://127.0.0.1:$ETCD_PORT \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=$PORT \
    --tls-cert-file=pki/server.crt --tls-private-key-file=pki/server.key \
    --client-ca-file=pki/ca.crt --token-auth-file=pki/tokens.csv \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file=pki/sa.pub --service-account-signing-key-file=pki/sa.key \
    --service-cluster-ip-range=10.0.0.0/16 --authorization-mode=RBAC \
    --endpoint-reconciler-type=none --cert-dir="$W/certs" >>apiserver.log 2>&1 &
  echo $! > apiserver.pid
  wait_ready
}

stop_pid() {
  local f=$1
  if [ -f "$W/$f" ]; then
    local p; p=$(cat "$W/$f")
    if kill "$p" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$p" 2>/dev/null || true
    fi
    rm -f "$W/$f"
  fi
}

start() {
  if [ "$K8S" != 1.20 ]; then build_bed >/dev/null; else [ -x "$W/bin/kube-apiserver" ] || build; fi
  pki
  stop
  rm -rf etcd-data apiserver.log etcd.log controller-manager.log
  local peer=$((ETCD_PORT+1))
  local etcd=etcd
  [ -x "$W/bin/etcd" ] && etcd=$W/bin/etcd
  "$etcd" --name default --data-dir "$W/etcd-data" --log-level warn \
    --listen-client-urls http://127.0.0.1:$ETCD_PORT --advertise-client-urls http://127.0.0.1:$ETCD_PORT \
    --listen-peer-urls http://127.0.0.1:$peer --initial-advertise-peer-urls http://127.0.0.1:$peer \
    --initial-cluster default=http://127.0.0.1:$peer >etcd.log 2>&1 &
  echo $! > etcd.pid
  until curl -sf http://127.0.0.1:$ETCD_PORT/health >/dev/null; do sleep 0.1; done
  start_apiserver
  cat > kubeconfig <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: "$W/pki/ca.crt"}
users:
- name: admin
  user: {token: test-token}
contexts:
- name: local
  context: {cluster: local, user: admin, namespace: default}
current-context: local
KCFG
  # Garbage collection of owned objects (ownerReferences) and namespace deletion; no
  # scheduler or kubelet run here, so Pods stay Pending and tests patch Deployment status.
  local insecure=()  # 1.20 still had an insecure port; later releases removed the flag
  [ "$K8S" = 1.20 ] && insecure=(--port=0)
  "$W/bin/kube-controller-manager" --kubeconfig="$W/kubeconfig" --bind-address=127.0.0.1 --secure-port=0 \
    "${insecure[@]}" --controllers=garbagecollector,namespace --leader-elect=false \
    --use-service-account-credentials=false >controller-manager.log 2>&1 &
  echo $! > controller-manager.pid
  echo "[envtest] ready: export KUBECONFIG=$W/kubeconfig"
}

stop() {
  stop_pid controller-manager.pid
  stop_pid apiserver.pid
  stop_pid etcd.pid
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  restart-apiserver) stop_pid apiserver.pid; pki; start_apiserver ;;
  dir) echo "$W" ;;
  *) echo "usage: $0 build|start|stop|restart-apiserver|dir"; exit 2 ;;
esac
