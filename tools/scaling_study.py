"""``met2net scale run`` as a script: every point of a scaling sweep trained for real, one row each in
``OUT/results.csv``, then ``OUT/report.md`` and its plots (docs/scaling.md, "Running a sweep").

    python tools/scaling_study.py configs/sweep_cpu.yaml -o runs/scaling/cpu
    python tools/scaling_study.py configs/sweep_cpu.yaml -o runs/scaling/slurm --executor slurm
    python tools/scaling_study.py configs/sweep_cpu.yaml --dry-run

Run it again after a stop: the points already in results.csv are skipped (``--retry-failed`` runs failed ones again).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from met2net.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["scale", "run", *sys.argv[1:]]))
