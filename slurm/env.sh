# Shared environment for slurm/*.sbatch and the Hydra submitit launcher (configs/hydra/launcher/slurm.yaml).
# Sourced inside a job, before any rank starts. Every variable keeps a value the site or user already set.
#
# Launch model: one Slurm task per GPU (srun starts `python -m train.<entry>` on every rank; the trainer maps
# SLURM_PROCID/SLURM_LOCALID/SLURM_STEP_NUM_TASKS to RANK/LOCAL_RANK/WORLD_SIZE and rendezvouses on the
# first node of the step). Preemption: `#SBATCH --signal=B:USR1@<s>` reaches this batch shell only;
# moe_run forwards it through srun to every rank, which checkpoints at the end of its step and exits,
# then requeues the job. The requeued job gets the same job id, hence the same run directory, and resumes.

MOE_REPO=${MOE_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
MOE_PYTHON=${MOE_PYTHON:-$MOE_REPO/.venv/bin/python}
export MOE_REPO MOE_PYTHON

# CPU threads per rank: what Slurm gave the task. Slurm 22.05's srun does not inherit --cpus-per-task.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  export SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-$SLURM_CPUS_PER_TASK}
fi
export PYTHONUNBUFFERED=1
# DeepSpeed's JIT-compiled ops: one cache next to the code, shared by nodes on a shared file system.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$MOE_REPO/.cache/torch_extensions}
# Nothing is downloaded at run time.
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

# NCCL: warnings in the job log. Sockets: each rank sets GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME (bootstrap
# and TCP fallback), where unset, to its node's interface that routes to the first node of the step
# (train/engine/distributed.py); export them to choose another (docs/clusters.md). Sites with InfiniBand/RoCE
# usually also set NCCL_IB_HCA (e.g. mlx5) and, for RoCE, NCCL_IB_GID_INDEX=3: export them before submitting
# (sbatch passes the environment through) or in the cluster's profile.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# A failed or timed-out collective aborts the process (and with --kill-on-bad-exit, the step) instead of hanging.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# MoE all-to-all buffers change size every step; expandable segments keep the CUDA allocator from fragmenting.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

_moe_srun_pid=""
_moe_requeue=0

_moe_on_usr1() {
  echo "[moe] $(date +%T) USR1: asking every rank to checkpoint and exit, then requeueing job $SLURM_JOB_ID"
  _moe_requeue=1
  if [ -n "$_moe_srun_pid" ]; then
    kill -USR1 "$_moe_srun_pid" 2>/dev/null || true
  fi
}

_moe_on_term() {
  # scancel, a time limit or Slurm's own preemption: Slurm signals every rank itself; wait for their checkpoints.
  echo "[moe] $(date +%T) TERM: waiting for the ranks to checkpoint and exit"
}

# moe_run ENTRY [HYDRA OVERRIDES...]: run `python -m ENTRY` on every task of the job, one task per GPU.
# Adds run_name=<job name>-<job id> unless the overrides name one (or MOE_RUN_NAME_FROM_JOB=0), so a requeued
# job finds its checkpoints and two jobs never share a run directory.
moe_run() {
  local entry=$1
  shift
  local overrides=("$@")
  local has_run_name=0 o rc
  for o in "${overrides[@]}"; do
    case "$o" in run_name=*|+run_name=*|++run_name=*) has_run_name=1 ;; esac
  done
  if [ "$has_run_name" = 0 ] && [ "${MOE_RUN_NAME_FROM_JOB:-1}" = 1 ]; then
    overrides+=("run_name=${SLURM_JOB_NAME}-${SLURM_JOB_ID}")
  fi
  trap _moe_on_usr1 USR1
  trap _moe_on_term TERM
  echo "[moe] $(date +%T) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
    "${SLURM_NTASKS:-1} tasks: $MOE_PYTHON -m $entry ${overrides[*]}"
  if [ "$_moe_requeue" = 0 ]; then
    srun --kill-on-bad-exit=1 "$MOE_PYTHON" -m "$entry" "${overrides[@]}" &
    _moe_srun_pid=$!
    # `wait` returns early (status > 128) whenever a trapped signal arrives; keep waiting until srun ends.
    while :; do
      rc=0
      wait "$_moe_srun_pid" || rc=$?
      kill -0 "$_moe_srun_pid" 2>/dev/null || break
    done
  else
    rc=0
  fi
  echo "[moe] $(date +%T) srun finished with status $rc"
  if [ "$_moe_requeue" = 1 ]; then
    if scontrol requeue "$SLURM_JOB_ID"; then
      echo "[moe] requeued job $SLURM_JOB_ID; it resumes from the latest checkpoint"
      return 0
    fi
    echo "[moe] scontrol requeue $SLURM_JOB_ID failed (is the job submitted with --requeue?)" >&2
    return 1
  fi
  return "$rc"
}
