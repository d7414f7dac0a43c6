#!/usr/bin/env bash
# Tests the installer image end to end: starts a loopback registry on a free port of its
# own, builds and pushes the image there with hack/build-installer-image.sh, then has
# cri-mesos (on its own socket and dirs) pull it through the CRI and run it: a container
# of the image prints `cri-mesos --version`, `install.sh --help` and `nsenter --version`,
# which proves the binaries, bash and nsenter find their libraries in the base layer.
# Needs root (the daemon's pods) and crictl.
# Env: BIN_DIR (binaries put in the image, default target/release), DAEMON (the daemon
# that pulls, default the one put in the image).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "installer-image-test: not run (needs root: the daemon runs a pod)" >&2
  exit 0
fi
command -v crictl >/dev/null || ../shared/critest/build-cri-tools.sh
export BIN_DIR=${BIN_DIR:-target/release}
daemon=${DAEMON:-$BIN_DIR/cri-mesos}

t=$(mktemp -d /var/tmp/cri-mesos-image-test.XXXXXX)
tag=cmiit$$
reg_pid='' daemon_pid=''
fail() { echo "installer-image-test: FAIL: $*" >&2; [ -f "$t/daemon.log" ] && tail -n 30 "$t/daemon.log" >&2; exit 1; }
crictl() { command crictl --config "$t/crictl.yaml" "$@"; }
cleanup() {
  if [ -n "$daemon_pid" ]; then
    crictl rmp --force --all >/dev/null 2>&1 || true
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  if [ -n "$reg_pid" ]; then kill "$reg_pid" 2>/dev/null || true; wait "$reg_pid" 2>/dev/null || true; fi
  # After a failure half-way: the daemon the installer started, and its supervisors.
  hack/install.sh uninstall --root "$t/host" --purge >/dev/null 2>&1 || true
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null || true)
    if [[ $exe == "$t"/* ]]; then kill -KILL "${p#/proc/}" 2>/dev/null || true; fi
  done
  sleep 0.5 # a killed process leaves its cgroup when it has exited
  # The daemon made its dirs shared bind mounts of themselves.
  awk -v d="$t/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" || true; done
  # The daemons' --cgroups_root (they remove their pods' cgroups, not the root) and the
  # installed daemon's own.
  find /sys/fs/cgroup -maxdepth 2 -type d -name "$tag*" 2>/dev/null | while read -r c; do
    find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$t"
  daemon_pid='' reg_pid=''
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
cat >"$t/registry.yml" <<EOR
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $t/registry}
http: {addr: $reg}
EOR
docker-registry serve "$t/registry.yml" >"$t/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 1 50); do curl -fsS -o /dev/null "http://$reg/v2/" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "http://$reg/v2/" || { cat "$t/registry.log" >&2; fail "the registry did not start"; }

image=$reg/cri-mesos-installer:test
hack/build-installer-image.sh "$image"
printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n' "$t/cri.sock" "$t/cri.sock" >"$t/crictl.yaml"

"$daemon" --listen "$t/cri.sock" --work_dir "$t/work" --runtime_dir "$t/run" \
  --http_address 127.0.0.1:0 --network_cni_config_dir "$t/cni" --cgroups_root "$tag" \
  >"$t/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do [ -S "$t/cri.sock" ] && break; sleep 0.1; done
[ -S "$t/cri.sock" ] || fail "the daemon did not open its socket"

crictl pull "$image" || fail "cri-mesos did not pull $image"
# Captured, not piped into grep -q: grep leaving early would fail the writer (pipefail).
images=$(crictl images) || fail "ListImages"
grep -q "$reg/cri-mesos-installer *test" <<<"$images" || fail "the image is not listed"

# Host network: the test needs no CNI network, and the chart's pods use the host's too.
jq -n --arg d "$t/logs" '{metadata: {name: "installer", namespace: "test", uid: "installer-1"},
  log_directory: $d, linux: {security_context: {namespace_options: {network: 2}}}}' >"$t/pod.json"
jq -n --arg i "$image" '{metadata: {name: "version"}, image: {image: $i}, log_path: "version.log",
  command: ["/bin/sh", "-c",
    "/opt/cri-mesos-installer/bin/cri-mesos --version && /opt/cri-mesos-installer/install.sh --help | head -n 1 && nsenter --version"]}' \
  >"$t/ctr.json"
pod=$(crictl runp "$t/pod.json") || fail "RunPodSandbox"
ctr=$(crictl create "$pod" "$t/ctr.json" "$t/pod.json") || fail "CreateContainer"
crictl start "$ctr" >/dev/null || fail "StartContainer"
for _ in $(seq 1 100); do
  [ "$(crictl inspect "$ctr" | jq -r .status.state)" = CONTAINER_EXITED ] && break
  sleep 0.1
done
status=$(crictl inspect "$ctr")
log=$(cat "$t/logs/version.log" 2>/dev/null || true)
echo "$log"
[ "$(jq -r .status.state <<<"$status")" = CONTAINER_EXITED ] || fail "the container did not exit"
[ "$(jq -r .status.exitCode <<<"$status")" = 0 ] || fail "the container exited $(jq -r .status.exitCode <<<"$status")"
version=$("$daemon" --version)
grep -q "$version\$" <<<"$log" || fail "no '$version' in the container's log"
grep -q "Installs cri-mesos on a host" <<<"$log" || fail "install.sh did not run in the image"
grep -q "nsenter from util-linux" <<<"$log" || fail "nsenter did not run in the image"
crictl stopp "$pod" >/dev/null && crictl rmp "$pod" >/dev/null

# The chart's installer, as its init container runs it: a privileged container of the
# image, host PID and network, the host's paths mounted at the same paths, installs a
# second daemon on the host through nsenter (direct mode: no systemd here), which must
# keep running when the pod is gone. Everything is below $t/host with its own socket,
# dirs and cgroups; --root only keeps the pid and log files there too.
h=$t/host
mkdir -p "$h/chart"
cat >"$h/chart/config.yaml" <<EOC
listen: $h/run/cri-mesos/cri-mesos.sock
work_dir: $h/var/lib/cri-mesos
runtime_dir: $h/run/cri-mesos
network_cni_config_dir: $h/etc/cni/net.d
http_address: 127.0.0.1:0
cgroups_root: $tag-inner
EOC
jq -n --arg d "$t/logs" '{metadata: {name: "installer-chart", namespace: "test", uid: "installer-2"},
  log_directory: $d, linux: {security_context: {privileged: true, namespace_options: {network: 2, pid: 2}}}}' >"$t/pod2.json"
# The chart enters pid 1's namespaces; this test enters its own shell's, which are the
# host's too: where pid 1 is a sandbox's init (as on CI's VMs) its namespaces may not be
# opened, even by root.
jq -n --arg i "$image" --arg h "$h" --arg tag "$tag" --arg host_pid "$$" '{metadata: {name: "install"}, image: {image: $i},
  log_path: "install.log", mounts: [{container_path: $h, host_path: $h}],
  linux: {security_context: {privileged: true, namespace_options: {network: 2, pid: 2}}},
  command: ["/opt/cri-mesos-installer/install.sh", "install", "--root", $h,
    "--host-exec", ("nsenter --target " + $host_pid + " --mount --uts --ipc --net --pid --cgroup --"),
    "--service-manager", "direct", "--cgroup", ($tag + "-daemon"), "--config", ($h + "/chart/config.yaml")]}' \
  >"$t/ctr2.json"
pod=$(crictl runp "$t/pod2.json") || fail "RunPodSandbox (host pid)"
ctr=$(crictl create "$pod" "$t/ctr2.json" "$t/pod2.json") || fail "CreateContainer (privileged)"
crictl start "$ctr" >/dev/null || fail "StartContainer (privileged)"
for _ in $(seq 1 300); do
  [ "$(crictl inspect "$ctr" | jq -r .status.state)" = CONTAINER_EXITED ] && break
  sleep 0.1
done
cat "$t/logs/install.log" || true
[ "$(crictl inspect "$ctr" | jq -r .status.exitCode)" = 0 ] || fail "the installer exited non-zero"
crictl stopp "$pod" >/dev/null && crictl rmp "$pod" >/dev/null
inner() { command crictl --runtime-endpoint "unix://$h/run/cri-mesos/cri-mesos.sock" --timeout 10s "$@"; }
version=$(inner version 2>/dev/null) || true
grep -q 'RuntimeName: *cri-mesos' <<<"$version" || fail "the daemon the installer started did not outlive its pod"
pid=$(cat "$h/run/cri-mesos.pid")
grep -q "$tag-daemon" "/proc/$pid/cgroup" || fail "the installed daemon is still in a pod's cgroup"
hack/install.sh uninstall --root "$h" --purge
kill -0 "$pid" 2>/dev/null && fail "uninstall left the installed daemon running"
left=$(find "$h" -mindepth 1 -not -type d -not -path "$h/chart/*")
[ -z "$left" ] || fail "uninstall left $left"
left=$(find /sys/fs/cgroup -maxdepth 2 -type d \( -name "$tag-inner" -o -name "$tag-daemon" \) 2>/dev/null)
[ -z "$left" ] || fail "uninstall left cgroups $left"
cleanup
left=$(find /sys/fs/cgroup -maxdepth 3 -type d -name "$tag*" 2>/dev/null; grep -F "$t/" /proc/self/mountinfo || true)
[ -z "$left" ] || fail "left behind: $left"
echo "installer-image-test: built, pushed to $reg, pulled and run by cri-mesos; its installer ran in a pod and the daemon it started outlived the pod"
