#!/usr/bin/env bash
# Runs the CRI validation suite (critest, cri-tools v1.32, serial) against a freshly built
# cri-mesos on its own socket, dirs, bridge and subnet, and judges the result against
# tests/critest-expected-failures.txt: an unexpected failure fails the run, and so does a
# listed spec that passes (the list only shrinks). A failed spec is re-run once alone
# before it counts, so one flake on a small machine does not block a landing.
#
# Usage: hack/critest.sh [--bin DIR] [--focus REGEX]
#   --bin DIR     where cri-mesos and cri-mesos-supervisor are (default target/debug,
#                 built when missing)
#   --focus REGEX run only the matching specs (the list is then judged for those only)
# Env: CRITEST_WORK (cache of tools' images and the registry, default /var/tmp/critest),
#      CRITEST_TOOLS (where crictl and critest go, default /usr/local/bin).
# Everything it starts (registry, daemon, pods, mounts, cgroups, bridge, IPs) is stopped
# and removed on exit; what could not be removed is named and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SHARED=$(cd "$REPO/../shared/critest" && pwd)
BIN=$REPO/target/debug
FOCUS=
while [[ $# -gt 0 ]]; do
  case $1 in
    --bin) BIN=$(cd "$2" && pwd); shift 2 ;;
    --focus) FOCUS=$2; shift 2 ;;
    *) sed -n 2,16p "$0"; exit 2 ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "critest: needs root (namespaces, mounts, cgroups, CNI)" >&2; exit 1; }
EXPECTED=$REPO/tests/critest-expected-failures.txt
export CRITEST_WORK=${CRITEST_WORK:-/var/tmp/critest}
TOOLS=${CRITEST_TOOLS:-/usr/local/bin}
export PATH=$TOOLS:$PATH

log() { echo "critest: $*" >&2; }

hack/install-deps.sh
python3 hack/critest-judge.py selftest >&2
# Go comes from bookworm-backports: this script adds the suite and installs it when missing.
"$SHARED/build-cri-tools.sh" "$TOOLS" >&2
if [[ ! -x $BIN/cri-mesos || ! -x $BIN/cri-mesos-supervisor ]]; then
  cargo build --bin cri-mesos --bin cri-mesos-supervisor
fi

# Short paths: supervisor sockets live under the runtime dir and unix socket paths are
# limited to 108 bytes.
RUN=/run/cri-mesos-critest
W=$CRITEST_WORK/run
BRIDGE=cmcritest0
SUBNET=10.213.0.0/24
NETNAME=cri-mesos-critest
CGROOT=cri-mesos-critest
SOCK=$RUN/cri.sock
EP=unix://$SOCK
REG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export REG=127.0.0.1:$REG_PORT
export RUN_DIR=$RUN/registry
DAEMON_PID=

# Every cgroup hierarchy, v1 controllers and cgroup2 alike, from mountinfo (the fs type
# follows the "-" separator, after a variable number of optional fields).
cgroup_mounts() {
  awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^cgroup2?$/) print $5; break } }' \
    /proc/self/mountinfo | sort -u
}

