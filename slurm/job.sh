# shellcheck shell=bash
# The body of every met2net batch job, sourced by slurm/stage1.sbatch and slurm/stage2.sbatch once they set
# SCHEDULE (sbatch runs a copy of the batch script, so this file is found through MET2NET_SLURM_DIR, set by
# pipeline.sh, or $SLURM_SUBMIT_DIR/slurm). It runs `met2net train` on every task of the allocation (srun starts
# one task per rank; met2net reads SLURM_PROCID/NTASKS/LOCALID), forwards Slurm's time-limit warning
# (--signal=B:USR1@s reaches only this shell) to the tasks, and when training stopped with a checkpoint (exit
# code 75, "requeue me") requeues the job, which then resumes from that checkpoint: same job id, same
# dependencies, SLURM_RESTART_COUNT + 1.
: "${SCHEDULE:?is set by slurm/stage1.sbatch and slurm/stage2.sbatch, which source this file}"
CONFIG=${CONFIG:-configs/mv5_5.625.yaml}
RUN_DIR=${RUN_DIR:-runs/met2net}
OVERRIDES=${OVERRIDES:-}
MAX_REQUEUES=${MAX_REQUEUES:-10}
GPU_LAYOUT=${GPU_LAYOUT:-node}  # node: every task sees its node's GPUs; task: srun binds one GPU to each task
case "$GPU_LAYOUT" in          # the same mapping as met2net/launch/plan.py's GPU_BIND (docs/cluster.md, GPU layouts)
  node) gpu_bind=() ;;
  task) gpu_bind=(--gpu-bind=single:1) ;;
  *) echo "met2net: GPU_LAYOUT=$GPU_LAYOUT: expected node or task" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

# --- site settings (uncomment and adapt; docs/cluster.md) ---------------------------------------
# module load cuda/12.4 && source "$SLURM_SUBMIT_DIR/.venv/bin/activate"
# export NCCL_SOCKET_IFNAME=ib0        # the fabric's interface (ip -br link)
# export NCCL_IB_HCA=mlx5              # InfiniBand adapters
# export NCCL_DEBUG=WARN               # INFO to debug start-up hangs
# ------------------------------------------------------------------------------------------------

read -rd '' -a overrides <<< "$OVERRIDES" || true  # key=value words split on blanks, never globbed ([16,32])
srun --wait=60 "${gpu_bind[@]}" met2net train "$CONFIG" training.schedule="$SCHEDULE" run.dir="$RUN_DIR" "${overrides[@]}" &
step=$!
trap 'echo "met2net: time-limit warning; asking the tasks to checkpoint"; kill -USR1 "$step" 2>/dev/null' USR1
wait "$step"; rc=$?
while kill -0 "$step" 2>/dev/null; do wait "$step"; rc=$?; done  # wait returns early when the trap runs
if [ "$rc" = 75 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -ge "$MAX_REQUEUES" ]; then
    echo "met2net: checkpoint written but job $SLURM_JOB_ID was already requeued ${SLURM_RESTART_COUNT} times" \
         "(MAX_REQUEUES=$MAX_REQUEUES); not requeueing: resubmit to go on" >&2
    exit 75
  fi
  echo "met2net: checkpoint written; requeueing job $SLURM_JOB_ID (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
  scontrol requeue "$SLURM_JOB_ID" && exit 0
  echo "met2net: 'scontrol requeue $SLURM_JOB_ID' failed (already requeued or cancelled?)" >&2
fi
exit "$rc"
