"""One typed config: dataclasses loaded from YAML, `key=value` overrides, validated once.

Every error names where the value came from (the file or the command line), the dotted
key, and what to do about it.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from met2net.errors import UserError  # imports nothing: the config stays free of met2net and torch

SCHEDULES = ("implicit", "stage1", "stage2", "end_to_end")
STAGED = ("stage1", "stage2")  # the explicit pipeline's schedules (training.stage_steps)
# The loss terms each schedule's validation measures besides the forecast MSE of D_q T_q E_q (training/stages.py reads
# them from here); their sum is the validation record's `loss` (end_to_end: the forecast MSE itself).
VALIDATION_TERMS = {"implicit": ("rec", "latent"), "stage1": ("rec",), "stage2": ("latent",), "end_to_end": ()}
BEST_BY = ("loss", "forecast_mse", "rec", "latent")  # and forecast_mse/<variable>
OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("fp32", "bf16")
DATA_SOURCES = ("synthetic", "shards")
MISSING_POLICIES = ("error", "mean", "zero")  # or a finite number: data.missing (met2net/data/masks.py)
COORD_AXES = ("time", "lat", "lon", "level")  # the axes data.coords may name (met2net/data/netcdf.py)


class ConfigError(UserError):
    """A config value that cannot be used; the message says which and how to fix it."""


@dataclass
class ModelConfig:
    variables: list[str] = field(default_factory=lambda: ["u10", "v10", "t2m", "tcc", "r"])
    in_frames: int = 12
    out_frames: int = 12
    grid: list[int] = field(default_factory=lambda: [32, 64])
    hid_s: int = 32
    hid_t: int = 256
    num_spatial_layers: int = 2
    num_translator_blocks: int = 8
    num_heads: int = 8
    drop_path: float = 0.1

    @property
    def frames(self) -> int:
        return self.in_frames

    @property
    def latent_grid(self) -> tuple[int, int]:
        """The Translator's grid: ``grid`` rounded up to a multiple of the encoder's downsampling 2^(N_S // 2) (the
        encoders pad it there, the decoders crop back: met2net/model/grid.py), divided by it."""
        f = 2 ** (self.num_spatial_layers // 2)
        return -(-self.grid[0] // f), -(-self.grid[1] // f)


@dataclass
class MomentumConfig:
    codec: float = 0.0
    translator: float = 0.9
    # The reference updates T_k before its backward pass, so autograd reuses some updated T_k
    # tensors for the E_q gradients. true reproduces that bitwise (single process only).
    reference_backward: bool = False


@dataclass
class TrainingConfig:
    schedule: str = "implicit"
    optimizer: str = "adam"
    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    epochs: int = 50
    max_steps: int = 0
    # optimizer steps of each stage of the staged pipeline when max_steps is 0, e.g. {stage1: 66, stage2: 132}
    # (max_steps, when set, is every schedule's: one override shortens any run); a stage left out trains by epochs.
    # The quick start gives stage two twice stage one's steps, and its rounds implicit's FLOPs: docs/results.md.
    stage_steps: dict[str, int] = field(default_factory=dict)
    # rounds of stage one → stage two that a pipeline runs (met2net submit, slurm/pipeline.sh, scripts/quickstart.sh;
    # --rounds / ROUNDS override it); round r + 1's stage one starts from round r's stage two. One `met2net train`
    # runs one stage and does not read it. The quick start's 4: docs/results.md, "Goal 2, clause by clause".
    rounds: int = 2
    batch_size: int = 16
    val_every: int = 0
    val_batches: int = 0
    precision: str = "fp32"
    grad_clip: float = 0.0
    pred_loss_weight: float = 0.0  # implicit's w·MSE(D_k T_q E_k x, y); 0 in the paper
    # stage two's forecast through the frozen decoders: keeps the Translator readable by the decoders that stage
    # one tuned (without it stage two made forecasts worse: docs/architecture.md, Schedules)
    stage2_pred_loss_weight: float = 100.0
    channels_last: bool = True
    # keep the memory a step frees mapped for the next (glibc malloc), not faulted in afresh (docs/performance.md)
    keep_host_memory: bool = True
    # torch.compile each encoder, decoder and Translator block (trained and copies); off: eager (docs/performance.md)
    compile: bool = False
    init_from: str = ""
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0: at the end only
    keep_last: int = 2  # checkpoints kept per stage, besides the best (training.best_by); 0: keep all
    resume: bool = True  # continue from the stage's latest COMPLETE checkpoint in run.dir, if any
    time_limit: float = 0.0  # seconds of wall clock for this process; checkpoint and stop before it; 0: none
    log_every: int = 10
    progress: bool = True
    best_by: str = "forecast_mse"  # the validation key (lowest wins) that names the `best` checkpoint
    tensorboard: bool = False  # also write the train/val records as TensorBoard events in <run>/tensorboard/

    @property
    def schedule_max_steps(self) -> int:
        """This schedule's step budget: training.max_steps, else its training.stage_steps entry (0: by epochs)."""
        return self.max_steps or self.stage_steps.get(self.schedule, 0)


