#!/usr/bin/env bash
# Builds the chart's installer image without Docker and pushes it:
#
#   hack/build-installer-image.sh REGISTRY/REPOSITORY:TAG
#
# Two layers. The base: Debian's busybox-static with a link per applet, plus bash,
# util-linux's nsenter (busybox's has no --cgroup) and the shared libraries these and
# the release binaries link (glibc is all they need), so the image has no distribution
# in it. The top: /opt/cri-mesos-installer with both release binaries in bin/ (they
# must sit together), hack/install.sh and hack/cri-mesos.service; the chart runs
# /opt/cri-mesos-installer/install.sh. The layers are tarred reproducibly (owner 0,
# mtime 0, sorted), written as an OCI layout and pushed by skopeo (Debian); loopback
# registries are spoken to over plain http.
# Env: BIN_DIR (default target/release, brought up to date), OCI_DIR (also keep the OCI
# layout there).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 REGISTRY/REPOSITORY:TAG" >&2; exit 2; }
ref=$1
[[ $ref == */*:* ]] || { echo "build-installer-image: '$ref' is not REGISTRY/REPOSITORY:TAG" >&2; exit 2; }
bin_dir=${BIN_DIR:-target/release}
# The release build is brought up to date every time (a no-op when it is): an image of
# stale binaries would test yesterday's runtime.
if [ "$bin_dir" = target/release ]; then
  cargo build --release --bin cri-mesos --bin cri-mesos-supervisor
elif [ ! -x "$bin_dir/cri-mesos" ] || [ ! -x "$bin_dir/cri-mesos-supervisor" ]; then
  echo "build-installer-image: no binaries in $bin_dir" >&2; exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# add_with_libs ROOT FILE...: copies each executable and every library it links, at the
# same paths, so the dynamic loader finds them as on this host.
add_with_libs() {
  local root=$1 f lib
  shift
  for f in "$@"; do
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
    for lib in $(ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
      mkdir -p "$root$(dirname "$lib")"
      [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
    done
  done
}

base=$work/base
mkdir -p "$base/bin" "$base/etc" "$base/tmp" "$base/usr/bin"
chmod 1777 "$base/tmp"
install -m 755 /bin/busybox "$base/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ $applet == busybox ]] || ln -sf busybox "$base/bin/$applet"
done
rm -f "$base/bin/nsenter" "$base/bin/bash" "$base/bin/sh"
add_with_libs "$base" /bin/bash /usr/bin/nsenter
ln -sf bash "$base/bin/sh"
# For `#!/usr/bin/env bash` (install.sh).
ln -sf ../../bin/busybox "$base/usr/bin/env"
# The release binaries' libraries belong to the base, so the top layer is only ours.
add_with_libs "$work/libs" "$bin_dir/cri-mesos" "$bin_dir/cri-mesos-supervisor"
rm -rf "${work:?}/libs$(cd "$bin_dir" && pwd)"
cp -an "$work/libs/." "$base/"
echo 'root:x:0:0:root:/root:/bin/sh' >"$base/etc/passwd"
echo 'root:x:0:' >"$base/etc/group"

top=$work/top
dest=$top/opt/cri-mesos-installer
mkdir -p "$dest/bin"
install -m 755 "$bin_dir/cri-mesos" "$bin_dir/cri-mesos-supervisor" "$dest/bin/"
install -m 755 hack/install.sh "$dest/install.sh"
install -m 644 hack/cri-mesos.service "$dest/cri-mesos.service"

layout=${OCI_DIR:-$work/oci}
rm -rf "$layout"
mkdir -p "$layout/blobs/sha256"
# blob FILE: stores FILE in the layout; prints its digest and size.
blob() {
  local d
  d=$(sha256sum <"$1" | cut -d' ' -f1)
  cp "$1" "$layout/blobs/sha256/$d"
  echo "sha256:$d $(stat -c %s "$1")"
}
layers=() diff_ids=()
for l in base top; do
  tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$work/$l" -cf "$work/$l.tar" .
  diff_ids+=("sha256:$(sha256sum <"$work/$l.tar" | cut -d' ' -f1)")
  gzip -n -c "$work/$l.tar" >"$work/$l.tar.gz"
  layers+=("$(blob "$work/$l.tar.gz")")
done

case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
version=$("$bin_dir/cri-mesos" --version | awk '{ print $2 }')
jq -nc --arg a "$arch" --arg v "$version" --args '{architecture: $a, os: "linux",
  config: {Entrypoint: ["/opt/cri-mesos-installer/install.sh"], Cmd: ["--help"],
    Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    Labels: {"org.opencontainers.image.title": "cri-mesos-installer",
             "org.opencontainers.image.version": $v}},
  rootfs: {type: "layers", diff_ids: $ARGS.positional}}' "${diff_ids[@]}" >"$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")
jq -nc --arg c "$config_digest" --argjson cs "$config_size" --args '{schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
  layers: [$ARGS.positional[] | split(" ") |
    {mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: .[0], size: (.[1] | tonumber)}]}' \
  "${layers[@]}" >"$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")
tag=${ref##*:}
jq -nc --arg d "$manifest_digest" --argjson s "$manifest_size" --arg t "$tag" '{schemaVersion: 2,
  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
    annotations: {"org.opencontainers.image.ref.name": $t}}]}' >"$layout/index.json"
echo '{"imageLayoutVersion": "1.0.0"}' >"$layout/oci-layout"

registry=${ref%%/*}
tls=()
case $registry in 127.*|localhost|localhost:*|\[::1\]*) tls=(--dest-tls-verify=false) ;; esac
skopeo copy --quiet "${tls[@]}" --preserve-digests "oci:$layout:$tag" "docker://$ref"
echo "pushed $ref ($manifest_digest; $(du -sh "$layout/blobs" | cut -f1) in blobs)"
