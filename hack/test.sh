#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit and end-to-end tests through
# the CRI socket (root-only tests skip when not root).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests spawn both binaries: build them first (a test target alone does
# not rebuild another package's binary).
cargo build --workspace --bins
# Tests that need root are `#[ignore = "needs root"]`: run them when we are.
if [ "$(id -u)" -eq 0 ]; then
  cargo test --workspace --no-fail-fast -- --include-ignored
else
  cargo test --workspace --no-fail-fast
fi
