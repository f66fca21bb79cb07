"""The step-time split (met2net/scaling/timing.py) and the bytes a rank holds (met2net/scaling/footprint.py), on real
torch objects and a real one-process gloo group."""

import time

import pytest
import torch
import torch.distributed as dist

from met2net.scaling.footprint import footprint, innermost_optimizer, storage_bytes
from met2net.scaling.timing import CommTimer, StepClock, StepTimes, mean_over_ranks, summarize


def test_summarize_takes_the_timed_steps_after_the_warmup():
    steps = [StepTimes(9.0, 0, 0, 0, 0, 0, 99)] + [StepTimes(1.0 + i, 0.1, 0.2, 0.3, 0.1, 0.2, 4 + i) for i in range(3)]
    out = summarize(steps, warmup=1, timed=2)
    assert out["wall_s"] == 3.0 and out["step_s"] == 1.5
    assert out["ring_passes_per_step"] == 4.5  # (4 + 5) / 2: the warm-up step's 99 left out
    assert out["forward_s"] == pytest.approx(0.2) and out["other_s"] == pytest.approx(1.5 - 0.9)
    with pytest.raises(ValueError, match="need more"):
        summarize(steps, warmup=1, timed=4)
    assert mean_over_ranks([{"a": 1.0}, {"a": 3.0}]) == {"a": 2.0}


def test_clock_parts_add_up_to_the_wall_time():
    clock = StepClock()
    clock.start()
    for _ in range(2):
        with clock.phase("forward"):
            time.sleep(0.02)
        time.sleep(0.01)  # outside every phase: other
        with clock.phase("optimizer"):
            time.sleep(0.01)
        step = clock.end_step()
        assert step.forward >= 0.02 and step.optimizer >= 0.01 and step.other >= 0.01
        assert step.data + step.forward + step.backward + step.optimizer + step.comm + step.other == pytest.approx(
            step.wall
        )
    assert len(clock.steps) == 2


def test_comm_timer_counts_real_collectives_and_takes_them_out_of_the_phase(tmp_path):
    original = dist.all_reduce
    comm = CommTimer().install()
    assert dist.all_reduce is not original
    try:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        clock = StepClock(comm)
        clock.start()
        with clock.phase("backward"):
            dist.all_reduce(torch.ones(4))
            work = dist.all_reduce(torch.ones(4), async_op=True)
            assert work.is_completed()  # waited for inside the timer
            dist.all_gather_object([None], 1)  # counted once, not again for the all_gather inside it
        step = clock.end_step()
        assert comm.calls == 3 and comm.seconds > 0
        assert comm.passes == step.passes == 5  # an all-reduce is two ring passes, an all-gather one
        assert comm.calls_by_op == {"all_reduce": 2, "all_gather_object": 1}
        assert step.comm == pytest.approx(comm.seconds) and step.backward >= 0
        assert step.backward + step.comm + step.other == pytest.approx(step.wall)
    finally:
        comm.uninstall()
        dist.destroy_process_group()
    assert dist.all_reduce is original


def test_footprint_counts_storages_once():
    model = torch.nn.Linear(10, 5)  # 55 parameters
    flat = torch.zeros(100)
    assert storage_bytes([flat[:10], flat[10:20]]) == 400  # views of one buffer: the buffer, once
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 10)).sum().backward()
    optimizer.step()
    held = footprint(model, optimizer)
    assert held == {"parameters_bytes": 55 * 4, "gradients_bytes": 55 * 4, "optimizer_bytes": 2 * 55 * 4}
    assert innermost_optimizer(optimizer) is optimizer


def test_footprint_counts_master_copies_as_optimizer_state():
    model = torch.nn.Linear(10, 5)
    masters = [p.detach().clone().requires_grad_() for p in model.parameters()]  # like ZeRO's fp32 partitions
    optimizer = torch.optim.SGD(masters, lr=0.1)
    for m in masters:
        m.grad = torch.ones_like(m)
    optimizer.step()
    held = footprint(model, optimizer)
    assert held == {"parameters_bytes": 220, "gradients_bytes": 220, "optimizer_bytes": 220}
