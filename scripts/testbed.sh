#!/usr/bin/env bash
# A multi-node Docker swarm on one machine, for trying pgswarm on several nodes and for the
# multi-node end-to-end suite.
#
#   scripts/testbed.sh up [N] [--workers K]   N nodes (default 3): all managers, or with
#                                             --workers K the first N-K managers and K workers
#   scripts/testbed.sh image TAG [--method load|registry]
#                                             puts the image TAG on every node (default: docker
#                                             save | docker load, faster here; `registry`: Debian's
#                                             docker-registry on the bridge, nodes pull in parallel)
#   scripts/testbed.sh status                 nodes, daemons, swarm
#   scripts/testbed.sh env                    `export DOCKER_HOST=...` for the first manager
#   scripts/testbed.sh socket NODE            the Docker socket of NODE (tbn1, tbn2, ...)
#   scripts/testbed.sh poweroff|freeze|thaw|partition|heal|start NODE
#                                             failures of one node (see below)
#   scripts/testbed.sh down                   removes everything, also after a failed or killed run
#
# Each node is a network namespace (its own UTS namespace gives it its own hostname) joined by
# a veth pair to one bridge on this machine, with a `dockerd` of its own (own config file, data
# root, exec root, pid file and unix socket) started with `nsenter --net=... --uts=...` (not
# `ip netns exec`, which remounts /sys so dockerd finds no cgroups). Every process of a node
# (dockerd, containerd, shims, containers) lives under one cgroup per controller
# (/sys/fs/cgroup/<controller>/pgswarm-testbed/<node>; containers through dockerd's
# --cgroup-parent), so a node can be powered off (SIGKILL of all of them at once) or frozen
# (cgroup v1 freezer) as a whole. A partition takes the host side of the node's veth down: the
# node's processes stay alive and cannot reach any other node.
#
# Addresses: bridge pgswtb0 with 10.77.0.1/24, node i at 10.77.0.(10+i). Overlay networks of
# the swarm come from 10.78.0.0/16. The local registry listens on 10.77.0.1:5070 (for the
# nodes) and 127.0.0.1:5070 (for the host's daemon, to which loopback registries are insecure
# by default). Everything the bed creates is recorded under /run/pgswarm-testbed, so `down`
# finds it after any kind of failure. Needs root (namespaces, cgroups, iptables).
set -euo pipefail

STATE=/run/pgswarm-testbed
DATA=/var/lib/pgswarm-testbed
CG=pgswarm-testbed
BRIDGE=pgswtb0
NET=10.77.0
POOL=10.78.0.0/16
REG_PORT=5070
CONTROLLERS=(freezer cpu cpuacct cpuset memory devices blkio pids systemd)

log() { printf '[testbed] %s\n' "$*" >&2; }
die() {
  printf '[testbed] error: %s\n' "$*" >&2
  exit 2
}

need_root() { [ "$(id -u)" = 0 ] || die "run as root (network namespaces, cgroups and iptables need it)"; }

