#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then
#   1. formatting and lints (cargo fmt --check, clippy -D warnings),
#   2. unit and host-integration tests (real PostgreSQL, Patroni, etcd, HAProxy, PgBouncer
#      from Debian's packages, on loopback ports),
#   3. the real-swarm end-to-end suite (tests/swarm/): builds the image, deploys stacks with
#      `docker stack deploy` on a local single-node swarm, and removes everything it created,
#   4. the multi-node scenarios on a 3-node swarm brought up on this machine (node power-off,
#      partition, freeze, drain, loss of the router's node), then taken down again.
# Set PGSWARM_SKIP_SWARM=1 to run only tiers 1 and 2 (e.g. on a machine without Docker).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing host dependencies (Debian packages)"
scripts/install-host-deps.sh

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs) and run again" >&2
  exit 2
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "unit and host integration tests"
cargo test --no-fail-fast --workspace --exclude pgswarm-swarm-tests 2>&1 | tee /tmp/pgswarm-test-host.log

if [ "${PGSWARM_SKIP_SWARM:-0}" = 1 ]; then
  echo "swarm end-to-end suite not run: PGSWARM_SKIP_SWARM=1"
  exit 0
fi
step "real-swarm end-to-end suite"
tests/swarm/run.sh

step "multi-node end-to-end suite (a 3-node swarm on this machine, scripts/testbed.sh)"
# Uses the image the single-node suite just built; takes the bed down also on failure.
PGSWARM_SKIP_IMAGE_BUILD=1 tests/swarm/run-multinode.sh
