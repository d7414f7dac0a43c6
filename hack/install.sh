#!/usr/bin/env bash
# Installs cri-mesos on a host and runs it there: the same steps on a plain host and on a
# Kubernetes node, where the chart's installer image runs this very script.
#
#   install.sh install [--bin-dir DIR] [--config FILE] [--flag KEY=VALUE]... [--no-start]
#                      [--certs DIR] [--auth DIR] [--cni-config FILE --cni-file NAME]
#   install.sh start | stop | restart | status | watch
#   install.sh uninstall [--purge]
#
# Options (anywhere on the line):
#   --root DIR            every default path is taken below DIR (tests install into a temp root)
#   --prefix DIR          binaries go to DIR/bin (default /opt/cri-mesos)
#   --config-dir DIR      config.yaml and install.env (default /etc/cri-mesos)
#   --unit-dir DIR        the systemd unit (default /etc/systemd/system)
#   --service-manager M   auto (systemd when it runs, else direct), systemd or direct
#   --host-exec CMD       prefix running a command on the host: the chart gives
#                         "nsenter --target 1 --mount --uts --ipc --net --pid --cgroup --"
#   --cgroup NAME         direct mode: move the daemon into this cgroup of every hierarchy,
#                         so that it leaves the cgroup of the pod that started it
#
# install copies both binaries (they must sit in one directory: the daemon finds the
# supervisor beside itself), writes config.yaml (from --config, or from --flag pairs), the
# unit and install.env (what uninstall removes), then starts or restarts the service.
# Without systemd ("direct"), the daemon runs detached under setsid with a pid file and a
# log file; `watch` (the chart's long-running container) restarts it when it dies, as
# systemd's Restart=on-failure would. uninstall removes the pods (through crictl when it
# is there), stops the daemon, unmounts the dirs it made shared and removes every file it
# installed; --certs DIR installs DIR/cert-HOST.crt as <config-dir>/certs/HOST.crt (the
# chart's registry CAs), --auth DIR installs DIR/auth-HOST.json as
# <config-dir>/auth/HOST.json, mode 0600 (the chart's registry pull Secrets: the daemon
# reads them at each pull, so a change needs no restart), and --cni-config a CNI network config into the daemon's
# --network_cni_config_dir; --purge also removes the work and runtime dirs (images, checkpoints) and the
# daemon's cgroups.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

cmd=
root=
prefix=
config_dir=
unit_dir=
manager=auto
host_exec=
cgroup=
bin_dir=
config_src=
flags=()
certs=
auths=
cni_config=
cni_file=
start=1
purge=
while [ $# -gt 0 ]; do
  case $1 in
    install | start | stop | restart | status | watch | uninstall) cmd=$1 ;;
    --root) root=${2%/}; shift ;;
    --prefix) prefix=$2; shift ;;
    --config-dir) config_dir=$2; shift ;;
    --unit-dir) unit_dir=$2; shift ;;
    --service-manager) manager=$2; shift ;;
    --host-exec) host_exec=$2; shift ;;
    --cgroup) cgroup=$2; shift ;;
    --bin-dir) bin_dir=$2; shift ;;
    --config) config_src=$2; shift ;;
    --flag) flags+=("$2"); shift ;;
    --certs) certs=$2; shift ;;
    --auth) auths=$2; shift ;;
    --cni-config) cni_config=$2; shift ;;
    --cni-file) cni_file=$2; shift ;;
    --no-start) start= ;;
    --purge) purge=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$cmd" ] || { echo "install.sh: no subcommand (see --help)" >&2; exit 2; }
config_dir=${config_dir:-$root/etc/cri-mesos}

# host CMD...: runs CMD on the host (in the chart, through nsenter into pid 1).
host() {
  if [ -n "$host_exec" ]; then
    # shellcheck disable=SC2086 # the prefix is a command line on purpose
    $host_exec "$@"
  else
    "$@"
  fi
}

# The state of an installation, written by install and read by every other subcommand,
# so that stop and uninstall act on what was installed and not on today's defaults.
load_state() {
  local env=$config_dir/install.env
  if [ -f "$env" ]; then
    # shellcheck disable=SC1090
    . "$env"
  elif [ "$cmd" != install ]; then
    echo "install.sh: $env not found: nothing installed under this --config-dir/--root" >&2
    exit 1
  fi
}

