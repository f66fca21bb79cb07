"""Cluster scaling studies (`met2net scale`, docs/scaling.md): the projection model and its calibration, the
collective micro-benchmark, a sweep's file, timers, byte counts, rows, report and plots. Nothing here imports the model
or the trainer: a projection is arithmetic on measured numbers, the benchmark times torch's collectives alone, and the
timers wrap whatever objects ``met2net/study/`` (which builds the trainer) hands them."""
