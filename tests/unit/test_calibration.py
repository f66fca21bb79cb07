"""Fitting the projection model to measured steps: exact recovery from model-made points, and held-out errors."""

import pytest

from met2net.errors import UserError
from met2net.scaling.calibration import Calibration, Measured, calibrate, validate
from met2net.scaling.projection import Link, Network, Workload, project

TRUE = Calibration(compute_s_per_sample=0.02, link=Link(bandwidth_gbs=10.0, latency_us=40.0))


def point(n, stage, b, params=5_000_000, bytes_per_element=4):
    """A step the model itself gives (bandwidth 10 GB/s, latency 40 µs, 20 ms per sample)."""
    m = Measured(n, stage, b, params, bytes_per_element, 0.0)
    return Measured(n, stage, b, params, bytes_per_element, TRUE.predict(m))


def test_predict_by_hand():
    # 4 ranks, ZeRO 3, 2 samples: 2 · 20 ms + 3·3/4 · 2e7 B / 1e10 B/s + 9 · 40 µs = 40 + 4.5 + 0.36 ms
    assert TRUE.predict(Measured(4, 3, 2, 5_000_000, 4, 0.0)) == pytest.approx(0.04486, rel=1e-12)


def test_predict_equals_the_projection():
    workload = Workload(0.02, 5_000_000, 4)
    projected = project(workload, Network.uniform(TRUE.link), 8, 2, batch_per_rank=3)
    assert TRUE.predict(point(8, 2, 3)) == pytest.approx(projected.step_s, rel=1e-12)


def test_calibrate_recovers_the_model_from_its_own_points():
    points = [point(1, 0, 4), point(2, 2, 4), point(4, 2, 2), point(8, 3, 1), point(8, 0, 8)]
    fit = calibrate(points)
    assert fit.compute_s_per_sample == pytest.approx(0.02, rel=1e-9)
    assert fit.link.bandwidth_gbs == pytest.approx(10.0, rel=1e-9)
    assert fit.link.latency_us == pytest.approx(40.0, rel=1e-6)
    assert max(abs(e) for e in validate(fit, [point(16, 3, 2), point(6, 1, 5)])) < 1e-9


def test_two_world_sizes_need_the_latency_given():
    points = [point(1, 2, 1), point(1, 2, 4), point(2, 2, 1), point(2, 2, 4)]
    with pytest.raises(UserError, match="cannot determine"):
        calibrate(points)
    fit = calibrate(points, latency_us=40.0)
    assert fit.compute_s_per_sample == pytest.approx(0.02, rel=1e-9)
    assert fit.link.bandwidth_gbs == pytest.approx(10.0, rel=1e-9)


def test_negative_latency_is_clipped_and_refitted():
    # no latency at all, and a little noise that pulls the unconstrained fit below zero
    true = Calibration(0.02, Link(10.0, 0.0))
    raw = [(1, 0, 4), (2, 0, 4), (4, 0, 2), (8, 0, 1)]
    noise = [1.0, 1.0, 1.0, 0.999]  # the largest world size a bit fast: α < 0 unclipped
    points = [
        Measured(n, z, b, 5_000_000, 4, true.predict(Measured(n, z, b, 5_000_000, 4, 0)) * f)
        for (n, z, b), f in zip(raw, noise)
    ]
    fit = calibrate(points)
    assert fit.link.latency_us == 0.0
    assert fit.link.bandwidth_gbs > 0 and fit.compute_s_per_sample > 0


def test_validate_reports_signed_relative_errors():
    p = point(4, 0, 2)
    slow = Measured(p.world_size, p.zero_stage, p.batch_per_rank, p.parameters, p.bytes_per_element, p.step_s * 1.25)
    assert validate(TRUE, [p, slow]) == pytest.approx([0.0, -0.2])  # the model predicts 1/1.25 of the slow one


def test_points_where_communication_does_not_grow_are_refused():
    # steps that shrink with world size at a fixed batch: no positive bandwidth explains them
    points = [Measured(n, 0, b, 5_000_000, 4, 0.1 * b / n) for n, b in [(1, 1), (2, 1), (4, 2), (8, 4)]]
    with pytest.raises(UserError, match="do not fit"):
        calibrate(points)


def test_calibrate_command(tmp_path, capsys):
    from met2net.cli import main
    from met2net.scaling.calibration import COLUMNS

    def write(name, points):
        rows = [",".join(COLUMNS)] + [
            f"{p.world_size},{p.zero_stage},{p.batch_per_rank},{p.parameters},{p.bytes_per_element},{p.step_s!r}"
            for p in points
        ]
        (tmp_path / name).write_text("\n".join(rows) + "\n")
        return str(tmp_path / name)

    fit = write("fit.csv", [point(1, 0, 4), point(2, 2, 4), point(4, 2, 2), point(8, 3, 1)])
    held = write("held.csv", [point(16, 3, 2)])
    assert main(["scale", "calibrate", fit, "--validate", held]) == 0
    out = capsys.readouterr().out
    assert "compute 20 ms per sample, effective bandwidth 10 GB/s, latency 40 µs" in out
    assert "held-out relative error: max 0.0%" in out
    (tmp_path / "bad.csv").write_text("world_size,step_s\n2,0.1\n")
    assert main(["scale", "calibrate", str(tmp_path / "bad.csv")]) == 2  # a user error: one line
    assert "missing" in capsys.readouterr().err
