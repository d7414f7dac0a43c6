#!/usr/bin/env bash
# Builds release binaries and runs the benchmarks (each prints its figures):
#   pull  - PullImage throughput of a ~300 MB image vs curl on the same blobs
#   pods  - pod start/stop latency, memory and processes per pod, cri-mesos and containerd
#           side by side (same CRI workload, registry and CNI conflist)
#   stats - what kubelet's stats calls cost with 100 running containers (ListContainerStats,
#           ContainerStats, ListPodSandboxStats, ListPodSandboxMetrics, ImageFsInfo)
#   recovery - a pod supervisor killed with kill -9: time until the CRI shows the pod
#           NOTREADY and its container EXITED, and the StopPodSandbox + RemovePodSandbox after
#   soak  - 1000 pod cycles with a kill -9 and restart of the daemon every 100: the daemon's
#           RSS and descriptors per stretch, then what was left (must be nothing)
# Pass bench names to run a subset: hack/bench.sh pods
# Environment of the pods bench: CRI_BENCH_ONLY=cri-mesos|cri-mesos-nocni|containerd measures
# a subset (cri-mesos: its three rows; cri-mesos-nocni: seccomp Unconfined beside
# RuntimeDefault);
# CRI_BENCH_RUNC=/path/to/runc makes containerd use another runc.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh

# Only the benches compare against containerd, so it stays out of install-deps.sh (the tests
# never need it). Debian's packages; the bench starts containerd itself (no systemd here)
# with a private root, state, socket and config, and never touches /etc/containerd.
# Idempotent like install-deps.sh; if it cannot be installed the pods bench says so and
# still prints cri-mesos's figures.
bench_packages=(containerd runc)
missing=()
for p in "${bench_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench: ${missing[*]} missing and not root; the pods bench will skip containerd" >&2
  else
    echo "bench: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq &&
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
      echo "bench: could not install ${missing[*]}; the pods bench will skip containerd" >&2
    fi
  fi
fi

cargo build --release --workspace --bins
benches=("$@")
[ "${#benches[@]}" -gt 0 ] || benches=(pull pods recovery)
for b in "${benches[@]}"; do
  if [ "$b" = soak ]; then
    # The test suite's soak at the bench's count (the tests run 300).
    CRI_MESOS_SOAK_CYCLES=${CRI_MESOS_SOAK_CYCLES:-1000} cargo test --release --test network \
      -- --include-ignored --exact a_soak_with_daemon_kills_leaks_nothing --nocapture
    continue
  fi
  cargo bench --bench "$b"
done
