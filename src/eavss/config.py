"""Typed run configuration: defaults < YAML file (``--config``) < dotted overrides (``key=value``)
< explicit command-line flags.

Every choice the papers leave open is a named field here; ``docs/method.md`` explains each
default. ``eavss config`` prints the full resolved configuration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from eavss.errors import EavssError


@dataclass
class ModelConfig:
    """Model to load. ``name``: built-in alias (``smollm2-135m``, ``gemma3-270m``, ``qwen2.5-0.5b``),
    hub id, local HF folder or ``.gguf`` file."""

    name: str = "smollm2-135m"
    dtype: str = "float32"
    device: str = "cpu"
    cache_dir: str | None = None
    trust_remote_code: bool = False


@dataclass
class CalibrationConfig:
    """Calibration set for activation statistics (see :mod:`eavss.data.calibration`)."""

    dataset: str = "wikitext2"
    num_samples: int = 256
    max_length: int = 256
    batch_size: int = 8
    packing: str = "documents"


@dataclass
class SparsityConfig:
    """Near-zero rule: ``relative`` (|a| < tau * token RMS, default) or ``absolute`` (|a| < epsilon)."""

    mode: str = "relative"
    tau: float = 0.01
    epsilon: float = 1e-5


@dataclass
class StatsConfig:
    """Statistics collection."""

    site: str = "resid_post"
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    accum_dtype: str = "float64"
    block_influence: bool = True


@dataclass
class ScoresConfig:
    """AVSS definition choices (see docs/method.md)."""

    variance: str = "element"
    normalisation: str = "sum"
    sparsity_guard: str = "half_count"


@dataclass
class PruneConfig:
    """Layer selection: ``rule=count`` removes ``floor(fraction*L)`` layers; ``rule=mass`` removes the
    lowest-scoring layers whose normalised scores sum to at most ``mass``."""

    score: str = "avss"
    rule: str = "count"
    fraction: float = 0.25
    mass: float = 0.25
    protect_first: int = 0
    protect_last: int = 0


@dataclass
class EvalConfig:
    """Retention evaluation. ``limits`` caps items per task (null = the whole set): wikitext2 articles,
    squad questions, sst2 sentences; ``ppl`` is capped by ``ppl_max_tokens`` instead. ``max_length``:
    lm-eval's context window (rolling-window size for wikitext2)."""

    tasks: list[str] = field(default_factory=lambda: ["ppl", "wikitext2", "squad", "sst2"])
    limits: dict[str, int | None] = field(default_factory=lambda: {"ppl": None, "wikitext2": 2, "squad": 40, "sst2": 200})
    batch_size: int = 8
    max_length: int | None = 2048
    ppl_context_length: int = 1024
    ppl_max_tokens: int | None = 8192
    max_gen_toks: int = 32


@dataclass
class RunConfig:
    """Everything a run needs. ``out``: output folder; ``seed``: seeds sampling and torch."""

    model: ModelConfig = field(default_factory=ModelConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    scores: ScoresConfig = field(default_factory=ScoresConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data_dir: str | None = None
    out: str = "runs/avss"
    overwrite: bool = False
    seed: int = 0
    progress: bool = True
    threads: int | None = None


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Coerce a YAML-parsed value to the field's declared type, or raise a one-line error."""
    import types
    import typing

    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except EavssError as e:
                errors.append(str(e))
        raise EavssError(errors[0] if errors else f"bad value for {key}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise EavssError(f"config key {key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EavssError(f"config key {key} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-05" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EavssError(f"config key {key} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise EavssError(f"config key {key} must be a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise EavssError(f"config key {key} must be a list (e.g. a,b,c), got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise EavssError(f"config key {key} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else value
    return value


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise EavssError(f"unknown config key {key!r}; valid keys here: {sorted(names)}")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                raise EavssError(f"config key {key!r} is a section; set its fields, e.g. {key}.{next(iter(sorted(f.name for f in dataclasses.fields(cur))))}=...")
            _apply(cur, v, key + ".")
        elif isinstance(cur, dict) and isinstance(v, dict) and hints[k] is not None:
            merged = dict(cur)
            merged.update(_coerce(v, hints[k], key))
            setattr(obj, k, merged)
        else:
            setattr(obj, k, _coerce(v, hints[k], key))


def parse_override(item: str) -> dict:
    """``"a.b.c=value"`` -> ``{"a": {"b": {"c": parsed}}}``; the value is parsed as YAML.

    Raises:
        EavssError: no ``=`` or an empty key.
    """
    if "=" not in item:
        raise EavssError(f"override {item!r} is not key=value (e.g. prune.fraction=0.3)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise EavssError(f"override {item!r} has an empty key; use dotted names like eval.batch_size=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out: dict = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None, base: RunConfig | None = None) -> RunConfig:
    """Build a :class:`RunConfig` from defaults, an optional YAML file and dotted overrides.

    Raises:
        EavssError: missing/unparsable file, unknown key, value of the wrong type.
    """
    cfg = base or RunConfig()
    if path:
        p = Path(path)
        if p.is_dir():
            raise EavssError(f"config path {p} is a folder; pass --config path/to/file.yaml")
        if not p.is_file():
            raise EavssError(f"config file {p} does not exist; pass --config path/to/file.yaml")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise EavssError(f"config file {p} is not UTF-8 text; pass a YAML file") from None
        except yaml.YAMLError as e:
            raise EavssError(f"config file {p} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise EavssError(f"config file {p} must hold a mapping of keys, got {type(data).__name__}")
        _apply(cfg, data)
    for item in overrides or []:
        _apply(cfg, parse_override(item))
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The configuration as YAML (loadable with ``--config``)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
