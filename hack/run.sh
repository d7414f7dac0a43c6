#!/usr/bin/env bash
# Builds and runs the cri-mesos daemon with its embedded default configuration.
# Extra arguments are passed to the daemon (e.g. --logging_level=debug).
# A newcomer's first pod gets a network: when the CNI config dir holds no network (a
# node's network plugin installs one later), the embedded default bridge network is used.
# The daemon's own default stays off, so a real node is never given a network it did
# not ask for.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
cargo build --release --bin cri-mesos --bin cri-mesos-supervisor
args=()
cni_dir=${CRI_MESOS_NETWORK_CNI_CONFIG_DIR:-/etc/cni/net.d}
chosen=
for a in "$@"; do
  case $a in
    --network_cni_config_dir=*|--network-cni-config-dir=*) cni_dir=${a#*=} ;;
    --network_cni_default|--network-cni-default|--network_cni_default=*|--network-cni-default=*) chosen=1 ;;
  esac
done
if [[ -z $chosen && -z ${CRI_MESOS_NETWORK_CNI_DEFAULT:-} ]] && ! compgen -G "$cni_dir/*.conf" >/dev/null && ! compgen -G "$cni_dir/*.conflist" >/dev/null &&
   ! compgen -G "$cni_dir/*.json" >/dev/null; then
  echo "run: no CNI network in $cni_dir: using the embedded default bridge network" >&2
  args+=(--network_cni_default=true)
fi
exec target/release/cri-mesos "${args[@]}" "$@"
