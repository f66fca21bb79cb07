"""The projection model against values computed by hand (docs/scaling.md's formulas)."""

import pytest

from met2net.errors import UserError
from met2net.scaling.projection import (
    Link,
    Network,
    Workload,
    batch_for_efficiency,
    comm_time,
    exposed_time,
    markdown,
    project,
    project_all,
    ring_factors,
)

# 100 M parameters in bf16 (S = 2·10⁸ bytes), 10 ms per sample; NVLink-like node of 8, 25 GB/s per GPU between nodes
WORK = Workload(compute_s_per_sample=0.01, parameters=100_000_000, bytes_per_element=2)
NET = Network(intra=Link(200.0, 2.0), inter=Link(25.0, 5.0), gpus_per_node=8)


def test_ring_factors():
    assert ring_factors(1, 0) == (0.0, 0)
    assert ring_factors(2, 0) == (1.0, 2)  # all-reduce: 2 (n−1)/n, 2 (n−1) steps
    assert ring_factors(16, 2) == (1.875, 30)  # ZeRO 1/2: reduce-scatter + all-gather, the same as all-reduce
    assert ring_factors(16, 3) == (2.8125, 45)  # ZeRO 3: 1.5× the data-parallel volume
    with pytest.raises(UserError, match="ZeRO stage"):
        ring_factors(8, 4)


def test_slowest_link_bounds_the_ring():
    assert NET.link(8) == NET.intra and NET.link(9) == NET.inter
    # 8 GPUs, in one node: 1.75 · 2e8 B / 200e9 B/s + 14 · 2 µs = 1.75 ms + 28 µs
    assert comm_time(8, 0, WORK.bytes, NET.link(8)) == pytest.approx(0.001778, rel=1e-12)
    # 16 GPUs, two nodes: 1.875 · 2e8 / 25e9 + 30 · 5 µs = 15 ms + 150 µs
    assert comm_time(16, 0, WORK.bytes, NET.link(16)) == pytest.approx(0.01515, rel=1e-12)
    # ZeRO 3: 2.8125 · 8 ms + 45 · 5 µs
    assert comm_time(16, 3, WORK.bytes, NET.link(16)) == pytest.approx(0.022725, rel=1e-12)


def test_projection_at_sixteen_gpus():
    p = project(WORK, NET, 16, 0, batch_per_rank=4)
    assert p.compute_s == pytest.approx(0.04)
    assert p.exposed_s == pytest.approx(0.01515)
    assert p.step_s == pytest.approx(0.05515)
    assert p.samples_per_s == pytest.approx(64 / 0.05515)  # 1160.47
    assert p.efficiency == pytest.approx(0.04 / 0.05515)  # 0.7253
    # c ≥ 9 · T: 9 · 15.15 ms / 10 ms = 13.6 → 14 samples per rank, 224 in all
    assert p.batch_for_target == 224
    assert project(WORK, NET, 16, 1, 4).step_s == pytest.approx(p.step_s)  # ZeRO 1/2 move what ZeRO 0 moves
    assert project(WORK, NET, 16, 3, 4).step_s == pytest.approx(0.062725)


def test_one_gpu_communicates_nothing():
    p = project(WORK, NET, 1, 3, batch_per_rank=2)
    assert (p.comm_s, p.efficiency, p.batch_for_target) == (0.0, 1.0, 1)


def test_overlap_hides_at_most_the_compute():
    assert exposed_time(0.01515, 0.04, 0.5) == pytest.approx(0.007575)
    assert exposed_time(0.01515, 0.01, 1.0) == pytest.approx(0.00515)  # only 10 ms of compute to hide behind
    p = project(WORK, NET, 16, 0, batch_per_rank=4, overlap=0.5)
    assert p.step_s == pytest.approx(0.047575)
    assert p.batch_for_target == 16 * 7  # 4.5 · 15.15 ms / 10 ms = 6.8 → 7
    assert project(WORK, NET, 16, 0, 1, overlap=1.0).batch_for_target == 16 * 2  # 0.9 · 15.15 / 10 = 1.36 → 2
    with pytest.raises(UserError, match="overlap"):
        exposed_time(1.0, 1.0, 1.5)


@pytest.mark.parametrize("overlap", [0.0, 0.3, 0.95, 1.0])
@pytest.mark.parametrize("n", [8, 16, 128, 1024])
def test_batch_for_efficiency_is_the_smallest_that_reaches_it(n, overlap):
    per_rank = project(WORK, NET, n, 3, 1, overlap).batch_for_target // n
    assert project(WORK, NET, n, 3, per_rank, overlap).efficiency >= 0.9
    if per_rank > 1:
        assert project(WORK, NET, n, 3, per_rank - 1, overlap).efficiency < 0.9


def test_batch_for_efficiency_exact_boundary():
    # 9 · 10 ms of communication needs exactly 9 samples of 10 ms (efficiency 0.9 to the last bit is enough)
    assert batch_for_efficiency(0.01, 0.01, 0.0, 0.9) == 9
    assert batch_for_efficiency(0.01, 0.0, 0.0, 0.9) == 1


def test_table_covers_every_size_and_stage():
    rows = project_all(WORK, NET, batch_per_rank=4)
    assert [(p.world_size, p.zero_stage) for p in rows][:5] == [(8, 0), (8, 1), (8, 2), (8, 3), (16, 0)]
    assert len(rows) == 8 * 4 and rows[-1].world_size == 1024
    # efficiency falls with size beyond the node (the ring's latency grows with n)
    zero0 = [p.efficiency for p in rows if p.zero_stage == 0 and p.world_size > 8]
    assert zero0 == sorted(zero0, reverse=True)
    text = markdown([project(WORK, NET, 16, 0, 4)])
    assert "| 16 | 0 | 55.15 | 15.15 | 1,160.5 | 0.725 | 224 |" in text


def test_project_command(capsys):
    from met2net.cli import main

    argv = ["scale", "project", "--compute-per-sample", "0.01", "--batch-per-rank", "4", "--parameters", "100000000"]
    argv += ["--bytes-per-element", "2", "--intra-gbs", "200", "--intra-latency-us", "2", "--world-sizes", "16"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "overlap 0 (assumed)" in out
    assert "| 16 | 3 | 62.73 | 22.72 | 1,020.3 | 0.638 | 336 |" in out  # 22.725 ms, rounded in binary
    assert "| 16 | 0 | 55.15 | 15.15 | 1,160.5 | 0.725 | 224 |" in out
    # ZeRO 3 counted as 603 ring passes per step (its per-module gathers): 2.8125 · 8 ms + 603 · 15 · 5 µs = 67.725 ms
    assert main([*argv, "--zero", "3", "--passes-per-step", "2", "2", "2", "603"]) == 0
    out = capsys.readouterr().out
    assert "ring passes per step at ZeRO 0–3: 2 2 2 603" in out
    assert "| 16 | 3 | 107.73 | 67.73 |" in out


def test_passes_replace_the_one_call_per_pass_latency():
    counted = Workload(0.01, 100_000_000, 2, (2.0, 2.0, 2.0, 603.0))
    assert ring_factors(16, 3, 603.0) == (2.8125, 9045.0)
    assert project(counted, NET, 16, 3, 4).exposed_s == pytest.approx(0.0225 + 9045 * 5e-6, rel=1e-12)
    assert project(counted, NET, 16, 0, 4).step_s == pytest.approx(project(WORK, NET, 16, 0, 4).step_s)  # default 2
    with pytest.raises(UserError, match="passes"):
        ring_factors(2, 0, -1.0)
