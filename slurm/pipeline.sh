#!/usr/bin/env bash
# Stage one, then stage two once stage one succeeded (--dependency=afterok), ROUNDS times (2N jobs;
# round r > 1 starts from round r-1's stage two, each round in RUN_DIR/round_<r>).
#   CONFIG=configs/mv5_5.625.yaml RUN_DIR=runs/mv5 ROUNDS=2 bash slurm/pipeline.sh [sbatch flags...]
#   (ROUNDS unset: the config's training.rounds, 2 unless it says otherwise; the quick start's 4)
#   DRY_RUN=1 ... prints the sbatch commands instead of running them.
#   GPU_LAYOUT=task ... has srun bind one GPU to each task (slurm/job.sh; default node: each task sees its node's).
# Extra arguments go to every sbatch (e.g. --partition=gpu --nodes=4); OVERRIDES to every `met2net train`.
# The job plan (names, run directories, dependencies, each job's OVERRIDES) comes from met2net itself
# (`python -m met2net.launch.plan`, the plan `met2net submit` uses), run with ${MET2NET_PYTHON:-python3}: the
# Python of the environment the jobs use (sbatch passes PATH on), e.g. with `source .venv/bin/activate`.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIG=${CONFIG:-configs/mv5_5.625.yaml}
RUN_DIR=${RUN_DIR:-runs/met2net}
ROUNDS=${ROUNDS:-}
OVERRIDES=${OVERRIDES:-}
DRY_RUN=${DRY_RUN:-0}
GPU_LAYOUT=${GPU_LAYOUT:-}
PYTHON=${MET2NET_PYTHON:-python3}
[[ "$ROUNDS" =~ ^([1-9][0-9]*)?$ ]] || { echo "pipeline.sh: ROUNDS=$ROUNDS must be a positive integer" >&2; exit 2; }
[[ "$GPU_LAYOUT" =~ ^(|node|task)$ ]] || { echo "pipeline.sh: GPU_LAYOUT=$GPU_LAYOUT: expected node or task" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "pipeline.sh: CONFIG=$CONFIG does not exist (run from the repository root?)" >&2; exit 2; }
# the plan module of this checkout (next to this script), whatever met2net the Python has installed
status=0
plan=$(PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m met2net.launch.plan --run-dir="$RUN_DIR" \
       --config="$CONFIG" ${ROUNDS:+--rounds="$ROUNDS"} --stages=stage1,stage2 --overrides="$OVERRIDES") || status=$?
[ "$status" = 2 ] && exit 2  # a value the plan refuses; the reason is printed above
[ "$status" = 0 ] || { echo "pipeline.sh: '$PYTHON -m met2net.launch.plan' failed (above): activate the environment" \
                         "the jobs use (source .venv/bin/activate), or set MET2NET_PYTHON to its python" >&2; exit 2; }
mapfile -t jobs <<< "$plan"
[ "$DRY_RUN" = 1 ] || mkdir -p "$RUN_DIR/logs"

ids=()
for line in "${jobs[@]}"; do
  # name, schedule, round, run dir, index of the job to wait for (- for none), the job's OVERRIDES
  IFS=$'\t' read -r name schedule round dir after overrides <<< "$line"
  previous=""  # expanded unquoted below: no word at all when the job waits for none
  [ "$after" = - ] || previous=${ids[$after]}
  cmd=(env CONFIG="$CONFIG" RUN_DIR="$dir" OVERRIDES="$overrides" ${GPU_LAYOUT:+GPU_LAYOUT=$GPU_LAYOUT}
       MET2NET_SLURM_DIR="$HERE"
       sbatch --parsable --job-name="$name" --output="$RUN_DIR/logs/%x-%j.out"
       ${previous:+--dependency=afterok:$previous} "$@" "$HERE/$schedule.sbatch")
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
    ids+=("<job id of $name>")
    continue
  fi
  id=$("${cmd[@]}" < /dev/null)
  id=${id%%;*}  # --parsable prints "id[;cluster]"
  ids+=("$id")
  [ -f "$RUN_DIR/jobs.tsv" ] || printf 'job_id\texecutor\tname\tschedule\tround\trun_dir\tlog\n' > "$RUN_DIR/jobs.tsv"
  printf '%s\tslurm\t%s\t%s\t%s\t%s\t%s\n' "$id" "$name" "$schedule" "$round" "$dir" \
    "$RUN_DIR/logs/$name-$id.out" >> "$RUN_DIR/jobs.tsv"
  echo "submitted $name: job $id (run dir $dir)"
done
[ "$DRY_RUN" = 1 ] && exit 0
echo "jobs ${ids[*]}; watch with: squeue -j $(IFS=,; echo "${ids[*]}")   or   met2net status $RUN_DIR"
echo "logs: $RUN_DIR/logs/   (a failed stage cancels the jobs after it)"
