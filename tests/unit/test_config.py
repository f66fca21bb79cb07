from pathlib import Path

import pytest
import yaml

from met2net.cli import main
from met2net.config import Config, ConfigError, load_config
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_paper_configs_hold_the_paper_settings():
    c = load_config(ROOT / "configs/mv5_5.625.yaml")
    assert c.model.variables == ["u10", "v10", "t2m", "tcc", "r"]
    assert (c.model.in_frames, c.model.grid, c.model.hid_s, c.model.hid_t) == (12, [32, 64], 32, 256)
    assert (c.model.num_spatial_layers, c.model.num_translator_blocks, c.model.num_heads) == (2, 8, 8)
    assert (c.training.optimizer, c.training.lr, c.training.min_lr, c.training.batch_size) == ("adam", 1e-3, 1e-6, 16)
    assert (c.training.epochs, c.training.precision, c.training.weight_decay) == (50, "fp32", 0.0)
    assert (c.momentum.translator, c.momentum.codec) == (0.9, 0.0)
    assert c.data.train_years == list(range(2010, 2016)) and c.data.val_years == [2016]
    hi = load_config(ROOT / "configs/mv5_1.40625.yaml")
    assert (hi.model.grid, hi.model.num_spatial_layers) == ([64, 128], 4)
    load_config(ROOT / "configs/quickstart.yaml")


def test_unknown_key_names_file_key_and_closest(tmp_path):
    p = write(tmp_path, {"model": {"hid_S": 32}})
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'model\.hid_S'; did you mean 'model\.hid_s'"):
        load_config(p)
    with pytest.raises(ConfigError, match="unknown key 'trainig'; did you mean 'training'"):
        load_config(write(tmp_path, {"trainig": {}}))


