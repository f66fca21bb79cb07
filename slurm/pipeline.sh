#!/usr/bin/env bash
# Stage one, then stage two once stage one succeeded (--dependency=afterok), ROUNDS times (2N jobs;
# round r > 1 starts from round r-1's stage two, each round in RUN_DIR/round_<r>).
#   CONFIG=configs/mv5_5.625.yaml RUN_DIR=runs/mv5 ROUNDS=1 bash slurm/pipeline.sh [sbatch flags...]
#   DRY_RUN=1 ... prints the sbatch commands instead of running them.
# Extra arguments go to every sbatch (e.g. --partition=gpu --nodes=4); OVERRIDES to every `met2net train`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIG=${CONFIG:-configs/mv5_5.625.yaml}
RUN_DIR=${RUN_DIR:-runs/met2net}
ROUNDS=${ROUNDS:-1}
OVERRIDES=${OVERRIDES:-}
DRY_RUN=${DRY_RUN:-0}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "pipeline.sh: ROUNDS=$ROUNDS must be a positive integer" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "pipeline.sh: CONFIG=$CONFIG does not exist (run from the repository root?)" >&2; exit 2; }
[ "$DRY_RUN" = 1 ] || mkdir -p "$RUN_DIR/logs"

previous="" ids=()
for round in $(seq 1 "$ROUNDS"); do
  dir=$RUN_DIR; suffix=""
  [ "$ROUNDS" -gt 1 ] && dir=$RUN_DIR/round_$round && suffix=-r$round
  for stage in stage1 stage2; do
    extra=$OVERRIDES
    [ "$stage" = stage1 ] && [ "$round" -gt 1 ] && extra="$extra training.init_from=$RUN_DIR/round_$((round - 1))/checkpoints/stage2"
    [ "$stage" = stage2 ] && extra="$extra training.init_from="  # this round's stage one
    cmd=(env CONFIG="$CONFIG" RUN_DIR="$dir" OVERRIDES="${extra# }" MET2NET_SLURM_DIR="$HERE"
         sbatch --parsable --job-name="met2net-$stage$suffix" --output="$RUN_DIR/logs/%x-%j.out"
         ${previous:+--dependency=afterok:$previous} "$@" "$HERE/$stage.sbatch")
    if [ "$DRY_RUN" = 1 ]; then
      printf '%q ' "${cmd[@]}"; echo
      previous="<job id of met2net-$stage$suffix>"
      continue
    fi
    previous=$("${cmd[@]}")
    previous=${previous%%;*}  # --parsable prints "id[;cluster]"
    ids+=("$previous")
    [ -f "$RUN_DIR/jobs.tsv" ] || printf 'job_id\texecutor\tname\tschedule\tround\trun_dir\tlog\n' > "$RUN_DIR/jobs.tsv"
    printf '%s\tslurm\t%s\t%s\t%s\t%s\t%s\n' "$previous" "met2net-$stage$suffix" "$stage" "$round" "$dir" \
      "$RUN_DIR/logs/met2net-$stage$suffix-$previous.out" >> "$RUN_DIR/jobs.tsv"
    echo "submitted met2net-$stage$suffix: job $previous (run dir $dir)"
  done
done
[ "$DRY_RUN" = 1 ] && exit 0
echo "jobs ${ids[*]}; watch with: squeue -j $(IFS=,; echo "${ids[*]}")   or   met2net status $RUN_DIR"
echo "logs: $RUN_DIR/logs/   (a failed stage cancels the jobs after it)"
