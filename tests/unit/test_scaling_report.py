"""`met2net scale report` on a hand-written results.csv: every number below computed by hand."""

import pytest

from met2net.cli import main
from met2net.errors import UserError
from met2net.scaling.report import (
    memory_table,
    parity,
    read_results,
    rel_diff,
    report,
    throughput_table,
    write_report,
)

RESULTS = """world_size,zero_stage,micro_batch,samples_per_s,peak_memory_mib,first_losses,precision
1,0,4,10.0,1000,0.5;0.4;0.3,fp32
2,0,4,18.0,1000,0.5;0.4;0.3,fp32
2,0,2,16.0,900,0.5;0.4;0.3,fp32
1,3,4,9.0,700,0.5;0.4;0.3,fp32
2,3,4,16.2,400,0.5;0.4;0.30001,fp32
2,3,2,14.4,350,0.5;0.41;0.3,fp32
4,2,1,30.0,300,0.6,fp32
"""


@pytest.fixture
def points(tmp_path):
    (tmp_path / "results.csv").write_text(RESULTS)
    return read_results(tmp_path / "results.csv")


def test_reads_rows(points):
    assert len(points) == 7
    p = points[4]
    assert (p.world_size, p.zero_stage, p.micro_batch, p.accumulation, p.global_batch) == (2, 3, 4, 1, 8)
    assert p.first_losses == (0.5, 0.4, 0.30001)


def test_throughput_and_efficiency(points):
    text = throughput_table(points)
    # strong: same global batch 4, 2 ranks × 2 against 1 rank × 4: 16 / 10 / 2
    assert "| 0 | 2 | 2 × 1 | 4 | 16.00 | 0.800 (vs 1) | 1.000 (vs 2) |" in text
    # weak: same 4 per rank, 2 ranks against 1: 18 / 10 / 2
    assert "| 0 | 2 | 4 × 1 | 8 | 18.00 | 1.000 (vs 2) | 0.900 (vs 1) |" in text
    assert "| 3 | 2 | 2 × 1 | 4 | 14.40 | 0.800 (vs 1) | 1.000 (vs 2) |" in text  # 14.4 / 9 / 2
    assert "| 3 | 2 | 4 × 1 | 8 | 16.20 | 1.000 (vs 2) | 0.900 (vs 1) |" in text  # 16.2 / 9 / 2
    assert "| 2 | 4 | 1 × 1 | 4 | 30.00 | 1.000 (vs 4) | 1.000 (vs 4) |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[0] for line in rows] == ["| 0"] * 3 + ["| 2"] + ["| 3"] * 3  # by stage


def test_memory_against_zero_stage(points):
    text = memory_table(points)
    assert "| ranks | micro-batch | ZeRO 0 (MiB) | ZeRO 2 (MiB) | ZeRO 3 (MiB) |" in text
    assert "| 1 | 4 × 1 | 1,000.0 | — | 700.0 |" in text
    assert "| 2 | 2 × 1 | 900.0 | — | 350.0 |" in text
    assert "| 2 | 4 × 1 | 1,000.0 | — | 400.0 |" in text
    assert "| 4 | 1 × 1 | — | 300.0 | — |" in text


def test_parity_across_stages(points):
    checks = {(c.world_size, c.global_batch): c for c in parity(points)}
    assert set(checks) == {(1, 4), (2, 4), (2, 8)}  # (4, 4) ran at one stage only: nothing to compare
    assert checks[(1, 4)].max_rel_diff == 0.0 and checks[(1, 4)].ok(1e-4)
    assert checks[(2, 8)].max_rel_diff == pytest.approx(1e-5 / 0.3) and checks[(2, 8)].ok(1e-4)
    assert checks[(2, 4)].max_rel_diff == pytest.approx(0.025) and not checks[(2, 4)].ok(1e-4)
    assert checks[(2, 4)].stages == (0, 3) and checks[(2, 4)].compared == 3


def test_rel_diff_edges():
    assert rel_diff(0.0, 0.0) == 0.0
    assert rel_diff(1.0, 0.0) == float("inf")
    assert rel_diff(1.1, 1.0) == pytest.approx(0.1)


def test_report_and_command(points, tmp_path, capsys):
    text, ok = report(points, 1e-4)
    assert not ok and "| 2 | 4 | 2 × 1, fp32 | 0, 3 | 3 | 0.025 | NO |" in text
    assert report(points, 0.03)[1]
    assert main(["scale", "report", str(tmp_path)]) == 1  # parity fails at the default tolerance
    assert "first losses differ across ZeRO stages" in capsys.readouterr().out
    assert main(["scale", "report", str(tmp_path), "--tolerance", "0.03"]) == 0
    assert "## Peak memory per rank" in (tmp_path / "report.md").read_text()


def test_missing_columns_are_named(tmp_path):
    (tmp_path / "results.csv").write_text("world_size,zero_stage\n1,0\n")
    with pytest.raises(UserError, match="missing"):
        read_results(tmp_path / "results.csv")


SWEPT = """name,status,error,world_size,zero_stage,micro_batch,accumulation,precision,samples_per_s,peak_memory_mib,\
first_losses,data_s,forward_s,backward_s,optimizer_s,comm_s,other_s,parameters_bytes,gradients_bytes,optimizer_bytes
a,ok,,1,0,2,1,fp32,10.0,300,0.5;0.4,0.001,0.02,0.03,0.01,0.0,0.002,1000,1000,2000
b,failed,out of memory,2,0,2,1,fp32,,,,,,,,,,,,
b,ok,,2,0,2,1,fp32,16.0,320,0.6;0.5,0.001,0.02,0.03,0.01,0.04,0.002,1000,500,1500
c,ok,,2,3,2,1,fp32,12.0,280,0.6;0.5,0.001,0.03,0.04,0.01,0.09,0.002,500,500,1500
d,ok,,2,3,2,1,bf16,13.0,270,0.61;0.52,0.001,0.02,0.03,0.01,0.09,0.002,500,500,1500
e,failed,"rank 1 died",4,0,2,1,fp32,,,,,,,,,,,,
"""


def test_a_sweeps_file_its_failures_split_and_plots(tmp_path):
    (tmp_path / "results.csv").write_text(SWEPT)
    points = read_results(tmp_path / "results.csv")
    assert [p.name for p in points] == ["a", "b", "c", "d"]  # b's retry counts, e failed
    assert points[1].split["comm"] == 0.04 and points[3].held["optimizer"] == 1500
    checks = parity(points)  # b against c (fp32); d is bf16: compared with nothing
    assert [(c.stages, c.setting, c.max_rel_diff) for c in checks] == [((0, 3), "2 × 1, fp32", 0.0)]
    text, ok = write_report(tmp_path)
    assert ok and "| e | rank 1 died |" in text and "out of memory" not in text
    assert "| b | 2 | 0 | 103.0 | 1.0 | 20.0 | 30.0 | 10.0 | 40.0 | 2.0 |" in text  # ms per step, summing up
    for name in ("throughput", "efficiency", "memory", "step_split"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(plots/{name}.png)" in text