def test_override_types_are_checked():
    assert load_config(None, ["training.lr=3e-4"]).training.lr == 3e-4
    assert load_config(None, ["training.lr=1"]).training.lr == 1.0  # int accepted for a float
    assert load_config(None, ["model.grid=[16,32]"]).model.grid == [16, 32]
    with pytest.raises(ConfigError, match=r"command line: 'training.batch_size' must be int, got 2.5"):
        load_config(None, ["training.batch_size=2.5"])
    with pytest.raises(ConfigError, match="'training.lr' must be float, got 'fast'"):
        load_config(None, ["training.lr=fast"])
    with pytest.raises(ConfigError, match=r"'model.grid\[1\]' must be int"):
        load_config(None, ["model.grid=[16,x]"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(None, ["training.lr"])
    with pytest.raises(ConfigError, match="'model' is a section"):
        load_config(None, ["model=3"])
    # a value YAML cannot read (a glob, a leading backquote) is the text itself: a path may hold any character
    assert load_config(None, ["data.path=*"]).data.path == "*"
    assert load_config(None, ["training.init_from=`x`;y"]).training.init_from == "`x`;y"
    with pytest.raises(ConfigError, match="'training.lr' must be float, got '\\*'"):
        load_config(None, ["training.lr=*"])


@pytest.mark.parametrize(
    "overrides, key, fix",
    [
        (["model.grid=[0,64]"], "model.grid", "positive sizes"),
        (["model.out_frames=6"], "model.out_frames", "set model.out_frames=12"),
        (["model.num_heads=3"], "model.hid_t", "not divisible by model.num_heads=3"),
        (["model.hid_s=5"], "model.hid_s", "must be even"),
        (["training.schedule=stage3"], "training.schedule", "must be one of"),
        (["training.min_lr=1"], "training.min_lr", "must be in"),
        (["momentum.translator=1.0"], "momentum.translator", r"must be in \[0, 1\)"),
        (["data.val_years=[2015]"], "data.train_years/val_years/test_years", "overlap"),
        (["training.epochs=0"], "training.max_steps", "set one of them"),
        (["data.source=shards"], "data.path", "index.json"),
        (["training.compile=true", "deepspeed.zero_stage=3"], "training.compile", "use ZeRO 0-2"),
        (["training.stage_steps={implicit: 5}"], "training.stage_steps", "only the staged schedules"),
        (["training.stage_steps={stage2: 0}"], "training.stage_steps", "≥ 1 step per stage"),
        (["training.rounds=0"], "training.rounds", "≥ 1 round"),
    ],
)
def test_impossible_values_name_key_and_fix(overrides, key, fix):
    with pytest.raises(ConfigError, match=rf"defaults \+ command line: '{key}' .*{fix}"):
        load_config(None, overrides)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_config_show_round_trips(tmp_path, capsys):
    assert main(["config", "show", str(ROOT / "configs/quickstart.yaml"), "training.lr=0.002"]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    again = load_config(shown)
    assert isinstance(again, Config) and again.training.lr == 0.002
    assert again == load_config(ROOT / "configs/quickstart.yaml", ["training.lr=0.002"])


def test_cli_reports_config_errors(capsys):
    assert main(["config", "show", "/nonexistent.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_best_by_is_a_key_of_the_schedules_validation():
    assert load_config(None).training.best_by == "forecast_mse"
    assert load_config(None, ["training.best_by=forecast_mse/t2m"]).training.best_by == "forecast_mse/t2m"
    assert load_config(None, ["training.schedule=stage2", "training.best_by=latent"]).training.best_by == "latent"
    with pytest.raises(ConfigError, match=r"'training.best_by' must be .*one of loss, forecast_mse, rec, latent"):
        load_config(None, ["training.best_by=val_loss"])
    with pytest.raises(ConfigError, match=r"forecast_mse/u10, forecast_mse/v10.*got 'forecast_mse/z500'"):
        load_config(None, ["training.best_by=forecast_mse/z500"])
    with pytest.raises(ConfigError, match=r"stage2 does not validate; choose one of loss, forecast_mse, latent "):
        load_config(None, ["training.schedule=stage2", "training.best_by=rec"])


def test_data_coords_maps_our_axes_to_the_files_names(tmp_path):
    cfg = load_config(write(tmp_path, {"data": {"coords": {"time": "timestep", "lat": "FNOCY", "lon": "FNOCX"}}}))
    assert cfg.data.coords == {"time": "timestep", "lat": "FNOCY", "lon": "FNOCX"}
    assert load_config(None, ["data.coords={level: plev}"]).data.coords == {"level": "plev"}
    assert load_config(None).data.coords == {}
    with pytest.raises(ConfigError, match=r"'data.coords' has unknown axis 'latitude'; the axes are time, lat, lon"):
        load_config(None, ["data.coords={latitude: FNOCY}"])
    with pytest.raises(ConfigError, match=r"'data.coords.lat' must be str, got \[1, 2\]"):
        load_config(None, ["data.coords={lat: [1, 2]}"])
    with pytest.raises(ConfigError, match=r"'data.coords' must be a mapping"):
        load_config(None, ["data.coords=[time]"])
    with pytest.raises(ConfigError, match=r"'data.coords' names 'y' for two axes"):
        load_config(None, ["data.coords={lat: y, lon: y}"])


def test_stage_two_refuses_the_implicit_prediction_weight():
    with pytest.raises(ConfigError, match="training.stage2_pred_loss_weight"):
        small_config("training.schedule=stage2", "training.pred_loss_weight=0.5")
    assert (
        small_config("training.schedule=stage2", "training.stage2_pred_loss_weight=0.5").training.schedule == "stage2"
    )


def test_stage_steps_give_each_stage_its_budget_and_max_steps_overrides_them():
    """The quick start's pipeline trains four rounds of stage one 198 and stage two 396 steps; one max_steps override
    shortens any run (the tests and a user's smoke run rely on it); a schedule without an entry trains by epochs."""
    quick = ROOT / "configs/quickstart.yaml"
    steps = {
        s: load_config(quick, [f"training.schedule={s}"]).training.schedule_max_steps for s in ("stage1", "stage2")
    }
    assert steps == {"stage1": 198, "stage2": 396}
    assert load_config(quick).training.rounds == 4 and load_config(None).training.rounds == 2
    assert load_config(quick, ["training.schedule=stage2", "training.max_steps=4"]).training.schedule_max_steps == 4
    implicit = load_config(quick, ["training.schedule=implicit"]).training
    assert (implicit.schedule_max_steps, implicit.epochs) == (0, 8)
    with pytest.raises(ConfigError, match="set one of them"):
        load_config(None, ["training.epochs=0", "training.schedule=stage1", "training.stage_steps={stage2: 3}"])
    assert load_config(None, ["training.epochs=0", "training.schedule=stage2", "training.stage_steps={stage2: 3}"])
