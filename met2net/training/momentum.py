"""Momentum copies: k ← k·m + q·(1−m) for Met²Net's frozen copies, on one process and under every ZeRO stage.

The model only says which trained parameter each frozen copy follows (:meth:`Met2Net.momentum_pairs`); how the
blend reaches the weights depends on where they live, which is the training side's business: whole tensors on
one process and under ZeRO 0–2, this rank's partitions under ZeRO-3 (docs/architecture.md, "Momentum copies
under DeepSpeed"). DeepSpeed's parameter attributes are read through :mod:`met2net.compat.deepspeed_internals`
only, so this module imports no DeepSpeed itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from met2net.compat.deepspeed_internals import gathered, is_gathered, is_whole, is_zero3, partition
from met2net.model.met2net import Met2Net

Pair = tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def update_codec_copies(model: Met2Net, momentum: float) -> None:
    """E_k, D_k ← m·k + (1−m)·q (a copy at m = 0, the paper's default, as the reference).

    The schedules call it with the pre-step q weights: ``implicit`` mid-forward (the latent loss then reads
    the updated E_k, as the reference), ``stage1`` after backward."""
    momentum_update(model.momentum_pairs("codec"), momentum)


@torch.no_grad()
def update_translator_copy(model: Met2Net, momentum: float) -> None:
    """T_k ← m·T_k + (1−m)·T_q on parameters (not buffers), in place.

    Called after backward (``implicit``, ``stage2``), so the backward that just ran read the T_k of its
    forward: L_rec's gradient is the true gradient (docs/architecture.md)."""
    momentum_update(model.momentum_pairs("translator"), momentum)


@torch.no_grad()
def rebind_translator_copy(model: Met2Net, momentum: float) -> None:
    """The reference's T_k update, ``p.data = ...``, before backward (``momentum.reference_backward``).

    It binds new tensors that autograd does not see as a modification, so a pending backward reads some of
    them (conv and norm weights) and not others (the layer scales, saved as views); kept only to reproduce
    the reference bitwise. Whole parameters only (one process, ZeRO 0–2)."""
    for q, k in model.momentum_pairs("translator"):
        k.data = k.data * momentum + q.data * (1.0 - momentum)


@torch.no_grad()
def momentum_update(params: Sequence[tuple[nn.Parameter, nn.Parameter]], momentum: float) -> None:
    """k ← k·m + q·(1−m) for (q, k) parameter pairs, wherever the engine keeps their weights."""
    params = list(params)
    if params and is_zero3(params[0][1]):
        _zero3_update(params, momentum)
    else:
        blend([(q.data, k.data) for q, k in params], momentum)


@torch.no_grad()
def blend(pairs: Sequence[Pair], momentum: float) -> None:
    """k ← k·m + q·(1−m) in place on (q, k) tensor pairs, with the reference's two roundings (q·(1−m) and
    k·m each rounded, then their sum), so runs compare bitwise with it; an exact copy at m = 0."""
    q_tensors, k_tensors = [q for q, _ in pairs], [k for _, k in pairs]
    if momentum == 0.0:
        torch._foreach_copy_(k_tensors, q_tensors)
    else:
        q_scaled = torch._foreach_mul(q_tensors, 1.0 - momentum)
        torch._foreach_mul_(k_tensors, momentum)
        torch._foreach_add_(k_tensors, q_scaled)


def _zero3_update(params: list[tuple[nn.Parameter, nn.Parameter]], momentum: float) -> None:
    """Under ZeRO-3 each rank updates its own partitions: q and k parameters of one shape are partitioned
    alike, so no gather is needed. A frozen copy that is whole at the moment (a small persistent parameter)
    also gets its full ``data`` updated, from its trained twin gathered if need be (small by definition),
    unless the full data is the partition itself (one rank)."""
    pairs = [(partition(q), partition(k)) for q, k in params]
    full = [(q, k) for q, k in params if is_whole(k)]
    with gathered([q for q, _ in full if not is_gathered(q)]):
        blend(pairs + [(q.data, k.data) for q, k in full], momentum)
