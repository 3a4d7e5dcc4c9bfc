#!/usr/bin/env bash
# Submit a Slurm job after checking its Hydra overrides and its plan, so a typo or a job that cannot fit in GPU
# memory fails here and not after the queue wait.
#   scripts/submit.sh [--force] [sbatch options] slurm/pretrain.sbatch [hydra overrides]
#   scripts/submit.sh --nodes=16 slurm/pretrain.sbatch experiment=qwen3_5_397b_cpt_16x8
#   scripts/submit.sh --nodes=4 --time=48:00:00 slurm/pretrain.sbatch model=qwen3_30b_a3b cluster=h200 ...
# sbatch options go before the file (they override its #SBATCH lines), overrides after it, as with sbatch.
# Checks: Hydra composes the entry's config (`python -m ENTRY --cfg job`: unknown keys, wrong types, missing
# group options, with Hydra's own message), then the entry's validate() at the job's world size
# (nodes x tasks per node, e.g. parallel.ep_size must divide it), then for training entries `python -m train.plan`
# at that shape (cluster.nodes and cluster.gpus_per_node set from the sbatch options): a plan that does not fit
# the device's memory is refused unless --force is given. Prints the job id on success.
# MOE_PYTHON picks the interpreter (default .venv/bin/python); the job itself runs from this repository.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export MOE_REPO=${MOE_REPO:-$REPO}
export MOE_PYTHON=${MOE_PYTHON:-$REPO/.venv/bin/python}

die() { echo "submit: $*" >&2; exit 1; }

sbatch_opts=()
script=""
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1; shift ;;
    *.sbatch) script=$1; shift; break ;;
    *) sbatch_opts+=("$1"); shift ;;
  esac
done
[ -n "$script" ] || die "usage: $0 [--force] [sbatch options] slurm/<job>.sbatch [hydra overrides]"
[ -f "$script" ] || script=$REPO/$script
[ -f "$script" ] || die "no such sbatch file: $script"
overrides=("$@")

entry=$(sed -n 's/^MOE_ENTRY=\([A-Za-z0-9_.]*\)$/\1/p' "$script" | head -1)
[ -n "$entry" ] || die "$script does not set MOE_ENTRY=<python module>"

# The job's world size: the file's #SBATCH lines, then the command line (later wins), as sbatch reads them.
nodes=1 ntasks="" per_node=1 gpus_per_node=0
read_opts() {
  while [ $# -gt 0 ]; do
    local opt=$1 val=""
    case "$opt" in
      --nodes=*|--ntasks=*|--ntasks-per-node=*|--gpus-per-node=*) val=${opt#*=}; opt=${opt%%=*} ;;
      --nodes|--ntasks|--ntasks-per-node|--gpus-per-node|-N|-n) val=${2:-}; shift ;;
      -N*|-n*) val=${opt:2}; opt=${opt:0:2} ;;
    esac
    case "$opt" in
      --nodes|-N) nodes=${val%%-*} ;;
      --ntasks|-n) ntasks=$val ;;
      --ntasks-per-node) per_node=$val ;;
      --gpus-per-node) gpus_per_node=${val##*:} ;;
    esac
    shift
  done
}
# shellcheck disable=SC2046
read_opts $(sed -n 's/^#SBATCH[[:space:]]\+//p' "$script")
read_opts "${sbatch_opts[@]+"${sbatch_opts[@]}"}"
world=${ntasks:-$((nodes * per_node))}

job_yaml=$(mktemp)
trap 'rm -f "$job_yaml"' EXIT
cd "$REPO"
if ! "$MOE_PYTHON" -m "$entry" --cfg job --resolve "${overrides[@]+"${overrides[@]}"}" >"$job_yaml" 2>"$job_yaml.err"; then
  cat "$job_yaml.err" >&2
  rm -f "$job_yaml.err"
  die "Hydra refused the overrides for $entry; nothing was queued"
fi
rm -f "$job_yaml.err"
if ! "$MOE_PYTHON" -m train.check_config "$entry" "$world" "$job_yaml"; then
  die "the config is not valid for $world ranks; nothing was queued"
fi

# Will it fit? (training entries: their config name is the module's last part)
case "$entry" in
  train.pretrain|train.sft)
    plan_gpu=$("$MOE_PYTHON" -c 'import sys; from omegaconf import OmegaConf; print(OmegaConf.load(sys.argv[1]).cluster.gpu)' "$job_yaml")
    if [ "$plan_gpu" = cpu ] && [ "${gpus_per_node:-0}" != 0 ] && [ "$force" = 0 ]; then
      die "the job asks for $gpus_per_node GPUs per node but its plan is for cluster=cpu: pass cluster=h200 or cluster=h100 (or --force); nothing was queued"
    fi
    rc=0
    "$MOE_PYTHON" -m train.plan --config-name "${entry#train.}" --check "${overrides[@]+"${overrides[@]}"}" \
      "cluster.nodes=$((world / per_node > 0 ? world / per_node : 1))" "cluster.gpus_per_node=$((world < per_node ? world : per_node))" \
      >&2 || rc=$?
    if [ "$rc" != 0 ] && [ "$force" = 0 ]; then
      if [ "$rc" = 1 ]; then
        die "the plan above does not fit the device's memory; change the layout (see its suggestions) or pass --force; nothing was queued"
      fi
      die "train.plan failed (status $rc); pass --force to queue anyway; nothing was queued"
    fi
    [ "$rc" = 0 ] || echo "submit: --force: queueing although the plan check failed (status $rc)" >&2
    ;;
esac

mkdir -p runs/slurm
sbatch --parsable "${sbatch_opts[@]+"${sbatch_opts[@]}"}" "$script" "${overrides[@]+"${overrides[@]}"}"
