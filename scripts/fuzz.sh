#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of the filter's config parser+compiler,
# its request path (stream logic with the in-memory host), the shadow comparator, the model
# server's JSON/CSV decoding and model-init's archive unpacker. Targets: fuzz/fuzz_targets/;
# seeds: fuzz/seeds/<target>/ (committed); the growing corpus: fuzz/corpus/ (not committed).
# usage: scripts/fuzz.sh [seconds per target, default 60] [target...]
# A crash stops the run with the reproducer in fuzz/artifacts/<target>/; turn it into a
# regression test beside the code, and add the input to fuzz/seeds/<target>/.
# Installs what it needs (nightly toolchain, cargo-fuzz), idempotently.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-60}
shift || true
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(filter_config filter_stream compare codec unpack)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

cd fuzz
# One instrumented build for every target, then bounded runs.
nice cargo +nightly fuzz build
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"; rm -rf "artifacts/$t"
  printf '\n=== fuzz %s for %ss\n' "$t" "$SECS"
  # -rss_limit_mb: the unpacker's size limit is part of what is tested.
  if ! nice cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECS" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 >"/tmp/mlep-fuzz-$t.log" 2>&1; then
    tail -40 "/tmp/mlep-fuzz-$t.log" >&2
    echo "fuzz target $t failed; reproducer: $(ls "artifacts/$t" 2>/dev/null)" >&2
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added|#[0-9]+ +DONE)' "/tmp/mlep-fuzz-$t.log" || true
done
echo "fuzzing done: ${#TARGETS[@]} targets x ${SECS}s"
