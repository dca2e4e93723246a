#!/usr/bin/env bash
# Builds the workers' container image with podman, with no image registry: the base image is made
# from Debian's packages (mmdebstrap, Python 3.11 inside), then Containerfile is built on it.
#
#   bash deploy/image.sh            # builds $IMAGE (default localhost/license-billing:latest)
#   bash deploy/image.sh --rebuild-base
#
# Installs mmdebstrap, podman and runc with apt-get when missing (as root). podman runs with
# runc: the default crun fails on these kernels' hybrid cgroups.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/license-billing:latest}
BASE_IMAGE=${BASE_IMAGE:-localhost/license-billing-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '[image] %s\n' "$*"; }

missing=()
for tool in mmdebstrap podman runc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  [[ $EUID -eq 0 ]] || { echo "[image] missing ${missing[*]}: sudo apt-get install -y ${missing[*]}" >&2; exit 1; }
  log "installing ${missing[*]} with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

podman() { command podman --runtime runc "$@"; }

if [[ "${1:-}" == "--rebuild-base" ]] || ! podman image exists "$BASE_IMAGE"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "making the base image $BASE_IMAGE from Debian bookworm (minbase + python3)"
  # </dev/null: without a terminal on stdin mmdebstrap would read a sources.list from it.
  mmdebstrap --quiet --variant=minbase --include=python3 bookworm "$work/rootfs.tar" "$DEBIAN_MIRROR" </dev/null
  podman import --quiet "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null
fi

log "building $IMAGE"
# The machine's CA bundle goes to the build as a secret (not a layer), for a TLS-inspecting proxy.
CA_BUNDLE=${CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
secret=()
[[ -s "$CA_BUNDLE" ]] && secret=(--secret "id=ca-bundle,src=$CA_BUNDLE")
podman build --quiet --network host "${secret[@]}" --build-arg BASE="$BASE_IMAGE" -f Containerfile -t "$IMAGE" . >/dev/null
log "built $IMAGE ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
