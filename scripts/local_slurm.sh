#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurm-wlm + munge), for tests and trying the sbatch files.
#   scripts/local_slurm.sh start    install if missing, write the config, start munged, slurmctld, slurmd
#   scripts/local_slurm.sh status   daemons and the node's state
#   scripts/local_slurm.sh stop     stop the daemons started here (state stays under $LOCAL_SLURM_DIR)
# Runs as root without systemd. The node is `localhost` with CPUS (default: all cores) CPUs, no GPUs;
# proctrack/linuxproc and task/none need no cgroups. /etc/slurm/slurm.conf is written only if absent or
# written by this script before.
set -euo pipefail
STATE=${LOCAL_SLURM_DIR:-/tmp/moe-local-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by moe-pipeline scripts/local_slurm.sh"
CPUS=${CPUS:-$(nproc)}

die() { echo "local_slurm: $*" >&2; exit 1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "slurm-wlm/munge are missing and installing them needs root"
  echo "local_slurm: installing slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace it"
  fi
  mkdir -p /etc/slurm "$STATE"/{ctld,slurmd,log}
  cat > "$CONF" <<EOF
$MARK
ClusterName=local
SlurmctldHost=localhost
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
SlurmdPidFile=$STATE/slurmd.pid
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
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

wait_node_idle() {
  for _ in $(seq 1 60); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle|mixed|allocated) echo "local_slurm: node localhost is $state"; return 0 ;;
      down*|drain*) scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
  done
  tail -20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  die "the node did not become idle within 60 s (logs above)"
}

start() {
  install_packages
  write_config
  start_munge
  running "$STATE/slurmctld.pid" || slurmctld || die "slurmctld did not start: see $STATE/log/slurmctld.log"
  running "$STATE/slurmd.pid" || slurmd -N localhost || die "slurmd did not start: see $STATE/log/slurmd.log"
  wait_node_idle
}

stop() {
  for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
    if running "$pidfile"; then
      kill "$(cat "$pidfile")"
    fi
  done
  echo "local_slurm: stopped slurmd and slurmctld (munged left running)"
}

status() {
  for d in munged slurmctld slurmd; do
    if pgrep -x "$d" >/dev/null; then echo "$d: running"; else echo "$d: stopped"; fi
  done
  sinfo -N -o "%N %T %c" 2>/dev/null || echo "sinfo: controller not reachable"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
