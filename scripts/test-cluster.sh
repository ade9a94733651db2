#!/usr/bin/env bash
# Smoke test of the cluster bed (scripts/cluster.sh): brings it up (idempotent), then
#  1. a Deployment of the model server (its init container fetching and verifying the Titanic
#     artifact) behind a plain Service becomes Ready through its real readiness probe (/ping);
#  2. a pod with an injected Istio sidecar calls the Service by its DNS name, and the answer
#     comes through its sidecar (Envoy's x-envoy-upstream-service-time on the response);
#  3. a hand-written Gateway + VirtualService on the ingress gateway routes a request from the
#     host (MLEP_GATEWAY) to the model server.
# Predictions are compared with examples/titanic/expected.json. Every wait has a deadline.
#
#   scripts/test-cluster.sh     # a cluster it started is stopped at the end, one that ran stays
#   MLEP_CLUSTER_KEEP=1 scripts/test-cluster.sh   # leave it running either way
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NS=mlep-smoke
HOST=smoke.mlep.test

if ! scripts/cluster.sh status >/dev/null 2>&1 && [ "${MLEP_CLUSTER_KEEP:-0}" != 1 ]; then
  trap 'scripts/cluster.sh down' EXIT
fi
scripts/cluster.sh up
eval "$(scripts/cluster.sh env | sed 's/^/export /')"
kc() { kubectl "$@"; }
fail() { echo "FAIL: $*" >&2; kc -n "$NS" get pods -o wide >&2 || true; exit 1; }

# poll DEADLINE_S DESCRIPTION CMD...
poll() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < end)) || fail "timed out after ${limit}s: $what"
    sleep 0.5
  done
}

# The predictions in a response body match expected.json (model v1, first two inputs).
check_predictions() {
  python3 - "$1" "$ROOT/examples/titanic/expected.json" <<'EOF'
import json, sys
body, expected = json.loads(sys.argv[1]), json.load(open(sys.argv[2]))
want = expected["versions"]["v1"]["predictions"][:2]
got = body["predictions"]
assert len(got) == 2, f"expected 2 predictions, got {got}"
for g, w in zip(got, want):
    assert g["survived"] == w["survived"], (g, w)
    assert abs(g["probability"] - w["probability"]) <= expected["tolerance"], (g, w)
EOF
}

echo "--> namespace $NS (fresh)"
kc delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
kc create namespace "$NS" >/dev/null

SHA=$(awk '$2 == "titanic-v1.tar.gz" {print $1}' examples/titanic/artifacts/SHA256SUMS)
TAG=$(awk -F'"' '/^version = / {print $2; exit}' Cargo.toml)
echo "--> model server Deployment + Service"
kc apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: titanic}
spec:
  replicas: 1
  selector: {matchLabels: {app: titanic}}
  template:
    metadata:
      labels: {app: titanic, version: v1}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}
      initContainers:
        - name: model-init
          image: ghcr.io/k8smlendpoints/mlep-model-init:$TAG
          imagePullPolicy: IfNotPresent
          env:
            - {name: MLEP_ARTIFACT_URI, value: "file:///artifacts/titanic-v1.tar.gz"}
            - {name: MLEP_ARTIFACT_SHA256, value: "$SHA"}
            - {name: MLEP_MODEL_DIR, value: /opt/ml/model}
          volumeMounts:
            - {name: artifacts, mountPath: /artifacts, readOnly: true}
            - {name: model, mountPath: /opt/ml}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
      containers:
        - name: model
          image: ghcr.io/k8smlendpoints/mlep-model-server:$TAG
          imagePullPolicy: IfNotPresent
          ports: [{name: http, containerPort: 8080}]
          readinessProbe:
            httpGet: {path: /ping, port: http}
            periodSeconds: 2
          volumeMounts:
            - {name: model, mountPath: /opt/ml, readOnly: true}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
      volumes:
        - name: artifacts
          hostPath: {path: "$ROOT/examples/titanic/artifacts", type: Directory}
        - name: model
          emptyDir: {}
---
apiVersion: v1
kind: Service
metadata: {name: titanic}
spec:
  selector: {app: titanic}
  ports: [{name: http, port: 8080, targetPort: http, protocol: TCP}]
EOF
kc -n "$NS" rollout status deploy/titanic --timeout=180s || fail "model server Deployment not Ready"
ready=$(kc -n "$NS" get deploy titanic -o jsonpath='{.status.readyReplicas}')
[ "$ready" = 1 ] || fail "readyReplicas=$ready"
echo "ok: model server Ready by its readiness probe"

echo "--> client pod with an injected sidecar"
kc apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: client, sidecar.istio.io/inject: "true"}
spec:
  containers:
    - name: client
      image: docker.io/mlep/toolbox:1
      imagePullPolicy: Never
EOF
kc -n "$NS" wait --for=condition=Ready pod/client --timeout=180s || fail "client pod not Ready"
containers=$(kc -n "$NS" get pod client -o jsonpath='{.spec.containers[*].name} {.spec.initContainers[*].name}')
[[ " $containers " == *" istio-proxy "* ]] || fail "no istio-proxy injected (containers: $containers)"
echo "ok: sidecar injected ($containers)"

URL=http://titanic.$NS.svc.cluster.local:8080
call_from_client() {
  kc -n "$NS" exec client -c client -- curl -sS -i -m 5 -X POST -H 'Content-Type: application/json' \
    --data-binary "$(cat examples/titanic/request.json)" "$URL/invocations" 2>/dev/null
}
# The sidecar's config (the Service's listener and cluster) may arrive after the pod is Ready.
out=""
through_sidecar() { out=$(call_from_client) && [[ $out == *"HTTP/1.1 200"* ]] && grep -qi '^x-envoy-upstream-service-time:' <<<"$out"; }
poll 60 "POST $URL/invocations from the client, through its sidecar" through_sidecar
check_predictions "$(sed -n '/^\r\{0,1\}$/,$p' <<<"$out" | tail -n +2)" || fail "wrong predictions: $out"
echo "ok: in-mesh client reached $URL by DNS through its sidecar, predictions match"

echo "--> Gateway + VirtualService on the ingress gateway"
kc apply -n "$NS" -f - >/dev/null <<EOF
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: smoke}
spec:
  selector: {istio: ingressgateway}
  servers:
    - port: {number: 80, name: http, protocol: HTTP}
      hosts: ["$HOST"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: smoke}
spec:
  hosts: ["$HOST"]
  gateways: [smoke]
  http:
    - route:
        - destination: {host: titanic.$NS.svc.cluster.local, port: {number: 8080}}
EOF
body=""
via_gateway() {
  body=$(curl -sS -f -m 5 -X POST -H "Host: $HOST" -H 'Content-Type: application/json' \
    --data-binary @examples/titanic/request.json "$MLEP_GATEWAY/invocations" 2>/dev/null)
}
poll 60 "POST $MLEP_GATEWAY/invocations (Host: $HOST) through the ingress gateway" via_gateway
check_predictions "$body" || fail "wrong predictions through the gateway: $body"
code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -H "Host: unknown.mlep.test" "$MLEP_GATEWAY/ping")
[ "$code" = 404 ] || fail "a host no VirtualService names should get 404 from the gateway, got $code"
echo "ok: host -> ingress gateway -> VirtualService -> model server; unknown host 404"

kc delete namespace "$NS" --wait=false >/dev/null
echo "cluster smoke test passed"
