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
    assert "t_c = 20 ms per sample, effective bandwidth B = 10 GB/s, α = 40 µs per ring step" in out
    assert "held-out relative error: max 0.0%" in out
    (tmp_path / "bad.csv").write_text("world_size,step_s\n2,0.1\n")
    assert main(["scale", "calibrate", str(tmp_path / "bad.csv")]) == 2  # a user error: one line
    assert "missing" in capsys.readouterr().err


# A sweep's results.csv (met2net scale run's columns, those calibration reads and a few it ignores), with step times
# the model gives at 20 ms per sample and 0.1 GB/s (latency 0): 1 and 2 ranks, ZeRO 0–3, two batches, one bf16 point
# and one failed point. S = 50,000 trained parameters × 4 B (in bf16 too: autocast leaves the gradients fp32).
SWEEP_TRUE = Calibration(0.02, Link(0.1, 0.0))
SWEEP_POINTS = [  # name, ranks, ZeRO, micro-batch, accumulation, precision
    ("a", 1, 0, 2, 1, "fp32"),
    ("b", 1, 3, 4, 1, "fp32"),
    ("c", 2, 0, 2, 1, "fp32"),
    ("d", 2, 1, 2, 2, "fp32"),
    ("e", 2, 3, 2, 1, "fp32"),
    ("f", 2, 2, 4, 1, "bf16"),
]


def sweep_csv(tmp_path, slow=None, factor=1.0):
    """results.csv of SWEEP_POINTS; the point named ``slow`` measured ``factor`` times the model's step."""
    lines = [
        "name,status,world_size,zero_stage,micro_batch,accumulation,precision,trainable_parameters,step_s,"
        "samples_per_s,peak_memory_mib,first_losses"
    ]
    for name, n, z, mb, ga, precision in SWEEP_POINTS:
        b = mb * ga
        step = SWEEP_TRUE.predict(Measured(n, z, b, 50_000, 4, 0.0)) * (factor if name == slow else 1.0)
        lines.append(f"{name},ok,{n},{z},{mb},{ga},{precision},50000,{step!r},{n * b / step!r},800,0.5;0.4")
    lines.append("g,failed,2,3,8,1,fp32,,,,,")  # failed: no measurements, not a point
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "results.csv"


def test_sweep_rows_are_measured_points(tmp_path):
    from met2net.scaling.calibration import from_rows
    from met2net.scaling.report import latest_rows

    points = from_rows(latest_rows(sweep_csv(tmp_path)))
    assert [p.name for p in points] == ["a", "b", "c", "d", "e", "f"]  # the failed row left out
    d, f = points[3], points[5]
    assert (d.world_size, d.zero_stage, d.batch_per_rank, d.parameters, d.bytes_per_element) == (2, 1, 4, 50_000, 4)
    assert f.bytes_per_element == 4  # met2net's bf16 is autocast: its gradients are fp32 all the same
    # 2 ranks, ZeRO 1, 4 per rank: 4 · 20 ms + 2·1/2 · 200,000 B / 1e8 B/s = 80 + 2 ms
    assert d.step_s == pytest.approx(0.082, rel=1e-12)


def test_sweep_calibration_recovers_known_parameters_and_holds_each_point_out(tmp_path):
    from met2net.scaling.calibration import default_latency, from_rows, leave_one_out
    from met2net.scaling.report import latest_rows

    points = from_rows(latest_rows(sweep_csv(tmp_path)))
    assert default_latency(points, None) == 0.0  # world sizes 1 and 2 only: latency folded into bandwidth
    fit = calibrate(points, 0.0)
    assert fit.compute_s_per_sample == pytest.approx(0.02, rel=1e-9)
    assert fit.link.bandwidth_gbs == pytest.approx(0.1, rel=1e-9)
    held = leave_one_out(points, 0.0)
    assert [h.point.name for h in held] == ["a", "b", "c", "d", "e", "f"]
    assert max(abs(h.error) for h in held) < 1e-9


def test_held_out_error_of_a_slow_point_is_its_own(tmp_path):
    # point d measured 1.1× the model's step: the fit without it is exact, so d's held-out error is 1/1.1 − 1
    from met2net.scaling.calibration import from_rows, leave_one_out
    from met2net.scaling.report import latest_rows

    held = {h.point.name: h for h in leave_one_out(from_rows(latest_rows(sweep_csv(tmp_path, "d", 1.1))), 0.0)}
    assert held["d"].error == pytest.approx(1 / 1.1 - 1, rel=1e-9)
    assert held["d"].predicted_s == pytest.approx(0.082, rel=1e-9)
    assert all(abs(h.error) > 1e-6 for name, h in held.items() if name != "d")  # the slow point pulls the others' fits


def test_held_out_point_the_others_cannot_determine(tmp_path):
    from met2net.scaling.calibration import leave_one_out

    # only one point at 2 ranks: without it nothing tells the bandwidth
    points = [point(1, 0, 2), point(1, 0, 4), point(2, 0, 2)]
    held = leave_one_out(points, 40.0)
    assert held[2].predicted_s is None and held[2].error is None and "cannot determine" in held[2].why
    assert held[0].error == pytest.approx(0.0, abs=1e-9)


