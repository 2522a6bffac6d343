#!/usr/bin/env bash
# Builds the pgswarm image on this machine:
#   1. the base image debian:trixie-slim, only when it is missing: from Debian packages with
#      debootstrap (works without any container registry), or pulled by docker build when
#      PGSWARM_BASE=pull;
#   2. the two release binaries with cargo on the host;
#   3. `docker build` of the Dockerfile with the legacy builder (no BuildKit needed).
#
# Usage: scripts/build-image.sh [TAG]          (default tag: pgswarm:dev, or $PGSWARM_IMAGE)
# Environment:
#   PGSWARM_IMAGE        the tag to build (overridden by the argument)
#   BASE_IMAGE           the base image (default debian:trixie-slim; passed to docker build)
#   PGSWARM_BASE         `debootstrap` (default) or `pull`: how a missing base image is made
#   DEBIAN_MIRROR        mirror for debootstrap (default http://deb.debian.org/debian)
#   PGSWARM_SKIP_CARGO=1 use the binaries already in target/release
#   DOCKER_BUILD_ARGS    extra arguments for docker build (e.g. "--build-arg CITUS_VERSION=13.2")
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="${1:-${PGSWARM_IMAGE:-pgswarm:dev}}"
base="${BASE_IMAGE:-debian:trixie-slim}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { printf '[build-image] %s\n' "$*" >&2; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ! docker image inspect "$base" >/dev/null 2>&1; then
  if [ "${PGSWARM_BASE:-debootstrap}" = pull ]; then
    log "base image $base is missing; docker build will pull it"
  else
    log "base image $base is missing: building it from Debian packages ($mirror)"
    if ! command -v debootstrap >/dev/null 2>&1; then
      "$repo/scripts/install-host-deps.sh"
    fi
    rootfs="$(mktemp -d /tmp/pgswarm-rootfs.XXXXXX)"
    cleanup_rootfs() { $SUDO rm -rf --one-file-system "$rootfs"; }
    trap cleanup_rootfs EXIT
    $SUDO debootstrap --variant=minbase trixie "$rootfs" "$mirror" >/dev/null
    # Keep the image lean, as the official slim image does.
    $SUDO rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    $SUDO tar -C "$rootfs" -c . | docker import \
      --change 'CMD ["bash"]' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      - "$base" >/dev/null
    cleanup_rootfs
    trap - EXIT
    log "built $base"
  fi
fi

if [ "${PGSWARM_SKIP_CARGO:-0}" != 1 ]; then
  log "cargo build --release -p swarmctl -p pgswarm-sidecar"
  (cd "$repo" && cargo build --release --quiet -p swarmctl -p pgswarm-sidecar)
fi
for bin in swarmctl pgswarm-sidecar; do
  if [ ! -x "$repo/target/release/$bin" ]; then
    log "target/release/$bin is missing (run cargo build --release, or unset PGSWARM_SKIP_CARGO)"
    exit 1
  fi
done

log "docker build -t $tag (legacy builder)"
# shellcheck disable=SC2086 # DOCKER_BUILD_ARGS is a list of words on purpose
DOCKER_BUILDKIT=0 docker build --quiet --build-arg BASE_IMAGE="$base" ${DOCKER_BUILD_ARGS:-} \
  -t "$tag" "$repo" >/dev/null
log "built $tag"
