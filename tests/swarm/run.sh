#!/usr/bin/env bash
# The real-swarm end-to-end suite (tier 3):
#   1. makes sure this Docker engine is in a swarm (initialises a single-node swarm on
#      127.0.0.1 when it is not, and leaves it again at the end; an existing swarm is used
#      as it is and never left);
#   2. builds the image (scripts/build-image.sh: base image from Debian packages when missing,
#      cargo build --release, docker build with the legacy builder);
#   3. runs the scenarios one at a time (each deploys and removes its own stack).
# Environment: PGSWARM_IMAGE (tag, default pgswarm:e2e), PGSWARM_SKIP_IMAGE_BUILD=1 (use the
# image as it is), PGSWARM_KEEP=1 (keep stacks of failed runs for a post-mortem); extra
# arguments go to the test binary (e.g. a test name, or `--ignored citus` for the Citus
# scenario on an image built with the extension).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

export PGSWARM_IMAGE="${PGSWARM_IMAGE:-pgswarm:e2e}"

state="$(docker info --format '{{.Swarm.LocalNodeState}}')"
if [ "$state" = inactive ]; then
  echo "[swarm-e2e] no swarm: initialising a single-node swarm on 127.0.0.1" >&2
  docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null
  trap 'echo "[swarm-e2e] leaving the swarm this run initialised" >&2; docker swarm leave --force >/dev/null' EXIT
elif [ "$state" != active ]; then
  echo "[swarm-e2e] the Docker engine's swarm state is '$state'; expected active or inactive" >&2
  exit 2
fi

if [ "${PGSWARM_SKIP_IMAGE_BUILD:-0}" != 1 ]; then
  start=$(date +%s)
  scripts/build-image.sh "$PGSWARM_IMAGE"
  echo "[swarm-e2e] image $PGSWARM_IMAGE built in $(( $(date +%s) - start )) s" >&2
fi

export PGSWARM_SKIP_IMAGE_BUILD=1
# Errors print their cause chain; stack traces of anyhow errors add nothing here.
export RUST_LIB_BACKTRACE=0
cargo test -p pgswarm-swarm-tests -- --test-threads=1 --nocapture "$@"
