#!/usr/bin/env bash
# Installs what the host tiers of the test suite need, from Debian's archive:
# PostgreSQL, Patroni (with python3-etcd: without it Patroni cannot use etcd), etcd,
# HAProxy, PgBouncer, debootstrap for building the base image without a registry, and
# pgBackRest (the backup tests archive WAL and restore with it on the host),
# Prometheus (its promtool checks the generated scrape configuration; the swarm suite runs
# Prometheus itself against the swarm to check that it discovers every task).
# Idempotent: installs only what is missing. Needs root (or sudo).
set -euo pipefail

packages=(postgresql postgresql-contrib patroni python3-etcd python3-psycopg2 etcd-server etcd-client
          haproxy pgbouncer pgbackrest debootstrap ca-certificates iproute2 procps prometheus)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}" >&2
# Packaged services must not start on install: the tests start their own instances.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created_policy=1
fi
trap '[ $created_policy -eq 1 ] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
