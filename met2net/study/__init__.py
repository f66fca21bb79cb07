"""Scaling studies run for real (`met2net scale run`, docs/scaling.md): every point of a sweep trained by the trainer
`met2net train` builds, on local processes (torchrun) or Slurm (submitit through `met2net/launch/`), timed from
outside the loop, one row each in results.csv. What a sweep file says, the timers, the byte counts, the rows and the
report are `met2net/scaling/`'s; this package is the part that starts ranks and builds trainers."""