# Pods first (their supervisors, netns and IPs go with them), then the daemon, then
# whatever a crash could have left: mounts, cgroups, the bridge, host-local IPs.
cleanup() {
  local rc=$? leaks=()
  set +e
  if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    local c=(crictl --timeout 30s --runtime-endpoint "$EP" --image-endpoint "$EP")
    for p in $("${c[@]}" pods -q 2>/dev/null); do
      "${c[@]}" stopp "$p" >/dev/null 2>&1
      "${c[@]}" rmp -f "$p" >/dev/null 2>&1
    done
    kill -TERM "$DAEMON_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DAEMON_PID" 2>/dev/null
    wait "$DAEMON_PID" 2>/dev/null
  fi
  # A supervisor outlives the daemon by design: any left here belongs to a pod that was
  # not removed, which is a leak of the run.
  local sv
  sv=$(pgrep -f "cri-mesos-supervisor.*$RUN" || true)
  if [[ -n $sv ]]; then leaks+=("supervisors: $(echo $sv)"); kill -KILL $sv 2>/dev/null; fi
  if [[ -f $RUN_DIR/registry.pid ]]; then
    kill "$(cat "$RUN_DIR/registry.pid")" 2>/dev/null
  fi
  local m
  m=$(awk -v a="$RUN" -v b="$W" 'index($5, a) == 1 || index($5, b) == 1 { print $5 }' /proc/self/mountinfo)
  if [[ -n $m ]]; then
    # The daemon's own shared runtime and work dirs are expected until it is gone; only
    # what remains below them counts.
    local own
    own=$(echo "$m" | grep -v -x -e "$RUN" -e "$W/work" -e "$RUN/rt" || true)
    [[ -n $own ]] && leaks+=("mounts: $(echo $own)")
    echo "$m" | sort -r | while read -r p; do umount -l "$p" 2>/dev/null; done
  fi
  local h
  for h in $(cgroup_mounts); do
    if [[ -d $h/$CGROOT ]]; then
      local left
      left=$(find "$h/$CGROOT" -mindepth 1 -type d 2>/dev/null | head -5)
      [[ -n $left ]] && leaks+=("cgroups in $h: $(echo $left)")
      find "$h/$CGROOT" -depth -type d -exec rmdir {} + 2>/dev/null
    fi
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE" 2>/dev/null; fi
  local ips=/var/lib/cni/networks/$NETNAME
  if [[ -d $ips ]]; then
    local held
    held=$(find "$ips" -maxdepth 1 -name '10.*' -printf '%f ' 2>/dev/null)
    [[ -n $held ]] && leaks+=("host-local IPs: $held")
    rm -rf "$ips"
  fi
  iptables-save 2>/dev/null | grep -q "$NETNAME" && leaks+=("iptables rules naming $NETNAME")
  rm -rf "$RUN" "$W"
  if [[ ${#leaks[@]} -gt 0 ]]; then
    log "LEFT BEHIND after the run:"
    printf '  %s\n' "${leaks[@]}" >&2
    [[ $rc -eq 0 ]] && rc=1
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$RUN" "$W"
mkdir -p "$RUN" "$W/net.d" "$W/results"
"$SHARED/start-registry.sh" >&2
"$SHARED/images.sh" critest >"$W/images.log" 2>&1 || { cat "$W/images.log" >&2; exit 1; }

cat >"$W/net.d/10-critest.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NETNAME",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$SUBNET"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

M=http://$REG
"$BIN/cri-mesos" --listen "$SOCK" --runtime_dir "$RUN/rt" --work_dir "$W/work" \
  --cgroups_root "$CGROOT" \
  --insecure_registries="$REG" \
  --registry_mirrors="registry.k8s.io=$M,k8s.gcr.io=$M,gcr.io=$M" \
  --network_cni_config_dir "$W/net.d" --network_cni_plugins_dir /usr/lib/cni \
  --http_address=127.0.0.1:0 >"$W/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 1 100); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || { cat "$W/daemon.log" >&2; log "daemon did not come up"; exit 1; }

# run-critest.sh writes $RES/NAME-critest{.txt,-junit.xml,-summary.txt}.
export RES=$W/results
run() {
  local name=$1; shift
  "$SHARED/run-critest.sh" "$EP" "$name" "$@" >/dev/null || true
  [[ -s $RES/$name-critest-junit.xml ]] || {
    tail -50 "$RES/$name-critest.txt" >&2; log "critest wrote no report"; exit 1; }
}
focus_args=()
[[ -n $FOCUS ]] && focus_args=(--ginkgo.focus "$FOCUS")
log "running critest against $EP (registry $REG)"
run full "${focus_args[@]}"
# Later runs must not pull again what the first pulled: the stand-ins are the same.
export KEEP_IMAGES=1

# The verdict: names are the JUnit testcase names, exactly as in the expected list.
judge=$REPO/hack/critest-judge.py
python3 "$judge" report "$RES/full-critest-junit.xml" >"$W/verdict.txt"
failed=()
while IFS= read -r name; do failed+=("$name"); done < <(python3 "$judge" failed "$RES/full-critest-junit.xml")
rescued=()
for name in "${failed[@]}"; do
  if grep -qxF "$name" <(python3 "$judge" names "$EXPECTED"); then continue; fi
  log "re-running alone: $name"
  re=rerun-$(( ${#rescued[@]} + RANDOM ))
  run "$re" --ginkgo.focus "$(python3 "$judge" focus "$name")"
  if [[ -z $(python3 "$judge" failed "$RES/$re-critest-junit.xml") ]] &&
     python3 "$judge" passed "$RES/$re-critest-junit.xml" | grep -qxF "$name"; then
    log "a re-run saved: $name (it failed in the full run, passed alone)"
    rescued+=("$name")
  fi
done
cat "$W/verdict.txt"
printf '%s\n' "${rescued[@]}" >"$W/rescued.txt"
python3 "$judge" verdict "$RES/full-critest-junit.xml" "$EXPECTED" "$W/rescued.txt" ${FOCUS:+--partial}
