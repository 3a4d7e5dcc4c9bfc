#!/usr/bin/env bash
# Submit a Slurm job after checking its Hydra overrides, so a typo fails here and not after the queue wait.
#   scripts/submit.sh [sbatch options] slurm/pretrain.sbatch [hydra overrides]
#   scripts/submit.sh --nodes=4 --time=48:00:00 slurm/pretrain.sbatch experiment=pretrain_text_tiny parallel.ep_size=8
# sbatch options go before the file (they override its #SBATCH lines), overrides after it, as with sbatch.
# Checks: Hydra composes the entry's config (`python -m ENTRY --cfg job`: unknown keys, wrong types, missing
# group options, with Hydra's own message), then the entry's validate() at the job's world size
# (nodes x tasks per node, e.g. parallel.ep_size must divide it). Prints the job id on success.
# MOE_PYTHON picks the interpreter (default .venv/bin/python); the job itself runs from this repository.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export MOE_REPO=${MOE_REPO:-$REPO}
export MOE_PYTHON=${MOE_PYTHON:-$REPO/.venv/bin/python}

die() { echo "submit: $*" >&2; exit 1; }

sbatch_opts=()
script=""
while [ $# -gt 0 ]; do
  case "$1" in
    *.sbatch) script=$1; shift; break ;;
    *) sbatch_opts+=("$1"); shift ;;
  esac
done
[ -n "$script" ] || die "usage: $0 [sbatch options] slurm/<job>.sbatch [hydra overrides]"
[ -f "$script" ] || script=$REPO/$script
[ -f "$script" ] || die "no such sbatch file: $script"
overrides=("$@")

entry=$(sed -n 's/^MOE_ENTRY=\([A-Za-z0-9_.]*\)$/\1/p' "$script" | head -1)
[ -n "$entry" ] || die "$script does not set MOE_ENTRY=<python module>"

# The job's world size: the file's #SBATCH lines, then the command line (later wins), as sbatch reads them.
nodes=1 ntasks="" per_node=1
read_opts() {
  while [ $# -gt 0 ]; do
    local opt=$1 val=""
    case "$opt" in
      --nodes=*|--ntasks=*|--ntasks-per-node=*) val=${opt#*=}; opt=${opt%%=*} ;;
      --nodes|--ntasks|--ntasks-per-node|-N|-n) val=${2:-}; shift ;;
      -N*|-n*) val=${opt:2}; opt=${opt:0:2} ;;
    esac
    case "$opt" in
      --nodes|-N) nodes=${val%%-*} ;;
      --ntasks|-n) ntasks=$val ;;
      --ntasks-per-node) per_node=$val ;;
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

mkdir -p runs/slurm
sbatch --parsable "${sbatch_opts[@]+"${sbatch_opts[@]}"}" "$script" "${overrides[@]+"${overrides[@]}"}"
