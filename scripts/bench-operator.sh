#!/bin/bash
# Operator benchmark: a fresh kube-apiserver (scripts/envtest), N endpoints (default 500,
# MLEP_BENCH_ENDPOINTS), the release build of mlep-operator. Prints latency, writes, memory.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
scripts/envtest/setup.sh build
stop() { scripts/envtest/setup.sh stop || true; }
trap stop EXIT
scripts/envtest/setup.sh start
export KUBECONFIG="$(scripts/envtest/setup.sh dir)/kubeconfig"
# Thin LTO-free build: the numbers are dominated by API round trips, not codegen.
CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
  cargo bench -p mlep-operator --features envtest --bench operator
