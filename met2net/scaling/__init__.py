"""Cluster scaling studies (`met2net scale`, docs/scaling.md): the projection model and its calibration, the
collective micro-benchmark, and the report of a sweep. Nothing here imports the model or the trainer: a projection
is arithmetic on measured numbers, and the benchmark times torch's collectives alone."""