install_deps() {
  local missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v dockerd >/dev/null || missing+=(docker.io)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
      { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  fi
}

node_names() { [ -f "$STATE/nodes" ] && cat "$STATE/nodes" || true; }
sock() { echo "$STATE/$1/docker.sock"; }
dk() {
  local n=$1
  shift
  docker -H "unix://$(sock "$n")" "$@"
}
# A frozen node's engine accepts connections and never answers: bounded checks.
dk_answers() { timeout 5 docker -H "unix://$(sock "$1")" version >/dev/null 2>&1; }
node_ip() { echo "$NET.$((10 + ${1#tbn}))"; }
valid_node() { grep -qx "$1" "$STATE/nodes" 2>/dev/null || die "no node '$1' in the test bed (nodes: $(node_names | tr '\n' ' '))"; }

# Every pid in the node's freezer cgroup tree.
node_pids() {
  local dir=/sys/fs/cgroup/freezer/$CG/$1
  [ -d "$dir" ] || return 0
  find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un
}

freezer_state() { cat "/sys/fs/cgroup/freezer/$CG/$1/freezer.state" 2>/dev/null || echo ABSENT; }

# try_freezer NODE STATE: sets the node's freezer state; fails when it is not reached within
# 10 s. Freezing can stay FREEZING for good: a task in the middle of an exec (runc's init, say,
# waiting in the kernel for its sibling threads, some of them frozen already) cannot be frozen.
try_freezer() {
  local f=/sys/fs/cgroup/freezer/$CG/$1/freezer.state i
  echo "$2" >"$f"
  for i in $(seq 1 100); do
    [ "$(cat "$f")" = "$2" ] && return 0
    sleep 0.1
  done
  return 1
}

set_freezer() {
  try_freezer "$1" "$2" ||
    die "cgroup freezer of $1 stuck in $(freezer_state "$1") (wanted $2)"
}

# SIGKILL of every process of a node at once: freeze (no process can fork or react), kill all,
# thaw so the kills are delivered.
kill_node_processes() {
  local n=$1 pids
  [ -d "/sys/fs/cgroup/freezer/$CG/$n" ] || return 0
  if ! try_freezer "$n" FROZEN; then
    # Most of it is frozen; the rest is killed all the same (and the freeze undone below).
    log "$n: the freezer stayed $(freezer_state "$n") (a process in the middle of an exec); killing every process anyway"
  fi
  pids=$(node_pids "$n")
  # shellcheck disable=SC2086
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
  try_freezer "$n" THAWED || [ ! -d "/sys/fs/cgroup/freezer/$CG/$n" ] ||
    die "cgroup freezer of $n stuck in $(freezer_state "$n") (wanted THAWED)"
  local i
  for i in $(seq 1 100); do
    [ -z "$(node_pids "$n")" ] && return 0
    sleep 0.1
  done
  log "processes of $n still alive after SIGKILL: $(node_pids "$n" | tr '\n' ' ')"
}

umount_under() {
  local m
  # Deepest first.
  for m in $(awk -v p="$1" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

make_cgroups() {
  local c
  for c in "${CONTROLLERS[@]}"; do
    [ -d "/sys/fs/cgroup/$c" ] || continue
    mkdir -p "/sys/fs/cgroup/$c/$CG/$1"
    if [ "$c" = cpuset ]; then
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CG/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CG/cpuset.mems"
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CG/$1/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CG/$1/cpuset.mems"
    fi
  done
}

remove_cgroups() {
  local c d
  for c in "${CONTROLLERS[@]}"; do
    d=/sys/fs/cgroup/$c/$CG/$1
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

create_node() {
  local n=$1 ip
  ip=$(node_ip "$n")
  mkdir -p "$STATE/$n" "$DATA/$n"
  ip netns add "$n" 2>/dev/null || true
  ip link add "$n-h" type veth peer name eth0 netns "$n" 2>/dev/null || true
  ip link set "$n-h" master "$BRIDGE" up
  ip -n "$n" addr replace "$ip/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
  # No default route: a node reaches the other nodes and the registry on the bridge, nothing
  # else (an image pull from elsewhere fails at once instead of waiting for a DNS timeout).
  ip -n "$n" route del default 2>/dev/null || true
  # A persistent UTS namespace (bind-mounted on a file) with the node's name as hostname.
  if ! mountpoint -q "$STATE/$n/uts"; then
    touch "$STATE/$n/uts"
    unshare --uts="$STATE/$n/uts" hostname "$n"
  fi
  make_cgroups "$n"
  cat >"$STATE/$n/daemon.json" <<EOF
{
  "data-root": "$DATA/$n/docker",
  "exec-root": "$STATE/$n/exec",
  "pidfile": "$STATE/$n/docker.pid",
  "hosts": ["unix://$(sock "$n")"],
  "cgroup-parent": "/$CG/$n",
  "exec-opts": ["native.cgroupdriver=cgroupfs"],
  "storage-driver": "overlay2",
  "insecure-registries": ["$NET.1:$REG_PORT"],
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "2"}
}
EOF
}

# Starts a node's dockerd inside its cgroups and namespaces; returns once its socket answers.
start_daemon() {
  local n=$1 c
  case "$(freezer_state "$n")" in FROZEN | FREEZING) set_freezer "$n" THAWED ;; esac
  if dk_answers "$n"; then return 0; fi
  rm -f "$STATE/$n/docker.pid" "$(sock "$n")"
  # The subshell moves itself into the node's cgroups, so dockerd, containerd and every shim
  # inherit them.
  (
    for c in "${CONTROLLERS[@]}"; do
      [ -d "/sys/fs/cgroup/$c/$CG/$n" ] && echo "$BASHPID" >"/sys/fs/cgroup/$c/$CG/$n/cgroup.procs"
    done
    exec nsenter --net="/var/run/netns/$n" --uts="$STATE/$n/uts" \
      dockerd --config-file "$STATE/$n/daemon.json" >>"$STATE/$n/dockerd.log" 2>&1
  ) &
  disown || true
  local i
  for i in $(seq 1 120); do
    dk_answers "$n" && return 0
    sleep 0.5
  done
  tail -20 "$STATE/$n/dockerd.log" >&2
  die "dockerd of $n did not answer on $(sock "$n") within 60 s (log: $STATE/$n/dockerd.log)"
}

# Whether this kernel can carry Docker's encrypted overlay networks between nodes: they need
# IPsec ESP with AES-GCM (xfrm). Tried in a throw-away namespace; the answer is recorded for
# the suite (yes/no in $STATE/encrypted-overlay).
probe_encrypted_overlay() {
  local ns=pgswtb-xfrm answer=no
  ip netns add "$ns" 2>/dev/null || true
  if ip netns exec "$ns" ip xfrm state add src 10.77.0.250 dst 10.77.0.251 proto esp spi 0x100 \
    mode transport aead 'rfc4106(gcm(aes))' 0x0102030405060708091011121314151617181920 64 2>/dev/null; then
    answer=yes
  fi
  ip netns del "$ns" 2>/dev/null || true
  echo "$answer" >"$STATE/encrypted-overlay"
  if [ "$answer" = no ]; then
    log "this kernel has no IPsec ESP with AES-GCM (xfrm): encrypted overlay networks carry no"
    log "traffic between nodes here; deploy specs with \`network: {encrypted: false}\` on this bed"
  fi
}

start_registry() {
  if ! command -v docker-registry >/dev/null; then
    log "installing docker-registry (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry >/dev/null
  fi
  mkdir -p "$DATA/registry"
  local addr
  for addr in "$NET.1" 127.0.0.1; do
    local pidf="$STATE/registry-$addr.pid"
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then continue; fi
    cat >"$STATE/registry-$addr.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DATA/registry
  delete:
    enabled: true
http:
  addr: $addr:$REG_PORT
EOF
    docker-registry serve "$STATE/registry-$addr.yml" >>"$STATE/registry-$addr.log" 2>&1 &
    echo $! >"$pidf"
  done
  local i
  for i in $(seq 1 50); do
    curl -fsS "http://127.0.0.1:$REG_PORT/v2/" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "the local registry did not answer on 127.0.0.1:$REG_PORT (log: $STATE/registry-127.0.0.1.log)"
}

cmd_up() {
  need_root
  local n=3 workers=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --workers) workers=${2:?--workers needs a number}; shift 2 ;;
      [0-9]*) n=$1; shift ;;
      *) die "unknown argument '$1' (usage: up [N] [--workers K])" ;;
    esac
  done
  [ "$n" -ge 1 ] && [ "$n" -le 9 ] || die "N must be 1..9, got $n"
  [ "$workers" -lt "$n" ] || die "--workers $workers leaves no manager among $n nodes"
  if [ -f "$STATE/nodes" ]; then
    local have
    have=$(wc -l <"$STATE/nodes")
    [ "$have" = "$n" ] || die "a test bed of $have nodes is up; run \`$0 down\` first"
  fi
  install_deps
  mkdir -p "$STATE" "$DATA"
  echo "$workers" >"$STATE/workers"
  : >"$STATE/nodes.tmp"
  local i
  for i in $(seq 1 "$n"); do echo "tbn$i" >>"$STATE/nodes.tmp"; done
  mv "$STATE/nodes.tmp" "$STATE/nodes"

  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Docker sets the FORWARD policy to DROP; traffic between nodes crosses the bridge.
  iptables -C DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null ||
    iptables -I DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  local node
  probe_encrypted_overlay
  for node in $(node_names); do create_node "$node"; done
  for node in $(node_names); do start_daemon "$node" & done
  wait
  for node in $(node_names); do dk_answers "$node" || die "dockerd of $node is not running"; done

  local first=tbn1 managers=$((n - workers))
  if [ "$(dk "$first" info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    dk "$first" swarm init --advertise-addr "$(node_ip "$first")" --listen-addr "$(node_ip "$first"):2377" \
      --default-addr-pool "$POOL" >/dev/null
  fi
  local mtoken wtoken
  mtoken=$(dk "$first" swarm join-token -q manager)
  wtoken=$(dk "$first" swarm join-token -q worker)
  for i in $(seq 2 "$n"); do
    node=tbn$i
    [ "$(dk "$node" info --format '{{.Swarm.LocalNodeState}}')" = active ] && continue
    local token=$mtoken
    [ "$i" -gt "$managers" ] && token=$wtoken
    dk "$node" swarm join --token "$token" --advertise-addr "$(node_ip "$node")" \
      --listen-addr "$(node_ip "$node"):2377" "$(node_ip "$first"):2377" >/dev/null
  done
  log "swarm of $n nodes ($managers managers) up; manager socket: $(sock "$first")"
  echo "export DOCKER_HOST=unix://$(sock "$first")"
}

