"""The collective benchmark's arithmetic (nccl-tests' bus bandwidth) and its single-process answer."""

import os

import pytest

from met2net.errors import UserError
from met2net.scaling.comm import Timing, buffer_bytes, bus_factor, table


def test_bus_factor_is_nccl_tests():
    assert bus_factor("all_reduce", 2) == 1.0
    assert bus_factor("all_reduce", 8) == 1.75  # 2 (n−1)/n
    assert bus_factor("all_gather", 8) == 0.875  # (n−1)/n
    assert bus_factor("reduce_scatter", 4) == 0.75
    with pytest.raises(UserError, match="unknown collective"):
        bus_factor("broadcast", 2)


def test_buffers_split_evenly_into_float32_shards():
    assert buffer_bytes(4096, 2) == 4096
    assert buffer_bytes(1000, 3) == 996  # 83 elements per rank
    assert buffer_bytes(1, 4) == 16  # at least one element per rank


def test_bandwidths_and_table_by_hand():
    t = Timing("all_reduce", 1_000_000, 4, "nccl", 0.001)  # 1 MB in 1 ms
    assert t.algbw_gbs == pytest.approx(1.0) and t.busbw_gbs == pytest.approx(1.5)
    g = Timing("all_gather", 1_000_000, 4, "nccl", 0.002)
    text = table([g, t])
    assert "| all_reduce | 1,000,000 | 1,000.0 | 1.000 | 1.500 |" in text
    assert "| all_gather | 1,000,000 | 2,000.0 | 0.500 | 0.375 |" in text
    assert "latency (all-reduce of 1,000,000 bytes): 1,000.0 µs" in text


def test_one_process_has_nothing_to_measure(monkeypatch, capsys):
    from met2net.cli import main

    for name in list(os.environ):  # whatever launcher runs the tests, this process is alone
        if name.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "SLURM_", "OMPI_", "PMI", "PMIX")):
            monkeypatch.delenv(name)
    assert main(["scale", "comm", "--sizes", "4096", "--iters", "2"]) == 0
    assert "one process, nothing to measure" in capsys.readouterr().out
