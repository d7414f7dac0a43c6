#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit and end-to-end tests through
# the CRI socket (root-only tests skip with a reason when not root).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
