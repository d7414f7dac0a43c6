#!/usr/bin/env bash
# Tests hack/install.sh on this machine: installs into a temp root with its own socket,
# dirs and cgroups (nothing collides with a daemon or test already running), starts the
# daemon without systemd (the documented fallback), asks it `crictl version`, restarts
# it, uninstalls with --purge, and fails when anything is left: processes, mounts,
# files, cgroups; then drives the systemd branch against a stand-in systemctl. Needs
# root (the daemon makes shared mounts) and crictl.
# Env: BIN_DIR (default target/debug, built by hack/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test: not run (needs root: the daemon makes shared mounts)" >&2
  exit 0
fi
command -v crictl >/dev/null || ../shared/critest/build-cri-tools.sh
bin_dir=${BIN_DIR:-target/debug}
# Up to date every time (a no-op when it is): stale binaries would test an old runtime.
[ "$bin_dir" != target/debug ] || cargo build --bin cri-mesos --bin cri-mesos-supervisor

root=$(mktemp -d /var/tmp/cri-mesos-install-test.XXXXXX)
tag=cmit$$
sock=$root/run/cri-mesos/cri-mesos.sock
inst=(hack/install.sh --root "$root")
# Also after a failure half-way, when uninstall may not know all: whatever runs from the
# root, mounts below it, and the test's cgroups go.
cleanup() {
  "${inst[@]}" uninstall --purge >/dev/null 2>&1 || true
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null || true)
    if [[ $exe == "$root"/* ]]; then kill -KILL "${p#/proc/}" 2>/dev/null || true; fi
  done
  sleep 0.5 # a killed process leaves its cgroup when it has exited
  awk -v d="$root/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" || true; done
  find /sys/fs/cgroup -maxdepth 2 -type d -name "$tag*" 2>/dev/null | while read -r c; do
    find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$root"
}
trap cleanup EXIT
# What the chart's ConfigMap hands the installer: a registry CA and a CNI network.
src=$(mktemp -d)
trap 'cleanup; rm -rf "$src"' EXIT
printf '%s\n' '-----BEGIN CERTIFICATE-----' '-----END CERTIFICATE-----' >"$src/cert-127.0.0.1_5000.crt"
echo '{"cniVersion": "1.0.0", "name": "install-test", "plugins": [{"type": "loopback"}]}' >"$src/cni"
# And what its projected pull Secret hands it.
echo '{"auths": {"127.0.0.1:5000": {"auth": "dTpw"}}}' >"$src/auth-127.0.0.1_5000.json"
fail() { echo "install-test: FAIL: $*" >&2; exit 1; }

"${inst[@]}" install --service-manager direct --bin-dir "$bin_dir" --cgroup "$tag-daemon" \
  --flag http_address=127.0.0.1:0 --flag cgroups_root="$tag" \
  --flag network_cni_config_dir="$root/etc/cni/net.d" --certs "$src" --auth "$src" --cni-config "$src/cni" --cni-file 10-test.conflist
[ "$(stat -c %a "$root/etc/cri-mesos/auth/127.0.0.1_5000.json")" = 600 ] &&
  [ "$(stat -c %a "$root/etc/cri-mesos/auth")" = 700 ] || fail "the registry credentials are not root-only"
for f in opt/cri-mesos/bin/cri-mesos opt/cri-mesos/bin/cri-mesos-supervisor opt/cri-mesos/bin/cri-mesos-install etc/cri-mesos/config.yaml \
  etc/systemd/system/cri-mesos.service etc/cri-mesos/certs/127.0.0.1_5000.crt etc/cni/net.d/10-test.conflist; do
  [ -f "$root/$f" ] || fail "$f not installed"
done
grep -q "^ExecStart=$root/opt/cri-mesos/bin/cri-mesos --config $root/etc/cri-mesos/config.yaml\$" \
  "$root/etc/systemd/system/cri-mesos.service" || fail "the unit does not start the installed binary"
# No systemd runs here, but its checker reads the unit offline (systemd is Debian's).
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$root/etc/systemd/system/cri-mesos.service" || fail "systemd-analyze verify refused the unit"
fi
pid=$(cat "$root/run/cri-mesos.pid")
[ "$(readlink "/proc/$pid/exe")" = "$root/opt/cri-mesos/bin/cri-mesos" ] || fail "pid $pid is not the installed daemon"
grep -q "$tag-daemon" "/proc/$pid/cgroup" || fail "the daemon is not in its own cgroup: $(cat "/proc/$pid/cgroup")"

version=$(crictl --runtime-endpoint "unix://$sock" --timeout 10s version) || fail "crictl version"
echo "$version"
grep -q 'RuntimeName:  *cri-mesos' <<<"$version" || fail "crictl version did not answer cri-mesos"
"${inst[@]}" status
# A pod (host network: no CNI needed) whose supervisor must survive the daemon's restart
# and go at uninstall.
jq -n --arg d "$root/pod-logs" '{metadata: {name: "survivor", namespace: "test", uid: "survivor-1"},
  log_directory: $d, linux: {security_context: {namespace_options: {network: 2}}}}' >"$src/pod.json"
pod=$(crictl --runtime-endpoint "unix://$sock" --timeout 30s runp "$src/pod.json") || fail "RunPodSandbox"
supervisor=$(pgrep -f -- "--pod-id $pod" | head -n 1) || fail "no supervisor for the pod"
crictl --runtime-endpoint "unix://$sock" --timeout 10s info | jq -e '.status.conditions[] | select(.type == "NetworkReady") | .status' >/dev/null ||
  fail "no NetworkReady condition"

# The same install again (a node's reboot runs the chart's installer again): no restart.
"${inst[@]}" install --service-manager direct --bin-dir "$bin_dir" --cgroup "$tag-daemon" \
  --flag http_address=127.0.0.1:0 --flag cgroups_root="$tag" \
  --flag network_cni_config_dir="$root/etc/cni/net.d" --certs "$src" --cni-config "$src/cni" --cni-file 10-test.conflist
[ "$(cat "$root/run/cri-mesos.pid")" = "$pid" ] || fail "an unchanged reinstall restarted the daemon"
# A changed one (an upgrade; here a flag and no more CA or CNI config): files replaced
# under the running daemon, which restarts.
"${inst[@]}" install --service-manager direct --bin-dir "$bin_dir" --cgroup "$tag-daemon" \
  --flag http_address=127.0.0.1:0 --flag cgroups_root="$tag" --flag logging_level=debug \
  --flag network_cni_config_dir="$root/etc/cni/net.d"
new=$(cat "$root/run/cri-mesos.pid")
[ "$new" != "$pid" ] || fail "a changed reinstall did not restart the daemon"
[ ! -e "$root/etc/cri-mesos/certs" ] && [ ! -e "$root/etc/cri-mesos/auth" ] &&
  [ ! -e "$root/etc/cni/net.d/10-test.conflist" ] ||
  fail "a reinstall without them left the CA, the credentials or the CNI config"
crictl --runtime-endpoint "unix://$sock" --timeout 10s version >/dev/null || fail "no answer after the reinstall"
kill -0 "$supervisor" 2>/dev/null || fail "the pod's supervisor did not survive the restart"
[ "$(crictl --runtime-endpoint "unix://$sock" --timeout 10s inspectp "$pod" | jq -r .status.state)" = SANDBOX_READY ] ||
  fail "the pod is not ready after the restart"

# watch restarts a daemon that died, as systemd's Restart=on-failure would.
kill -KILL "$new"
timeout 20 "${inst[@]}" watch & watch=$!
for _ in $(seq 1 100); do
  p=$(cat "$root/run/cri-mesos.pid" 2>/dev/null || true)
  # The killed daemon left its socket: only an answer tells the new one is serving.
  [ -n "$p" ] && [ "$p" != "$new" ] &&
    crictl --runtime-endpoint "unix://$sock" --timeout 2s version >/dev/null 2>&1 && break
  sleep 0.1
done
kill -TERM "$watch"; wait "$watch" || true
crictl --runtime-endpoint "unix://$sock" --timeout 10s version >/dev/null || fail "watch did not restart the daemon"
kill -0 "$supervisor" 2>/dev/null || fail "the pod's supervisor did not survive the daemon's death"

# Uninstalled by the copy the host keeps, as a chart-installed node is.
"$root/opt/cri-mesos/bin/cri-mesos-install" --root "$root" uninstall --purge
kill -0 "$supervisor" 2>/dev/null && fail "uninstall left the pod's supervisor running"

left=()
for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null || true)
  [[ $exe == "$root"/* ]] && left+=("process ${p#/proc/} ($exe)")
done
while read -r m; do left+=("mount $m"); done < <(awk -v d="$root" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo)
while read -r f; do left+=("file $f"); done < <(find "$root" -mindepth 1 \( -not -type d -o -name '*cri-mesos*' \))
while read -r c; do left+=("cgroup $c"); done < <(find /sys/fs/cgroup -maxdepth 3 -type d -name "$tag*" 2>/dev/null)
if [ "${#left[@]}" -gt 0 ]; then
  printf 'install-test: left behind: %s\n' "${left[@]}" >&2
  exit 1
fi

# The systemd branch, against a stand-in systemctl (no systemd runs here) that runs the
# unit's ExecStart and records each call: install enables and starts, an unchanged
# reinstall does not restart, uninstall stops, disables and reloads.
mkdir -p "$src/bin"
cat >"$src/bin/systemctl" <<'EOS'
#!/usr/bin/env bash
set -euo pipefail
echo "$*" >>"$STUB_DIR/calls"
args=("$@")
[ "${args[0]}" = --quiet ] && args=("${args[@]:1}")
pid() { cat "$STUB_DIR/pid" 2>/dev/null || true; }
active() { p=$(pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
case ${args[0]} in
  daemon-reload) ;;
  enable | disable) [ "${args[1]}" = --quiet ] ;;
  is-active) active ;;
  start) active || { exec_start=$(sed -n 's/^ExecStart=//p' "$STUB_UNIT")
    # shellcheck disable=SC2086 # the unit's command line
    setsid $exec_start </dev/null >>"$STUB_DIR/log" 2>&1 & echo $! >"$STUB_DIR/pid"; } ;;
  stop) if active; then p=$(pid); kill -TERM "$p"; while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; fi ;;
  restart) "$0" stop cri-mesos.service; "$0" start cri-mesos.service ;;
  *) echo "stub systemctl: ${args[0]}?" >&2; exit 1 ;;
esac
EOS
chmod +x "$src/bin/systemctl"
export STUB_DIR=$src STUB_UNIT=$root/etc/systemd/system/cri-mesos.service
sd=(env PATH="$src/bin:$PATH" hack/install.sh --root "$root")
"${sd[@]}" install --service-manager systemd --bin-dir "$bin_dir" \
  --flag http_address=127.0.0.1:0 --flag cgroups_root="$tag" --flag network_cni_config_dir="$root/etc/cni/net.d"
crictl --runtime-endpoint "unix://$sock" --timeout 10s version >/dev/null || fail "systemd: no answer"
first=$(cat "$src/pid")
"${sd[@]}" install --service-manager systemd --bin-dir "$bin_dir" \
  --flag http_address=127.0.0.1:0 --flag cgroups_root="$tag" --flag network_cni_config_dir="$root/etc/cni/net.d"
[ "$(cat "$src/pid")" = "$first" ] || fail "systemd: an unchanged reinstall restarted the daemon"
[[ $("${sd[@]}" status) == "running (systemd)" ]] || fail "systemd: status"
"${sd[@]}" uninstall --purge
kill -0 "$first" 2>/dev/null && fail "systemd: uninstall left the daemon running"
calls=$(tr '\n' ';' <"$src/calls")
for want in "daemon-reload;enable --quiet cri-mesos.service;start cri-mesos.service" \
  "stop cri-mesos.service;disable --quiet cri-mesos.service"; do
  [[ $calls == *"$want"* ]] || fail "systemd: expected the calls $want in $calls"
done
left_sd=$(find "$root" -mindepth 1 \( -not -type d -o -name "*cri-mesos*" \))
[ -z "$left_sd" ] || fail "systemd: uninstall left $left_sd"
echo "install-test: installed, started, answered, restarted, uninstalled (direct and systemd); nothing left"
