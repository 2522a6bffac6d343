#!/usr/bin/env bash
# From a fresh clone to a running PostgreSQL cluster on this machine:
#   1. checks Docker (installs Debian's docker.io when there is no docker at all) and that
#      the daemon answers;
#   2. installs debootstrap when missing (the image's base is built from Debian packages when
#      no registry provides debian:trixie-slim);
#   3. builds swarmctl (cargo build --release);
#   4. runs `swarmctl up --build`: a single-node swarm on 127.0.0.1 when there is none, the
#      image (scripts/build-image.sh, from this tree), node labels, secrets, the default Patroni
#      cluster, a wait until it is healthy and a write through the pooler; then it prints how
#      to connect.
# Arguments go to `swarmctl up` (e.g. `scripts/up.sh --image pgswarm:dev`).
# swarmctl is installed on PATH (/usr/local/bin, ~/.cargo/bin or ~/.local/bin, whichever is
# writable). Remove the cluster again with `swarmctl down` (add --volumes --secrets for the
# data and the passwords).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

log() { printf '[up] %s\n' "$*" >&2; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  log "installing Debian packages: $*"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

if ! command -v docker >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    apt_install docker.io
  else
    log "docker is not installed: install Docker Engine, then run this again"
    exit 2
  fi
fi
if ! docker info >/dev/null 2>&1; then
  log "the Docker daemon does not answer (docker info failed):"
  docker info 2>&1 | tail -n 3 >&2 || true
  log "start it (e.g. 'sudo systemctl start docker') and make sure this user may use it"
  exit 2
fi

if ! docker image inspect debian:trixie-slim >/dev/null 2>&1 \
   && ! command -v debootstrap >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt_install debootstrap ca-certificates
fi

if ! command -v cargo >/dev/null 2>&1; then
  log "cargo is not installed: install a Rust toolchain (1.80 or newer, e.g. from rustup.rs),"
  log "then run this again"
  exit 2
fi

log "cargo build --release -p swarmctl"
cargo build --release --quiet -p swarmctl

# Put swarmctl where the shell finds it, so the commands `up` prints (swarmctl status,
# swarmctl psql, ...) work as printed: the first directory on PATH that this user may write,
# among the usual ones; otherwise say how to call it.
swarmctl="$repo/target/release/swarmctl"
installed=""
for dir in /usr/local/bin "$HOME/.cargo/bin" "$HOME/.local/bin"; do
  case ":$PATH:" in *":$dir:"*) ;; *) continue ;; esac
  if [ -d "$dir" ] && [ -w "$dir" ]; then
    install -m 0755 "$swarmctl" "$dir/swarmctl"
    installed="$dir/swarmctl"
    break
  fi
done
if [ -n "$installed" ]; then
  log "installed $installed"
  swarmctl="$installed"
else
  log "no writable directory on PATH for swarmctl: call it as $swarmctl"
  log "(or: sudo install -m 0755 $swarmctl /usr/local/bin/)"
fi

# --build: the image is rebuilt from this tree (cached layers make that quick), so it always
# matches the swarmctl just built.
log "swarmctl up --build $*"
exec "$swarmctl" up --build "$@"
