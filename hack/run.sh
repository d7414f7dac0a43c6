#!/usr/bin/env bash
# Builds and runs the cri-mesos daemon with its embedded default configuration.
# Extra arguments are passed to the daemon (e.g. --logging_level=debug).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
cargo build --release --bin cri-mesos --bin cri-mesos-supervisor
exec target/release/cri-mesos "$@"