def test_report_and_calibrate_command_print_the_held_out_errors(tmp_path, capsys):
    from met2net.cli import main

    path = sweep_csv(tmp_path, "d", 1.1)
    assert main(["scale", "report", str(tmp_path), "--no-plots"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "## Calibrated projection model" in text
    assert "fitted by least squares to the 6 measured points" in text and "α = 0 (fixed" in text
    # d: measured 82 ms × 1.1 = 90.2 ms, predicted 82 ms by the fit to the other five
    assert "| d | 2 | 1 | 4 | — | 90.2 | 82.0 | -9.1% |" in text  # no pass counts: the model's default
    assert "Held-out error over 6 point(s): median |error|" in text
    capsys.readouterr()
    assert main(["scale", "calibrate", "--from", str(path)]) == 0
    assert "| d | 2 | 1 | 4 | — | 90.2 | 82.0 | -9.1% |" in capsys.readouterr().out
    # a fixed split: fit the sweep, validate on a points CSV of the model's own steps
    (tmp_path / "held.csv").write_text(
        "world_size,zero_stage,batch_per_rank,parameters,bytes_per_element,step_s\n"
        f"2,0,2,50000,4,{SWEEP_TRUE.predict(Measured(2, 0, 2, 50_000, 4, 0.0))!r}\n"
    )
    assert (
        main(["scale", "calibrate", "--from", str(sweep_csv(tmp_path)), "--validate", str(tmp_path / "held.csv")]) == 0
    )
    out = capsys.readouterr().out
    assert "effective bandwidth B = 0.1 GB/s, α = 0 (fixed: the points' ring steps are proportional" in out
    assert "held-out relative error: max 0.0%" in out
    assert main(["scale", "calibrate", str(tmp_path / "held.csv"), "--from", str(path)]) == 2  # one or the other


def test_report_without_step_times_has_no_calibration(tmp_path):
    from met2net.scaling.report import write_report

    (tmp_path / "results.csv").write_text(
        "world_size,zero_stage,micro_batch,samples_per_s,peak_memory_mib,first_losses\n1,0,2,4.0,800,0.5\n"
    )
    text, _ = write_report(tmp_path, with_plots=False)
    assert "Calibrated" not in text


def test_report_with_an_unreadable_row_says_so_and_still_reports(tmp_path):
    from met2net.scaling.report import write_report

    path = sweep_csv(tmp_path)
    text = path.read_text().replace(",50000,", ",,", 1)  # point a lost its trained-parameter count
    path.write_text(text)
    report, parity_ok = write_report(tmp_path, with_plots=False)
    assert "The projection model could not be calibrated: a results.csv row (a) lacks trainable_parameters." in report
    assert "## Throughput" in report and parity_ok


# Counting the collectives. DeepSpeed's ZeRO 3 gathers module by module: hundreds of ring passes per step where ZeRO
# 0–2 make a few. With each point's passes measured, two world sizes separate latency from bandwidth.
PASSES = {0: 3.0, 1: 5.0, 2: 5.0, 3: 550.0}  # ring passes per step, as a sweep measures them (ZeRO 3 per module)
LINKED = Calibration(0.05, Link(0.01, 400.0))  # 50 ms per sample, 0.01 GB/s, 400 µs per ring step


def counted(n, stage, b, truth=LINKED, factor=1.0, params=71_125):
    """A point with its passes measured and the step ``truth`` gives it (× ``factor``: measured slow)."""
    m = Measured(n, stage, b, params, 4, 0.0, f"r{n}-z{stage}-b{b}", PASSES[stage], "measured per step")
    return Measured(n, stage, b, params, 4, truth.predict(m) * factor, m.name, m.passes, m.passes_from)


def test_ring_passes_are_the_latency_count():
    from met2net.scaling.projection import ring_factors

    # 2 ranks, ZeRO 3, 550 passes: bytes 3·1/2·S, ring steps 550·1; 1 rank: nothing
    assert ring_factors(2, 3, 550.0) == (1.5, 550.0) and ring_factors(1, 3, 550.0) == (0.0, 0.0)
    # by hand: 2 samples · 50 ms + 1.5 · 284,500 B / 1e7 B/s + 550 · 400 µs = 100 + 42.675 + 220 ms
    assert LINKED.predict(counted(2, 3, 2)) == pytest.approx(0.362675, rel=1e-12)
    workload = Workload(0.05, 71_125, 4, (3.0, 5.0, 5.0, 550.0))
    projected = project(workload, Network.uniform(LINKED.link), 2, 3, batch_per_rank=2)
    assert projected.step_s == pytest.approx(0.362675, rel=1e-12)  # the projection counts what the fit counts


def test_measured_passes_let_two_world_sizes_fit_the_latency():
    from met2net.scaling.calibration import default_latency

    points = [counted(n, z, b) for n in (1, 2) for z in (0, 1, 2, 3) for b in (1, 2, 4)]
    assert default_latency(points, None) is None  # ring steps vary apart from bytes: α is fitted
    fit = calibrate(points)
    assert fit.compute_s_per_sample == pytest.approx(0.05, rel=1e-9)
    assert fit.link.bandwidth_gbs == pytest.approx(0.01, rel=1e-9)
    assert fit.link.latency_us == pytest.approx(400.0, rel=1e-9)
    # without the counts (the model's 2 or 3 passes) the same steps cannot tell α from B
    plain = [Measured(p.world_size, p.zero_stage, p.batch_per_rank, p.parameters, 4, p.step_s) for p in points]
    assert default_latency(plain, None) == 0.0


def test_per_stage_compute_is_recovered_and_one_t_c_is_not():
    from met2net.scaling.calibration import leave_one_out, summary

    truth = {0: 0.05, 1: 0.04, 2: 0.045, 3: 0.07}
    points = [
        counted(n, z, b, Calibration(truth[z], LINKED.link)) for n in (1, 2) for z in (0, 1, 2, 3) for b in (1, 2, 4)
    ]
    fit = calibrate(points, per_stage=True)
    assert dict(fit.stage_compute_s) == pytest.approx(truth, rel=1e-9)
    assert fit.link.bandwidth_gbs == pytest.approx(0.01, rel=1e-9) and fit.link.latency_us == pytest.approx(400.0)
    assert summary(leave_one_out(points, None, per_stage=True))[2] < 1e-9
    assert summary(leave_one_out(points, None, per_stage=False))[1] > 0.01  # one t_c cannot fit four


def test_a_point_measured_slow_is_its_own_held_out_error():
    from met2net.scaling.calibration import leave_one_out

    points = [
        counted(n, z, b, factor=1.2 if (n, z, b) == (2, 3, 2) else 1.0)
        for n in (1, 2)
        for z in (0, 3)
        for b in (1, 2, 4)
    ]
    held = {h.point.name: h for h in leave_one_out(points)}
    assert held["r2-z3-b2"].error == pytest.approx(1 / 1.2 - 1, rel=1e-9)  # the others fit the true model exactly
    assert held["r2-z3-b2"].predicted_s == pytest.approx(0.362675, rel=1e-9)


def test_row_passes_are_the_per_step_count_only():
    from met2net.scaling.calibration import row_passes

    assert row_passes({"ring_passes_per_step": "550.5", "comm_calls": "7835"}) == (550.5, "measured per step")
    # an older sweep: its whole-point comm_calls is not a count per step; the model's default is used
    assert row_passes({"comm_calls": "7835", "warmup_steps": "3", "timed_steps": "10"}) == (None, "")


def test_sweep_with_pass_counts_calibrates_alpha_in_the_report(tmp_path, capsys):
    from met2net.cli import main

    lines = [
        "name,status,world_size,zero_stage,micro_batch,accumulation,trainable_parameters,step_s,ring_passes_per_step,"
        "samples_per_s,peak_memory_mib,first_losses"
    ]
    for n in (1, 2):
        for z in (0, 3):
            for b in (1, 4):
                p = counted(n, z, b)
                lines.append(f"{p.name},ok,{n},{z},{b},1,71125,{p.step_s!r},{p.passes!r},{n * b / p.step_s!r},800,0.5")
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    assert main(["scale", "calibrate", "--from", str(tmp_path / "results.csv")]) == 0
    out = capsys.readouterr().out
    assert "t_c = 50 ms per sample, effective bandwidth B = 0.01 GB/s, α = 400 µs per ring step" in out
    assert "Ring passes p per step: measured per step (8 points)." in out
    assert "| r2-z3-b4 | 2 | 3 | 4 | 550.0 | 462.7 | 462.7 | +0.0% |" in out  # 200 + 42.675 + 220 ms
    assert "With a t_c per ZeRO stage (`--per-stage`): median |error| 0.0%" in out


def test_passes_borrowed_from_a_sweep_that_measured_them(tmp_path, capsys):
    from met2net.cli import main
    from met2net.scaling.calibration import with_passes_of

    old = [
        Measured(2, 3, 2, 71_125, 4, 0.9, "old", 602.7, "whole-point calls ÷ steps"),
        Measured(1, 0, 2, 71_125, 4, 0.2),
    ]
    reference = [counted(2, 3, 1), counted(2, 3, 4), counted(2, 0, 1)]
    borrowed = with_passes_of(old, reference)
    assert (borrowed[0].passes, borrowed[0].passes_from) == (550.0, "measured per step in another sweep")
    assert borrowed[1] == old[1]  # no 1-rank ZeRO 0 point in the reference: left as it was
    assert with_passes_of(reference, [counted(2, 3, 1, params=1)])[0] == reference[0]  # a count of its own stays
    assert main(["scale", "calibrate", "x.csv", "--passes-from", "y.csv"]) == 2
    assert "--passes-from" in capsys.readouterr().err
