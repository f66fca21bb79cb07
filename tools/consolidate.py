"""``met2net consolidate`` as a script: a sharded training checkpoint → ``OUT/model.safetensors`` + ``met2net.json``.

    python tools/consolidate.py runs/mv5/checkpoints/stage2/step_1000 -o mv5_weights [--weights all]
    python tools/consolidate.py --verify mv5_weights

Imports no training-loop code (nor DeepSpeed): the checkpoint's files are read directly (met2net/consolidate/).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from met2net.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["consolidate", *sys.argv[1:]]))