# The image on every node, tagged as TAG there, so stacks deployed with
# `--resolve-image never` run it on any node.
cmd_image() {
  need_root
  local tag=${1:?usage: image TAG [--method load|registry]} method=load
  shift
  [ "${1:-}" = --method ] && method=${2:?--method needs registry or load}
  [ -f "$STATE/nodes" ] || die "no test bed is up: run \`$0 up\` first"
  docker image inspect "$tag" >/dev/null 2>&1 || die "image $tag is not on this machine's Docker: build it first (scripts/build-image.sh $tag)"
  local start node
  start=$(date +%s%N)
  case "$method" in
    registry)
      start_registry
      local name=${tag%%:*} version=${tag#*:}
      [ "$version" = "$tag" ] && version=latest
      docker tag "$tag" "127.0.0.1:$REG_PORT/$name:$version"
      docker push -q "127.0.0.1:$REG_PORT/$name:$version" >/dev/null
      docker rmi "127.0.0.1:$REG_PORT/$name:$version" >/dev/null
      for node in $(node_names); do
        (dk "$node" pull -q "$NET.1:$REG_PORT/$name:$version" >/dev/null &&
          dk "$node" tag "$NET.1:$REG_PORT/$name:$version" "$tag") &
      done
      wait
      ;;
    load)
      for node in $(node_names); do
        docker save "$tag" | dk "$node" load -q >/dev/null &
      done
      wait
      ;;
    *) die "unknown method '$method' (registry or load)" ;;
  esac
  for node in $(node_names); do
    dk "$node" image inspect "$tag" >/dev/null 2>&1 || die "image $tag did not reach $node"
  done
  log "image $tag on $(node_names | wc -l) nodes by $method in $(( ($(date +%s%N) - start) / 1000000 )) ms"
}