# config_value KEY DEFAULT: a top-level scalar of config.yaml (the flat form this script
# and the chart write).
config_value() {
  local v
  v=$(awk -v k="$1" '$1 == k":" { sub(/^[^:]*:[ \t]*/, ""); gsub(/^["'\'']|["'\'']$/, ""); print; exit }' \
    "$config_dir/config.yaml" 2>/dev/null || true)
  echo "${v:-$2}"
}

systemd_running() { host test -d /run/systemd/system && host sh -c 'command -v systemctl' >/dev/null 2>&1; }

pid_alive() {
  local pid state
  pid=$(host cat "$PIDFILE" 2>/dev/null || true)
  [ -n "$pid" ] || return 1
  # A daemon killed a moment ago is a zombie until its new parent reaps it.
  state=$(host cat "/proc/$pid/stat" 2>/dev/null | sed 's/.*) //' | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] && echo "$pid"
}

running() {
  if [ "$MANAGER" = systemd ]; then
    host systemctl is-active --quiet cri-mesos.service
  else
    pid_alive >/dev/null
  fi
}

# Until the daemon serves: its socket is listed in /proc/net/unix while bound. A daemon
# that crashed leaves the file behind (the next one replaces it), which is not listed.
wait_socket() {
  # A minute: a daemon recovering many pods takes a while to serve.
  for _ in $(seq 1 600); do
    host awk -v p="$LISTEN" '$NF == p { f = 1 } END { exit !f }' /proc/net/unix && return 0
    running || break
    sleep 0.1
  done
  echo "install.sh: cri-mesos did not open $LISTEN; its log:" >&2
  if [ "$MANAGER" = systemd ]; then host journalctl -u cri-mesos.service -n 50 --no-pager >&2 || true
  else host tail -n 50 "$LOG" >&2 || true; fi
  return 1
}

# The daemon's cgroup in each hierarchy, v1 or v2, under the daemon's --cgroups_hierarchy.
daemon_cgroups() {
  local h=$CGROUPS_HIERARCHY
  if host test -f "$h/cgroup.procs"; then echo "$h/$CGROUP"; return; fi
  for d in $(host sh -c "ls -d $h/*/"); do
    host test -f "$d/cgroup.procs" && echo "${d%/}/$CGROUP"
  done
  return 0
}

do_start() {
  if [ "$MANAGER" = systemd ]; then
    host systemctl daemon-reload
    host systemctl enable --quiet cri-mesos.service
    host systemctl start cri-mesos.service
  elif ! running; then
    host mkdir -p "$(dirname "$LOG")" "$(dirname "$PIDFILE")"
    # setsid: the daemon is nobody's child and in no session, so neither this shell's
    # exit nor a hangup reaches it; it survives as systemd's service would.
    host sh -c 'setsid "$1" --config "$2" </dev/null >>"$3" 2>&1 & echo $! >"$4"' \
      sh "$PREFIX/bin/cri-mesos" "$config_dir/config.yaml" "$LOG" "$PIDFILE"
    if [ -n "$CGROUP" ]; then
      local pid
      pid=$(host cat "$PIDFILE")
      for cg in $(daemon_cgroups); do
        host mkdir -p "$cg"
        # A new v1 cpuset cgroup has no cpus or mems and refuses tasks: inherit them.
        for f in cpuset.cpus cpuset.mems; do
          if host test -f "$cg/$f" && [ -z "$(host cat "$cg/$f")" ]; then
            host sh -c 'cat "$1/../$2" >"$1/$2"' sh "$cg" "$f"
          fi
        done
        host sh -c 'echo "$1" >"$2/cgroup.procs"' sh "$pid" "$cg"
      done
    fi
  fi
  wait_socket
  echo "cri-mesos is running ($MANAGER), serving $LISTEN"
}

do_stop() {
  if [ "$MANAGER" = systemd ]; then
    host systemctl stop cri-mesos.service || true
    return
  fi
  local pid
  pid=$(pid_alive) || { host rm -f "$PIDFILE"; return 0; }
  host kill -TERM "$pid"
  for _ in $(seq 1 100); do host kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  host kill -KILL "$pid" 2>/dev/null || true
  host rm -f "$PIDFILE"
}

# put MODE SRC DEST: install(1) without it, which the image's busybox lacks.
put() { cp -f "$2" "$3" && chmod "$1" "$3"; }

do_install() {
  # A reinstall drops what the last one installed and this one does not.
  local old_certs=${CERTS:-} old_auths=${AUTHS:-} old_cni=${CNI_FILE:-}
  if [ -z "$bin_dir" ]; then
    # In the installer image the binaries sit beside this script; in a checkout, in the
    # release build.
    if [ -x "$here/bin/cri-mesos" ]; then bin_dir=$here/bin; else bin_dir=$here/../target/release; fi
  fi
  for b in cri-mesos cri-mesos-supervisor; do
    [ -x "$bin_dir/$b" ] || { echo "install.sh: $bin_dir/$b not found (cargo build --release?)" >&2; exit 1; }
  done
  PREFIX=${prefix:-$root/opt/cri-mesos}
  UNIT_DIR=${unit_dir:-$root/etc/systemd/system}
  case $manager in
    auto) if systemd_running; then MANAGER=systemd; else MANAGER=direct; fi ;;
    systemd | direct) MANAGER=$manager ;;
    *) echo "install.sh: --service-manager: auto, systemd or direct, not '$manager'" >&2; exit 2 ;;
  esac

  mkdir -p "$PREFIX/bin" "$config_dir"
  # Through a temporary name and a rename: a running daemon keeps its old inode, and
  # cp over a busy executable fails with ETXTBSY.
  # Anything changed restarts a running daemon; a pod restarted with the same image
  # and values (a node's reboot) leaves it alone.
  local changed=
  for b in cri-mesos cri-mesos-supervisor; do
    cmp -s "$bin_dir/$b" "$PREFIX/bin/$b" || changed=1
    put 0755 "$bin_dir/$b" "$PREFIX/bin/.$b.new"
    mv -f "$PREFIX/bin/.$b.new" "$PREFIX/bin/$b"
  done
  # The host keeps this script, so a node installed by the chart can be uninstalled (or
  # restarted) without the image: <prefix>/bin/cri-mesos-install uninstall.
  put 0755 "$0" "$PREFIX/bin/.cri-mesos-install.new"
  mv -f "$PREFIX/bin/.cri-mesos-install.new" "$PREFIX/bin/cri-mesos-install"
  if [ -n "$config_src" ]; then
    put 0644 "$config_src" "$config_dir/.config.yaml.new"
  else
    {
      echo "# Written by hack/install.sh; keys are cri-mesos's flag names (README, Configuration)."
      local have=" ${flags[*]%%=*} "
      [[ $have == *" listen "* ]] || echo "listen: $root/run/cri-mesos/cri-mesos.sock"
      [[ $have == *" work_dir "* ]] || echo "work_dir: $root/var/lib/cri-mesos"
      [[ $have == *" runtime_dir "* ]] || echo "runtime_dir: $root/run/cri-mesos"
      for f in "${flags[@]}"; do echo "${f%%=*}: ${f#*=}"; done
    } >"$config_dir/.config.yaml.new"
  fi
  cmp -s "$config_dir/.config.yaml.new" "$config_dir/config.yaml" || changed=1
  mv -f "$config_dir/.config.yaml.new" "$config_dir/config.yaml"
  LISTEN=$(config_value listen /run/cri-mesos/cri-mesos.sock)
  WORK_DIR=$(config_value work_dir /var/lib/cri-mesos)
  RUNTIME_DIR=$(config_value runtime_dir /run/cri-mesos)
  CGROUPS_HIERARCHY=$(config_value cgroups_hierarchy /sys/fs/cgroup)
  CGROUPS_ROOT=$(config_value cgroups_root cri-mesos)
  CGROUP=$cgroup
  CERTS=
  if [ -n "$certs" ] && compgen -G "$certs/cert-*.crt" >/dev/null; then
    CERTS=$config_dir/certs
    # The whole set is replaced: a CA dropped from the values goes too.
    local old_sum
    old_sum=$(cat "$CERTS"/*.crt 2>/dev/null | cksum || true)
    rm -rf "$CERTS.new"
    mkdir -p "$CERTS.new"
    for c in "$certs"/cert-*.crt; do put 0644 "$c" "$CERTS.new/${c##*/cert-}"; done
    rm -rf "$CERTS"
    mv "$CERTS.new" "$CERTS"
    [ "$(cat "$CERTS"/*.crt | cksum)" = "$old_sum" ] || changed=1
  fi
  AUTHS=
  if [ -n "$auths" ] && compgen -G "$auths/auth-*.json" >/dev/null; then
    AUTHS=$config_dir/auth
    # Credentials: readable by root only, and replaced as a set like the CAs.
    rm -rf "$AUTHS.new"
    mkdir -m 0700 -p "$AUTHS.new"
    for a in "$auths"/auth-*.json; do put 0600 "$a" "$AUTHS.new/${a##*/auth-}"; done
    rm -rf "$AUTHS"
    mv "$AUTHS.new" "$AUTHS"
  fi
  if [ -n "$old_auths" ] && [ -z "$AUTHS" ]; then rm -rf "$old_auths"; fi
  CNI_FILE=
  if [ -n "$cni_config" ]; then
    CNI_FILE=$(config_value network_cni_config_dir /etc/cni/net.d)/${cni_file:-10-cri-mesos.conflist}
    mkdir -p "$(dirname "$CNI_FILE")"
    put 0644 "$cni_config" "$CNI_FILE.new" && mv -f "$CNI_FILE.new" "$CNI_FILE"
  fi
  if [ -n "$old_cni" ] && [ "$old_cni" != "$CNI_FILE" ]; then rm -f "$old_cni"; fi
  if [ -n "$old_certs" ] && [ -z "$CERTS" ]; then rm -rf "$old_certs"; changed=1; fi
  LOG=$root/var/log/cri-mesos.log
  PIDFILE=$root/run/cri-mesos.pid

  # Written in direct mode too: a host that gets systemd later (or an operator) has it.
  mkdir -p "$UNIT_DIR"
  UNIT=$UNIT_DIR/cri-mesos.service
  sed -e "s|/opt/cri-mesos/bin/|$PREFIX/bin/|" -e "s|/etc/cri-mesos/config.yaml|$config_dir/config.yaml|" \
    "$here/cri-mesos.service" >"$UNIT.new"
  cmp -s "$UNIT.new" "$UNIT" || changed=1
  mv -f "$UNIT.new" "$UNIT"
  {
    echo "# Written by install.sh install; read by its other subcommands."
    for v in MANAGER PREFIX UNIT CERTS AUTHS CNI_FILE LISTEN WORK_DIR RUNTIME_DIR CGROUPS_HIERARCHY CGROUPS_ROOT CGROUP LOG PIDFILE; do
      printf '%s=%q\n' "$v" "${!v}"
    done
  } >"$config_dir/install.env"
  echo "installed cri-mesos into $PREFIX/bin, config $config_dir/config.yaml${UNIT:+, unit $UNIT}"
  if [ -n "$start" ]; then
    # A new binary or config takes effect now; pods keep running across the restart.
    if running && [ -z "$changed" ]; then
      echo "cri-mesos is running ($MANAGER) and nothing changed: not restarted"
      return 0
    fi
    if running; then
      if [ "$MANAGER" = systemd ]; then host systemctl daemon-reload; host systemctl restart cri-mesos.service
      else do_stop; fi
    fi
    do_start
  fi
}

