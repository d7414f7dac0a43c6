#!/usr/bin/env bash
# Starts a registry on 127.0.0.1:5000 (Debian's docker-registry, loopback only) unless one
# answers there, and pushes 127.0.0.1:5000/busybox:latest to it: Debian's busybox-static
# with a link for each applet, built here without Docker. For the README's first pod.
# Env: REG (default 127.0.0.1:5000), REGISTRY_DIR (storage, default /var/tmp/cri-mesos-registry).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/install-deps.sh
REG=${REG:-127.0.0.1:5000}
DIR=${REGISTRY_DIR:-/var/tmp/cri-mesos-registry}
mkdir -p "$DIR/storage"

if ! curl -fsS -o /dev/null "http://$REG/v2/" 2>/dev/null; then
  cat >"$DIR/config.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $DIR/storage}
  delete: {enabled: true}
http: {addr: $REG}
EOF
  setsid nohup docker-registry serve "$DIR/config.yml" >"$DIR/registry.log" 2>&1 </dev/null &
  echo $! >"$DIR/registry.pid"
  for _ in $(seq 1 50); do curl -fsS -o /dev/null "http://$REG/v2/" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "http://$REG/v2/" || { cat "$DIR/registry.log" >&2; exit 1; }
  echo "registry started on $REG (pid $(cat "$DIR/registry.pid"), storage $DIR/storage)"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp"
install -m 755 /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
tar --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name -C "$root" -cf "$work/layer.tar" .
diff_id=sha256:$(sha256sum <"$work/layer.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer.tar" >"$work/layer.tar.gz"

case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
jq -nc --arg a "$arch" --arg d "$diff_id" '{architecture: $a, os: "linux",
  config: {Cmd: ["sh"], Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
  rootfs: {type: "layers", diff_ids: [$d]}}' >"$work/config.json"

# push FILE: a monolithic blob upload (POST, then PUT with the digest); prints the digest.
push() {
  local file=$1 digest location
  digest=sha256:$(sha256sum <"$file" | cut -d' ' -f1)
  if ! curl -fs -o /dev/null -I "http://$REG/v2/busybox/blobs/$digest"; then
    location=$(curl -fsS -X POST -D - -o /dev/null "http://$REG/v2/busybox/blobs/uploads/" |
      tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
    [[ $location == http* ]] || location=http://$REG$location
    [[ $location == *\?* ]] && sep='&' || sep='?'
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" \
      "$location${sep}digest=$digest" -o /dev/null
  fi
  echo "$digest"
}
layer=$(push "$work/layer.tar.gz")
config=$(push "$work/config.json")
jq -nc --arg c "$config" --argjson cs "$(stat -c %s "$work/config.json")" \
  --arg l "$layer" --argjson ls "$(stat -c %s "$work/layer.tar.gz")" '{schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: $ls}]}' \
  >"$work/manifest.json"
curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
  --data-binary "@$work/manifest.json" "http://$REG/v2/busybox/manifests/latest" -o /dev/null
echo "pushed $REG/busybox:latest"
