#!/usr/bin/env bash
# A local Slurm cluster on this machine (Debian's slurm-wlm + munge), for tests and trying the sbatch files.
#   scripts/local_slurm.sh start [--nodes N]  install if missing, write the config, start munged, slurmctld, slurmd(s)
#   scripts/local_slurm.sh status             daemons, and each node's state (and address, with --nodes N)
#   scripts/local_slurm.sh stop               stop what start made (state stays under $LOCAL_SLURM_DIR)
# `start` exits 3 (and changes nothing) when a cluster of another node count is running.
# Runs as root without systemd. proctrack/linuxproc and task/none need no cgroups. /etc/slurm/slurm.conf is
# written only if absent or written by this script before. Every node has CPUS (default: all cores) CPUs, no GPUs.
#
# One node (the default): the node is `localhost` (127.0.0.1), its slurmd runs in this machine's network.
# N >= 2 nodes: node i is `moe-n<i>`, a network namespace of the same name with its own hostname (a UTS
# namespace), its own address NET.<10+i> on eth0 (a veth pair whose other end is on the bridge moe-br0, NET.1
# on this machine) and its own slurmd. slurmctld (at NET.1) and munged are shared, and so is the file system,
# as on a cluster. Each node sees /etc/netns/moe-n<i>/hosts as its /etc/hosts (bind-mounted, as `ip netns exec`
# does), so every node resolves every node's name to its bridge address. NET is LOCAL_SLURM_NET (default 10.213.0, a /24 that
# must be unused here); `stop` removes the namespaces, links, files and processes start made.
set -euo pipefail
STATE=${LOCAL_SLURM_DIR:-/tmp/moe-local-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by moe-pipeline scripts/local_slurm.sh"
CPUS=${CPUS:-$(nproc)}
NET=${LOCAL_SLURM_NET:-10.213.0}
BRIDGE=moe-br0

die() { echo "local_slurm: $*" >&2; exit 1; }

install_packages() {
  local need=()
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
      || ! command -v sbatch >/dev/null; then
    need+=(slurm-wlm munge)
  fi
  if [ "$NODES" -gt 1 ] && { ! command -v ip >/dev/null || ! command -v unshare >/dev/null; }; then
    need+=(iproute2 util-linux)
  fi
  [ ${#need[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || die "${need[*]} missing and installing them needs root"
  echo "local_slurm: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

node_names() {
  if [ "$NODES" = 1 ]; then echo localhost; else seq -f "moe-n%g" 1 "$NODES"; fi
}

write_config() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace it"
  fi
  mkdir -p /etc/slurm "$STATE"/{ctld,slurmd,log}
  local ctld_host slurmd_files nodes
  if [ "$NODES" = 1 ]; then
    ctld_host=localhost
    slurmd_files="SlurmdPidFile=$STATE/slurmd.pid
SlurmdSpoolDir=$STATE/slurmd
SlurmdLogFile=$STATE/log/slurmd.log"
    nodes="NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
  else
    # the controller is this machine, reached by every node at the bridge's address
    ctld_host="$(hostname -s)($NET.1)"
    # %n: each node's slurmd has its own pid file, spool folder and log
    slurmd_files="SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmdLogFile=$STATE/log/slurmd-%n.log"
    nodes=""
    for i in $(seq 1 "$NODES"); do
      nodes+="NodeName=moe-n$i NodeAddr=$NET.$((10 + i)) CPUs=$CPUS State=UNKNOWN"$'\n'
    done
    nodes+="PartitionName=local Nodes=moe-n[1-$NODES] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
    # Several slurmds and their jobs share this machine's cores: give a busy slurmd 60 s to answer (default
    # 10 s). A request that times out is resent later, and a resent "signal step N.0" then hits the step of
    # the same id in the job's requeued run.
    nodes="MessageTimeout=60"$'\n'"$nodes"
  fi
  cat > "$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=$ctld_host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at the queue every 2 s (defaults: 60 s and 30 s), so a requeued job restarts promptly.
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmctldPidFile=$STATE/slurmctld.pid
$slurmd_files
StateSaveLocation=$STATE/ctld
SlurmctldLogFile=$STATE/log/slurmctld.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$nodes
EOF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
  if pgrep -x munged >/dev/null; then return; fi
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged" || die "munged did not start"
  else
    munged --force || die "munged did not start"
  fi
}

# --- the network of a multi-node cluster: a bridge here, one namespace per node ---

check_net_unused() {
  local owner
  owner=$(ip -4 -o addr show | awk -v net="$NET." 'index($4, net) == 1 {print $2}' | grep -vx "$BRIDGE" || true)
  [ -z "$owner" ] || die "$NET.0/24 is already used here (on $owner); pick another with LOCAL_SLURM_NET"
  if ip -4 route show | grep -q "^$NET\.0/24 " && ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    die "a route to $NET.0/24 exists here already; pick another with LOCAL_SLURM_NET"
  fi
}

write_hosts() {
  local ns=$1 i
  mkdir -p "/etc/netns/$ns"
  {
    echo "$MARK: node $ns's /etc/hosts (bind-mounted there)"
    echo "127.0.0.1 localhost"
    echo "$NET.1 $(hostname -s)"
    for i in $(seq 1 "$NODES"); do echo "$NET.$((10 + i)) moe-n$i"; done
  } > "/etc/netns/$ns/hosts"
}

make_network() {
  check_net_unused
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  local i ns
  for i in $(seq 1 "$NODES"); do
    ns=moe-n$i
    ip netns list | grep -qw "^$ns" || ip netns add "$ns"
    if ! ip link show "moe-v$i" >/dev/null 2>&1; then
      ip link add "moe-v$i" type veth peer name eth0 netns "$ns"
      ip link set "moe-v$i" master "$BRIDGE" up
      ip -n "$ns" addr add "$NET.$((10 + i))/24" dev eth0
    fi
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    write_hosts "$ns"
  done
}

start_slurmd() {
  local node=$1
  if [ "$NODES" = 1 ]; then
    running "$STATE/slurmd.pid" || slurmd -N localhost || die "slurmd did not start: see $STATE/log/slurmd.log"
    return
  fi
  running "$STATE/slurmd-$node.pid" && return
  mkdir -p "$STATE/slurmd/$node"
  # Its own hostname (UTS namespace), its own /etc/hosts (a mount namespace) and its own network. Not
  # `ip netns exec`: that mounts a fresh /sys, without the cgroup mounts slurmd needs at start.
  unshare --uts --mount --propagation private sh -c "hostname $node && mount --bind /etc/netns/$node/hosts \
    /etc/hosts && exec nsenter --net=/run/netns/$node slurmd -N $node" \
    || die "slurmd of $node did not start: see $STATE/log/slurmd-$node.log"
}

wait_nodes_idle() {
  local node state ready
  for _ in $(seq 1 60); do
    ready=0
    for node in $(node_names); do
      state=$(sinfo -h -n "$node" -N -o %T 2>/dev/null | head -1 || true)
      case "$state" in
        idle|mixed|allocated) ready=$((ready + 1)) ;;
        down*|drain*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
      esac
    done
    if [ "$ready" = "$NODES" ]; then
      sinfo -N -h -o "local_slurm: node %N is %T" | sort -u
      return 0
    fi
    sleep 1
  done
  tail -20 "$STATE"/log/*.log >&2 || true
  die "not every node became idle within 60 s (logs above)"
}

start() {
  [ "$NODES" -ge 1 ] 2>/dev/null || die "--nodes wants a positive number, not '$NODES'"
  if running "$STATE/slurmctld.pid" && [ "$(cat "$STATE/nodes" 2>/dev/null || echo 1)" != "$NODES" ]; then
    echo "local_slurm: a $(cat "$STATE/nodes" 2>/dev/null || echo 1)-node cluster is running; run '$0 stop' first" >&2
    exit 3
  fi
  [ "$NODES" = 1 ] || [ "$(id -u)" = 0 ] || die "network namespaces for $NODES nodes need root"
  install_packages
  write_config
  # the controller's saved state names the nodes it had: start clean when the node set changed
  if [ "$(cat "$STATE/layout" 2>/dev/null)" != "$(node_names | tr '\n' ' ')" ]; then
    rm -rf "$STATE/ctld" && mkdir -p "$STATE/ctld"
  fi
  node_names | tr '\n' ' ' > "$STATE/layout"
  echo "$NODES" > "$STATE/nodes"
  if ! pgrep -x munged >/dev/null; then
    start_munge
    touch "$STATE/munged.ours"
  fi
  [ "$NODES" = 1 ] || make_network
  running "$STATE/slurmctld.pid" || slurmctld || die "slurmctld did not start: see $STATE/log/slurmctld.log"
  local node
  for node in $(node_names); do start_slurmd "$node"; done
  wait_nodes_idle
}

stop_pid() {  # stop_pid PID: TERM, then KILL after 10 s
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}

stop() {
  local pidfile node pid i stopped=()
  NODES=$(cat "$STATE/nodes" 2>/dev/null || echo 1)
  for pidfile in "$STATE"/slurmd.pid "$STATE"/slurmd-moe-n*.pid "$STATE/slurmctld.pid"; do
    if running "$pidfile"; then
      stop_pid "$(cat "$pidfile")"
      stopped+=("$(basename "$pidfile" .pid)")
    fi
  done
  # every namespace, link and leftover process (a job's tasks) of a multi-node cluster
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^moe-n[0-9]+$/ {print $1}'); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do stop_pid "$pid"; done
    ip netns del "$ns"
    rm -rf "/etc/netns/$ns"
    stopped+=("namespace $ns")
  done
  rmdir /etc/netns 2>/dev/null || true
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^moe-v[0-9]+(@|$)' | cut -d@ -f1); do
    ip link del "$link" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE"
    stopped+=("bridge $BRIDGE")
  fi
  if [ -f "$STATE/munged.ours" ]; then
    pid=$(cat /run/munge/munged.pid 2>/dev/null || pgrep -x munged || true)
    [ -z "$pid" ] || stop_pid "$pid"
    rm -f "$STATE/munged.ours"
    stopped+=(munged)
  fi
  rm -f "$STATE/nodes"
  echo "local_slurm: stopped ${stopped[*]:-nothing (nothing was running)}"
}

status() {
  NODES=$(cat "$STATE/nodes" 2>/dev/null || echo 1)
  local d node
  for d in munged slurmctld; do
    if pgrep -x "$d" >/dev/null; then echo "$d: running"; else echo "$d: stopped"; fi
  done
  if [ "$NODES" = 1 ]; then
    if running "$STATE/slurmd.pid"; then echo "slurmd: running"; else echo "slurmd: stopped"; fi
  else
    for node in $(node_names); do
      if running "$STATE/slurmd-$node.pid"; then
        echo "slurmd of $node: running (pid $(cat "$STATE/slurmd-$node.pid"), hostname" \
          "$(nsenter -t "$(cat "$STATE/slurmd-$node.pid")" -u hostname)," \
          "$(ip -n "$node" -4 -o addr show eth0 2>/dev/null | awk '{print $2, $4}'))"
      else
        echo "slurmd of $node: stopped"
      fi
    done
  fi
  sinfo -N -o "%N %T %c %o" 2>/dev/null || echo "sinfo: controller not reachable"
}

NODES=1
case "${1:-}" in
  start)
    shift
    while [ $# -gt 0 ]; do
      case "$1" in
        --nodes) NODES=${2:-}; shift 2 ;;
        --nodes=*) NODES=${1#--nodes=}; shift ;;
        *) die "unknown option $1 (usage: $0 start [--nodes N])" ;;
      esac
    done
    start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start [--nodes N]|stop|status" >&2; exit 2 ;;
esac
