#!/usr/bin/env bash
# Builds release binaries and runs the benchmarks (each prints its figures):
#   pull  - PullImage throughput of a ~300 MB image vs curl on the same blobs
#   pods  - pod start/stop latency, memory and processes per pod
# Pass bench names to run a subset: hack/bench.sh pods
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
cargo build --release --workspace --bins
benches=("$@")
[ "${#benches[@]}" -gt 0 ] || benches=(pull pods)
for b in "${benches[@]}"; do
  cargo bench --bench "$b"
done
