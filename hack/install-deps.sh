#!/usr/bin/env bash
# Installs what cri-mesos and its tests need on a fresh Debian machine. Idempotent:
# packages already present are not touched, so it is cheap to call before every run.
set -euo pipefail

packages=(
  protobuf-compiler            # protoc, for the k8s-cri bindings
  libseccomp-dev               # the daemon compiles seccomp profiles (linked statically)
  containernetworking-plugins  # real CNI plugins (/usr/lib/cni)
  docker-registry              # the registry the pull tests talk to on 127.0.0.1
  busybox-static               # the test images are built from /bin/busybox
  iproute2 iptables jq
  util-linux                   # nsenter, unshare, mount tools used by tests; ipcmk for critest
  ca-certificates
  # critest (hack/critest.sh): its stand-in images are built and pushed with these;
  # Go for building it comes from ../shared/critest/build-cri-tools.sh
  skopeo curl openssl gcc python3
  python3-venv                 # hack/chart-test.sh: the Helm SDK from PyPI in a venv
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages ${missing[*]} and not root; install them with apt-get" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