@dataclass
class VariableSource:
    """Where variable ``name`` lives in the source netCDF files."""

    name: str = ""
    file_glob: str = ""  # relative to the source root, e.g. "2m_temperature/*.nc"
    var: str = ""  # the netCDF variable, e.g. "t2m"
    level: int = -1  # pressure level to select (hPa); -1: the variable has none


@dataclass
class DataConfig:
    source: str = "synthetic"
    path: str = ""
    # Source of each model variable for `met2net data convert`; a variable not listed here is
    # read from the WeatherBench layout (see met2net/data/convert.py).
    variables: list[VariableSource] = field(default_factory=list)
    # The source files' names of our axes where no common name fits, e.g. {time: timestep, lat: FNOCY, lon: FNOCX};
    # an axis left out is found by its usual names (met2net/data/netcdf.py, COORD_ALIASES).
    coords: dict[str, str] = field(default_factory=dict)
    # Missing values (NaN) per model variable: error (the default), or fill them with mean, zero or a number and mask
    # them out of the statistics, the loss and the metrics, e.g. {sst: mean} (met2net/data/masks.py).
    missing: dict[str, str] = field(default_factory=dict)
    allow_gaps: bool = False
    train_years: list[int] = field(default_factory=lambda: [2010, 2011, 2012, 2013, 2014, 2015])
    val_years: list[int] = field(default_factory=lambda: [2016])
    test_years: list[int] = field(default_factory=lambda: [2017, 2018])
    # A split as a date range [START, END] instead of whole years: ISO 8601, both ends inclusive at the precision
    # written ('2010-06' is all of June, '2010-06-30T18' that hour); the split's *_years become the years it touches.
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    step_hours: int = 1
    stride: int = 1
    subsample: int = 1
    seed: int = 0
    num_workers: int = 0

    def period(self, split: str) -> tuple[np.datetime64, np.datetime64] | None:
        """``data.<split>`` (train, val, test) as whole hours [start, end), or None when it is given by years."""
        text = getattr(self, split)
        if not text:
            return None
        example = f"e.g. data.{split}=[2005-07-01, 2010-06-30] or [2005-07, 2010-06]"
        if len(text) != 2:
            raise ConfigError(f"'data.{split}' must be [START, END] ({example}), got {text}")
        try:
            start, end = (np.datetime64(t) for t in text)
        except ValueError:
            raise ConfigError(f"'data.{split}' {text}: not ISO 8601 dates ({example})") from None
        first, stop = start.astype("datetime64[h]"), (end + 1).astype("datetime64[h]")
        first, stop = first + (first < start), stop + (stop < end + 1)  # whole hours inside the range
        if stop <= first:
            problem = "ends before it starts" if end < start else "holds no whole hour"
            raise ConfigError(f"'data.{split}' {text} {problem} ({example})")
        return first, stop


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0
    gradient_accumulation: int = 1
    activation_checkpointing: bool = False  # recompute Translator blocks in backward
    stage3_param_persistence_threshold: int = 100_000


@dataclass
class DistributedConfig:
    # Seconds a collective (every process group: gloo and NCCL, DeepSpeed's own groups included) waits for the other
    # ranks before this rank fails with an error: a rank that stopped, hung or died ends the job within this time.
    # Rank 0's longest solo work while the others wait (verifying or converting a checkpoint) must fit in it.
    timeout_s: float = 300.0