# umount_under DIR: every mount at or below DIR, deepest first.
umount_under() {
  local dir
  dir=$(host realpath -m "$1")
  host awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
    sort -r | while read -r m; do host umount -l "$m" || true; done
}

# rmdir_tree DIR: removes a cgroup and its children (cgroups are removed with rmdir only).
rmdir_tree() {
  host test -d "$1" || return 0
  host find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
}

do_uninstall() {
  if running && host sh -c 'command -v crictl' >/dev/null 2>&1; then
    # Pods first, while the daemon can still stop them: their supervisors outlive it.
    host crictl --runtime-endpoint "unix://$LISTEN" --timeout 60s rmp --force --all >/dev/null || true
  fi
  do_stop
  if [ "$MANAGER" = systemd ]; then host systemctl disable --quiet cri-mesos.service || true; fi
  [ -n "$UNIT" ] && rm -f "$UNIT"
  if [ "$MANAGER" = systemd ]; then host systemctl daemon-reload || true; fi
  if [ -n "$CGROUP" ]; then for cg in $(daemon_cgroups); do rmdir_tree "$cg"; done; fi
  # The daemon made these shared bind mounts of themselves; pods' mounts sit below.
  umount_under "$RUNTIME_DIR"
  umount_under "$WORK_DIR"
  rm -f "$PREFIX/bin/cri-mesos" "$PREFIX/bin/cri-mesos-supervisor" "$PREFIX/bin/cri-mesos-install" "$LOG" "$PIDFILE"
  rmdir "$PREFIX/bin" "$PREFIX" 2>/dev/null || true
  host rm -f "$LISTEN"
  if [ -n "$purge" ]; then
    host rm -rf "$WORK_DIR" "$RUNTIME_DIR"
    CGROUP=$CGROUPS_ROOT
    for cg in $(daemon_cgroups); do rmdir_tree "$cg"; done
  fi
  [ -n "$CNI_FILE" ] && rm -f "$CNI_FILE"
  [ -n "$CERTS" ] && rm -rf "$CERTS"
  [ -n "${AUTHS:-}" ] && rm -rf "$AUTHS"
  rm -f "$config_dir/config.yaml" "$config_dir/install.env"
  rmdir "$config_dir" 2>/dev/null || true
  echo "uninstalled cri-mesos${purge:+ (work and runtime dirs purged)}"
}

do_watch() {
  # The chart's long-running container: the daemon outlives it, so SIGTERM only ends
  # the watch.
  trap 'exit 0' TERM INT
  while :; do
    if ! running; then
      echo "$(date -u +%FT%TZ) cri-mesos is not running: starting it" >&2
      do_start || true
    fi
    sleep 10 &
    wait $! || true
  done
}

load_state
case $cmd in
  install) do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop; do_start ;;
  status) if running; then echo "running ($MANAGER)"; else echo "not running ($MANAGER)"; exit 3; fi ;;
  watch) do_watch ;;
  uninstall) do_uninstall ;;
esac
