#!/usr/bin/env bash
# The multi-node end-to-end scenarios (tier 3, tests/swarm/tests/multinode.rs):
#   1. brings up a 3-node swarm on this machine (scripts/testbed.sh up 3: network namespaces,
#      one dockerd each, one bridge);
#   2. builds the image (scripts/build-image.sh) and puts it on every node;
#   3. runs the scenarios (node power-off, partition, freeze, drain, loss of the router's node);
#   4. takes the bed down again (namespaces, daemons, bridge, iptables rule, data), also when a
#      step fails or the run is interrupted.
# Environment: PGSWARM_IMAGE (tag, default pgswarm:e2e), PGSWARM_MULTINODE_SCENARIOS (a comma
# list, to run only some), PGSWARM_KEEP_TESTBED=1 (leave the bed up for a post-mortem).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

export PGSWARM_IMAGE="${PGSWARM_IMAGE:-pgswarm:e2e}"

teardown() {
  if [ "${PGSWARM_KEEP_TESTBED:-0}" = 1 ]; then
    echo "[multinode] PGSWARM_KEEP_TESTBED=1: the test bed stays up; remove it with scripts/testbed.sh down" >&2
  else
    scripts/testbed.sh down
  fi
}
trap teardown EXIT
trap 'exit 130' INT TERM

# A bed left by an earlier, killed run is removed first.
scripts/testbed.sh down
scripts/testbed.sh up 3

if [ "${PGSWARM_SKIP_IMAGE_BUILD:-0}" != 1 ]; then
  start=$(date +%s)
  scripts/build-image.sh "$PGSWARM_IMAGE"
  echo "[multinode] image $PGSWARM_IMAGE built in $(($(date +%s) - start)) s" >&2
fi
scripts/testbed.sh image "$PGSWARM_IMAGE"

export PGSWARM_SKIP_IMAGE_BUILD=1
export RUST_LIB_BACKTRACE=0
cargo test -p pgswarm-swarm-tests --test multinode -- --ignored --test-threads=1 --nocapture "$@"
