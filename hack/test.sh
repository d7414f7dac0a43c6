#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, unit and end-to-end tests through
# the CRI socket (root-only tests skip with a reason when not root).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests spawn both binaries: build them first (a test target alone does
# not rebuild another package's binary).
cargo build --workspace --bins
# Root-only tests are #[ignore = "needs root"]: run as root (CI), counted as ignored otherwise.
if [ "$(id -u)" -eq 0 ]; then root_only=(--include-ignored); else root_only=(); fi
cargo test --workspace --no-fail-fast -- "${root_only[@]}"
