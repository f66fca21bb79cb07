# shellcheck shell=bash
# Sourced by the sbatch scripts right after `srun ... &`. Forwards Slurm's time-limit warning
# (--signal=B:USR1@s reaches only this shell) to the tasks, waits for the step, and when training
# stopped with a checkpoint (exit code 75, "requeue me") requeues the job, which then resumes from
# that checkpoint: same job id, same dependencies, SLURM_RESTART_COUNT + 1.
step=$!
trap 'echo "met2net: time-limit warning; asking the tasks to checkpoint"; kill -USR1 "$step" 2>/dev/null' USR1
wait "$step"; rc=$?
while kill -0 "$step" 2>/dev/null; do wait "$step"; rc=$?; done  # wait returns early when the trap runs
if [ "$rc" = 75 ]; then
  if [ "${SLURM_RESTART_COUNT:-0}" -ge "${MAX_REQUEUES:-10}" ]; then
    echo "met2net: checkpoint written but job $SLURM_JOB_ID was already requeued ${SLURM_RESTART_COUNT} times" \
         "(MAX_REQUEUES=${MAX_REQUEUES:-10}); not requeueing: resubmit to go on" >&2
    exit 75
  fi
  echo "met2net: checkpoint written; requeueing job $SLURM_JOB_ID (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
  scontrol requeue "$SLURM_JOB_ID" && exit 0
  echo "met2net: 'scontrol requeue $SLURM_JOB_ID' failed (already requeued or cancelled?)" >&2
fi
exit "$rc"