cmd_status() {
  if [ ! -f "$STATE/nodes" ]; then
    echo "no test bed is up"
    return 0
  fi
  local node
  for node in $(node_names); do
    local st=stopped
    if [ "$(freezer_state "$node")" != THAWED ] && [ "$(freezer_state "$node")" != ABSENT ]; then
      st=frozen
    elif dk_answers "$node"; then
      st=running
    fi
    local link
    link=$(ip -br link show "$node-h" 2>/dev/null | awk '{print $2}')
    printf '%s  %s  dockerd %s  link %s  cgroup %s  processes %s  socket %s\n' "$node" "$(node_ip "$node")" \
      "$st" "${link:-absent}" "$(freezer_state "$node")" "$(node_pids "$node" | wc -l)" "$(sock "$node")"
  done
  local m
  for m in $(node_names); do
    [ "$(freezer_state "$m")" = THAWED ] || continue
    if timeout 10 docker -H "unix://$(sock "$m")" node ls >/dev/null 2>&1; then
      timeout 10 docker -H "unix://$(sock "$m")" node ls
      break
    fi
  done
}

cmd_down() {
  need_root
  local node
  for node in $(node_names) $(ls "$STATE" 2>/dev/null | grep '^tbn[0-9]$' || true); do
    [ -d "/sys/fs/cgroup/freezer/$CG/$node" ] || [ -d "$STATE/$node" ] || continue
    # A clean stop first (dockerd stops its containers), then SIGKILL whatever is left.
    if [ -f "$STATE/$node/docker.pid" ] && [ "$(freezer_state "$node")" = THAWED ]; then
      kill -TERM "$(cat "$STATE/$node/docker.pid")" 2>/dev/null || true
    fi
  done
  local i
  for i in $(seq 1 30); do
    local alive=0
    for node in $(ls "$STATE" 2>/dev/null | grep '^tbn[0-9]$' || true); do
      [ -f "$STATE/$node/docker.pid" ] && kill -0 "$(cat "$STATE/$node/docker.pid")" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.5
  done
  for node in $(ls "$STATE" 2>/dev/null | grep '^tbn[0-9]$' || true); do
    kill_node_processes "$node"
    umount_under "$STATE/$node/exec"
    umount_under "$DATA/$node"
    umount -l "$STATE/$node/uts" 2>/dev/null || true
    ip link del "$node-h" 2>/dev/null || true
    ip netns del "$node" 2>/dev/null || true
    remove_cgroups "$node"
  done
  rmdir /sys/fs/cgroup/*/"$CG" 2>/dev/null || true
  local pidf
  for pidf in "$STATE"/registry-*.pid; do
    [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
  done
  while iptables -C DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do
    iptables -D DOCKER-USER -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  ip netns del pgswtb-xfrm 2>/dev/null || true
  rm -rf "$STATE" "$DATA"
  log "test bed removed"
}

cmd_poweroff() {
  need_root
  valid_node "$1"
  kill_node_processes "$1"
  # Like a real power-off, the node loses its run-time state (/run is a tmpfs): stale pid
  # files would make the next dockerd wait for a containerd whose pid now belongs to another
  # process.
  umount_under "$STATE/$1/exec"
  rm -rf "${STATE:?}/$1/exec" "$STATE/$1/docker.pid"
  log "$1 powered off (every process SIGKILLed)"
}

cmd_start() {
  need_root
  valid_node "$1"
  start_daemon "$1"
  log "$1 started"
}

cmd_freeze() {
  need_root
  valid_node "$1"
  if ! try_freezer "$1" FROZEN; then
    # Every task that could be frozen is: the node is hung all the same (a task in the middle
    # of an exec cannot be frozen, and cannot run either until its siblings are thawed).
    log "$1: the freezer stayed $(freezer_state "$1"): $(node_pids "$1" | wc -l) processes, all but those in an exec frozen"
  fi
  log "$1 frozen"
}

cmd_thaw() {
  need_root
  valid_node "$1"
  set_freezer "$1" THAWED
  log "$1 thawed"
}

cmd_partition() {
  need_root
  valid_node "$1"
  ip link set "$1-h" down
  log "$1 cut off (its link is down, its processes run)"
}

cmd_heal() {
  need_root
  valid_node "$1"
  ip link set "$1-h" up
  log "$1 reconnected"
}

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    image) cmd_image "$@" ;;
    env) echo "export DOCKER_HOST=unix://$(sock tbn1)" ;;
    socket) valid_node "${1:?usage: socket NODE}"; sock "$1" ;;
    poweroff | start | freeze | thaw | partition | heal) "cmd_$cmd" "${1:?usage: $cmd NODE}" ;;
    *)
      sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
      [ -z "$cmd" ] || [ "$cmd" = help ] || [ "$cmd" = -h ] || [ "$cmd" = --help ] || exit 2
      ;;
  esac
}

main "$@"
