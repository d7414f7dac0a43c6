#!/usr/bin/env bash
# Lints and renders charts/cri-mesos through the Helm v4 SDK and checks the manifests
# (hack/chart_test.py). The SDK comes from PyPI into a venv under target/ that this
# script creates and refreshes when hack/chart-test.txt changes, so a fresh clone needs
# only python3-venv (hack/install-deps.sh).
# Env: CRI_MESOS_CHART_VENV (default target/chart-venv), CRI_MESOS_BIN (default target/debug/cri-mesos).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${CRI_MESOS_CHART_VENV:-target/chart-venv}
bin=${CRI_MESOS_BIN:-target/debug/cri-mesos}
stamp=$venv/.requirements
if ! cmp -s hack/chart-test.txt "$stamp" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r hack/chart-test.txt
  cp hack/chart-test.txt "$stamp"
fi
[ "$bin" != target/debug/cri-mesos ] || cargo build --bin cri-mesos --bin cri-mesos-supervisor
exec "$venv/bin/python" hack/chart_test.py "$bin"