@dataclass
class RunConfig:
    dir: str = "runs/default"
    seed: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    momentum: MomentumConfig = field(default_factory=MomentumConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --- loading -------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """YAML file (may be None for defaults) + `a.b=value` overrides → validated Config."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: config file not found; check the path (configs/ holds the shipped ones)"
            ) from None
        except OSError as e:  # a directory, a file this user may not read
            raise ConfigError(f"{path}: cannot read it ({e.strerror}); give a readable YAML config file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (not UTF-8); give a YAML config file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}; fix it there") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return config_from_dict(raw, source, overrides)


def config_from_dict(raw: dict[str, Any], source: str, overrides: list[str] = ()) -> Config:
    """A config from a mapping of sections (e.g. a checkpoint's resolved config; ``source`` names it in errors)
    + `a.b=value` overrides → validated Config."""
    cfg = Config()
    _apply(cfg, raw, source, prefix="")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: override {item!r} is not of the form key=value")
        nested: dict[str, Any] = {}
        node = nested
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _override_value(value)
        _apply(cfg, nested, "command line", prefix="")
    try:
        resolve_periods(cfg.data)
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}{' + command line' if overrides else ''}: {e}") from None
    return cfg


def _override_value(text: str) -> Any:
    """An override's value as YAML reads it (``1e-3``, ``[a, b]``, ``{stage1: 66}``), or the text itself where YAML
    reads none (``*``, a leading backquote or ``@``): a path or name may hold any character, and a key whose type is
    not a string then says what it got, naming the key."""
    if not text.strip():
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply(obj: Any, raw: dict[str, Any], source: str, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            valid = [f"{prefix}{n}" for n in names]
            by_lower = {v.lower(): v for v in valid}
            close = [by_lower[c] for c in difflib.get_close_matches(dotted.lower(), list(by_lower), n=1, cutoff=0.5)]
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section; give a mapping of its keys")
            _apply(current, value, source, prefix=f"{dotted}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], source, dotted))


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if dataclasses.is_dataclass(item_type):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{source}: '{key}' must be a list of mappings, got {value!r}")
            items = []
            for i, v in enumerate(value):
                item = item_type()
                _apply(item, v, source, prefix=f"{key}[{i}].")
                items.append(item)
            return items
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list of {item_type.__name__}, got {value!r}")
        return [_coerce(v, item_type, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(v, value_type, source, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type {hint}")  # keep the schema simple
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, datetime.date):  # YAML reads 2010-06-30 as a date
            return (value.replace(tzinfo=None) if isinstance(value, datetime.datetime) else value).isoformat()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{source}: '{key}' must be {hint.__name__}, got {value!r} ({type(value).__name__})")


# --- validation ----------------------------------------------------------------------------


def validate(cfg: Config) -> None:
    """Check every value once, at start-up, so a run never fails an hour in."""
    m, t, d = cfg.model, cfg.training, cfg.data
    _need(len(m.variables) > 0, "model.variables", "must list at least one variable")
    _need(len(set(m.variables)) == len(m.variables), "model.variables", f"has duplicates: {m.variables}")
    _need(
        len(m.grid) == 2 and all(g > 0 for g in m.grid),
        "model.grid",
        f"must be [lat, lon] with positive sizes, got {m.grid}",
    )
    for key in ("in_frames", "hid_s", "hid_t", "num_spatial_layers", "num_translator_blocks", "num_heads"):
        _need(getattr(m, key) >= 1, f"model.{key}", f"must be ≥ 1, got {getattr(m, key)}")
    _need(
        m.out_frames == m.in_frames,
        "model.out_frames",
        f"must equal model.in_frames ({m.in_frames}), got {m.out_frames}: the Translator maps "
        f"in_frames·hid_s = {m.in_frames * m.hid_s} latent channels to as many output channels, "
        f"so set model.out_frames={m.in_frames}",
    )
    _need(m.hid_s % 2 == 0, "model.hid_s", f"must be even (GroupNorm with 2 groups), got {m.hid_s}")
    _need(
        m.hid_t % m.num_heads == 0,
        "model.hid_t",
        f"{m.hid_t} is not divisible by model.num_heads={m.num_heads}; choose heads that divide it",
    )
    _need(0.0 <= m.drop_path < 1.0, "model.drop_path", f"must be in [0, 1), got {m.drop_path}")
    for key in ("codec", "translator"):
        v = getattr(cfg.momentum, key)
        _need(0.0 <= v < 1.0, f"momentum.{key}", f"must be in [0, 1), got {v}")
    _need(t.schedule in SCHEDULES, "training.schedule", f"must be one of {SCHEDULES}, got {t.schedule!r}")
    _need(t.optimizer in OPTIMIZERS, "training.optimizer", f"must be one of {OPTIMIZERS}, got {t.optimizer!r}")
    _need(
        t.precision in PRECISIONS,
        "training.precision",
        f"must be one of {PRECISIONS}, got {t.precision!r}"
        + (
            " (fp16 would need loss scaling and fp16 momentum copies, whose small updates round away; "
            "bf16 keeps every weight in fp32)"
            if t.precision == "fp16"
            else ""
        ),
    )
    _need(t.lr > 0, "training.lr", f"must be > 0, got {t.lr}")
    _need(0 <= t.min_lr <= t.lr, "training.min_lr", f"must be in [0, training.lr={t.lr}], got {t.min_lr}")
    _need(
        len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas),
        "training.betas",
        f"must be two numbers in [0, 1), got {t.betas}",
    )
    for key in ("warmup_steps", "max_steps", "val_every", "val_batches", "epochs", "checkpoint_every", "keep_last"):
        _need(getattr(t, key) >= 0, f"training.{key}", f"must be ≥ 0, got {getattr(t, key)}")
    _need(
        t.epochs > 0 or t.schedule_max_steps > 0,
        "training.max_steps",
        "training.epochs and training.max_steps are both 0: set one of them",
    )
    unknown = [k for k in t.stage_steps if k not in STAGED]
    _need(
        not unknown,
        "training.stage_steps",
        f"names {unknown}: only the staged schedules {', '.join(STAGED)} have their own step counts "
        "(the others train training.max_steps)",
    )
    bad = {k: v for k, v in t.stage_steps.items() if v < 1}
    _need(not bad, "training.stage_steps", f"must be ≥ 1 step per stage, got {bad}")
    _need(t.rounds >= 1, "training.rounds", f"must be ≥ 1 round of stage one → stage two, got {t.rounds}")
    _need(t.batch_size >= 1, "training.batch_size", f"must be ≥ 1, got {t.batch_size}")
    _need(t.log_every >= 1, "training.log_every", f"must be ≥ 1, got {t.log_every}")
    _need(t.time_limit >= 0, "training.time_limit", f"must be ≥ 0 seconds, got {t.time_limit}")
    per_variable = [f"forecast_mse/{v}" for v in m.variables]
    _need(
        t.best_by in BEST_BY or t.best_by in per_variable,
        "training.best_by",
        f"must be a key of the validation record: one of {', '.join(BEST_BY)} or forecast_mse/<variable> "
        f"({', '.join(per_variable)}), got {t.best_by!r}",
    )
    validated = ("loss", "forecast_mse", *VALIDATION_TERMS[t.schedule])  # the schedule was checked above
    _need(
        t.best_by in validated or t.best_by in per_variable,
        "training.best_by",
        f"is {t.best_by!r}, which schedule {t.schedule} does not validate; choose one of {', '.join(validated)} "
        "or forecast_mse/<variable>",
    )
    _need(
        t.weight_decay >= 0 and t.grad_clip >= 0 and t.pred_loss_weight >= 0 and t.stage2_pred_loss_weight >= 0,
        "training.weight_decay/grad_clip/pred_loss_weight/stage2_pred_loss_weight",
        "must be ≥ 0",
    )
    _need(
        not (t.schedule == "end_to_end" and t.pred_loss_weight > 0),
        "training.pred_loss_weight",
        "has no meaning for schedule end_to_end (no momentum copies); set it to 0",
    )
    _need(
        not (t.schedule == "stage2" and t.pred_loss_weight > 0),
        "training.pred_loss_weight",
        f"is the implicit schedule's; stage two's weight is training.stage2_pred_loss_weight "
        f"(now {t.stage2_pred_loss_weight}): set that instead",
    )
    z = cfg.deepspeed
    _need(z.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage", f"must be 0, 1, 2 or 3, got {z.zero_stage}")
    _need(
        not (t.compile and z.zero_stage == 3),
        "training.compile",
        "is true with deepspeed.zero_stage=3, whose parameters are gathered by hooks on the modules that "
        "torch.compile would trace through; use ZeRO 0-2 with training.compile, or set it to false",
    )
    _need(
        z.gradient_accumulation >= 1, "deepspeed.gradient_accumulation", f"must be ≥ 1, got {z.gradient_accumulation}"
    )
    _need(
        t.batch_size % z.gradient_accumulation == 0,
        "training.batch_size",
        f"{t.batch_size} is not divisible by deepspeed.gradient_accumulation={z.gradient_accumulation}: "
        f"training.batch_size is samples per optimizer step = micro-batch × accumulation × ranks",
    )
    _need(
        z.stage3_param_persistence_threshold >= 0,
        "deepspeed.stage3_param_persistence_threshold",
        f"must be ≥ 0, got {z.stage3_param_persistence_threshold}",
    )
    _need(
        cfg.distributed.timeout_s >= 1,
        "distributed.timeout_s",
        f"must be ≥ 1 second, got {cfg.distributed.timeout_s} (default 300: how long a collective waits for the "
        "other ranks before this rank fails)",
    )
    _need(d.source in DATA_SOURCES, "data.source", f"must be one of {DATA_SOURCES}, got {d.source!r}")
    _need(
        d.source != "shards" or bool(d.path),
        "data.path",
        "is empty but data.source is 'shards': give the directory that holds index.json",
    )
    for key in ("step_hours", "stride", "subsample"):
        _need(getattr(d, key) >= 1, f"data.{key}", f"must be ≥ 1, got {getattr(d, key)}")
    _need(d.num_workers >= 0, "data.num_workers", f"must be ≥ 0, got {d.num_workers}")
    for i, v in enumerate(d.variables):
        _need(bool(v.name and v.file_glob and v.var), f"data.variables[{i}]", f"needs name, file_glob and var, got {v}")
    unknown = [k for k in d.coords if k not in COORD_AXES]
    _need(
        not unknown,
        "data.coords",
        f"has unknown axis {unknown[0]!r}; the axes are {', '.join(COORD_AXES)} "
        "(e.g. data.coords: {time: timestep, lat: FNOCY, lon: FNOCX})"
        if unknown
        else "",
    )
    _need(all(d.coords.values()), "data.coords", f"has an empty name: {d.coords}")
    repeated = [n for n in set(d.coords.values()) if list(d.coords.values()).count(n) > 1]
    _need(not repeated, "data.coords", f"names {repeated[0]!r} for two axes: {d.coords}" if repeated else "")
    names = [v.name for v in d.variables]
    _need(len(set(names)) == len(names), "data.variables", f"lists a variable twice: {names}")
    for name, policy in d.missing.items():
        _need(name in cfg.model.variables, f"data.missing.{name}", f"is not in model.variables {cfg.model.variables}")
        _need(
            policy in MISSING_POLICIES or _is_number(policy),
            f"data.missing.{name}",
            f"must be one of {', '.join(MISSING_POLICIES)} or a number (the fill value), got {policy!r}",
        )
    for key in ("train_years", "val_years"):
        _need(len(getattr(d, key)) > 0, f"data.{key}", "must list at least one year")
    splits = [set(d.train_years), set(d.val_years), set(d.test_years)]
    _need(
        any(d.period(s) for s in SPLITS)
        or not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2]),
        "data.train_years/val_years/test_years",
        "overlap: each year may be in one split only",
    )
    spans = {s: [d.period(s)] if d.period(s) else [_year_span(y) for y in getattr(d, f"{s}_years")] for s in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = [(x, y) for x in spans[a] for y in spans[b] if x[0] < y[1] and y[0] < x[1]]
        _need(
            not both,
            f"data.{a}/{b}",
            f"overlap ({_span(both[0][0])} and {_span(both[0][1])}): each time may be in one split only"
            if both
            else "",
        )


SPLITS = ("train", "val", "test")


def _year_span(year: int) -> tuple[np.datetime64, np.datetime64]:
    return np.datetime64(f"{year:04d}", "h"), np.datetime64(f"{year + 1:04d}", "h")


def _span(span: tuple[np.datetime64, np.datetime64]) -> str:
    return f"{span[0]} .. {span[1] - 1}"


def resolve_periods(d: DataConfig) -> None:
    """A split given as a date range gets the years it touches as its ``*_years``: the shards convert writes, the
    years stats reads (the range then picks the frames)."""
    for split in SPLITS:
        period = d.period(split)
        if period is not None:
            first, last = (t.astype("datetime64[Y]").astype(np.int64) + 1970 for t in (period[0], period[1] - 1))
            setattr(d, f"{split}_years", list(range(int(first), int(last) + 1)))


def _is_number(text: str) -> bool:
    """A finite number as a config string (a YAML number becomes one): a fill value of data.missing."""
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def _need(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}' {problem}")
