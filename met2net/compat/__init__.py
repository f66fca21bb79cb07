"""Every use of a dependency's private internals, in one place, each with what it relies on.

met2net leans on a few things that DeepSpeed and submitit do not promise to keep: attributes of ZeRO-3
parameters, DeepSpeed's op table and universal-checkpoint file layout, submitit's signal and batch-script
helpers. They live in ``deepspeed_internals`` and ``submitit_internals`` only, and the versions they were
tested with are pinned in ``pyproject.toml`` and checked at start-up by ``check_versions``.
"""
