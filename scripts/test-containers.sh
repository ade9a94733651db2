#!/usr/bin/env bash
# Build and test the model containers' binaries natively (no Docker here): mlep-model-init
# against a real HTTP server started by the tests, a real S3-protocol server (versitygw,
# built from its Go module by scripts/cluster.sh build-s3, cached) and a GCS-protocol one
# (fake-gcs-server, scripts/cluster.sh build-gcs), mlep-model-server over real HTTP with the
# committed Titanic artifacts, mlep-capture-sink writing to a directory and to the same S3
# server. Installs nothing Python: the artifacts and expected.json are committed
# (examples/titanic/train.py re-creates them, see its header).
#
#   scripts/test-containers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
# Tools the tests call: sh (kill builtin), true, sha256sum (coreutils). Present on Debian.
for tool in sh true sha256sum; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

echo "--> committed artifacts match SHA256SUMS"
(cd examples/titanic/artifacts && sha256sum -c --quiet SHA256SUMS)

echo "--> fmt (clippy runs once for the workspace in scripts/test.sh checks)"
cargo fmt -p mlep-model-init -p mlep-model-server -p mlep-capture-sink -- --check

echo "--> the S3 server of the object storage tests (versitygw, Go module, cached)"
MLEP_S3_SERVER=$(scripts/cluster.sh build-s3)
MLEP_GCS_SERVER=$(scripts/cluster.sh build-gcs)   # fake-gcs-server: model-init's gs:// tests
export MLEP_S3_SERVER MLEP_GCS_SERVER

echo "--> tests"
cargo test --locked -p mlep-model-init -p mlep-model-server -p mlep-capture-sink
