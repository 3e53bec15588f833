"""Typed command configuration: defaults < YAML file (``--config``) < dotted overrides
(``key=value``) < explicit command-line flags.

Every command has one root dataclass (its recipe's config) made of sections. A field is declared
with :func:`option`, which carries the field's help text, its command-line flag (if any), its
valid choices (a :class:`eavss.registry.Registry`, or a lazy ``"module:NAME"`` reference to one)
and bounds; :func:`section` declares a nested section. From these declarations:

* the CLI builds each command's flags and ``--help`` (:mod:`eavss.cli`),
* :func:`load_config` parses files and overrides by the key's *declared* type (a string key
  never turns into a number; a flag value is taken literally),
* :func:`validate` checks choices, bounds and known mapping keys for every command in one way,
  then calls each section's ``check()`` for the rules that span fields,
* :func:`dump_config` prints the resolved config as YAML with every key's help as a comment.

Every command shares the run options of :class:`RunOptions` (``out``, ``overwrite``, ``seed``,
``threads``, ``data_dir``, ``progress``) with one meaning each.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, get_type_hints

import yaml

from eavss.errors import EavssError

# ---------------------------------------------------------------------------------------------
# declaring fields


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           choices: Any = None, min: float | None = None, max: float | None = None,
           factory: Callable[[], Any] | None = None, keys: Any = None, action: str | None = None,
           broadcast: str | None = None, required: bool = False, element_choices: bool = True) -> Any:
    """A config field with its documentation.

    Args:
        default: the default value (or ``factory`` for mutable defaults).
        help: one line for ``--help`` and the YAML dump.
        flag: the command-line flag that sets this field (``"--fraction"``), if any.
        choices: valid values: a :class:`~eavss.registry.Registry`, a ``"module:NAME"`` reference
            to one, or a tuple; for list fields each element is checked.
        min, max: inclusive bounds for numbers (``None`` passes).
        keys: valid keys of a mapping field (same forms as ``choices``).
        action: ``"store_true"`` / ``"store_false"`` for boolean flags.
        broadcast: for a mapping field with a ``flag``: the dotted key of a list field; the flag's
            single value is set for every element of that list (``--limit 5``).
        required: the flag must be given (no usable default).
    """
    md = {"help": help, "flag": flag, "choices": choices, "min": min, "max": max, "keys": keys, "action": action,
          "broadcast": broadcast, "required": required}
    md = {k: v for k, v in md.items() if v is not None and v is not False}  # keeps min=0 (0 == False)
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def section(cls: type, help: str = "") -> Any:
    """A nested config section of dataclass ``cls``."""
    if not help:
        import re

        text = " ".join((cls.__doc__ or "").split())
        text = re.sub(r"\s*\(:\w+:`[^`]*`\)", "", text)  # drop "(:mod:`...`)" references
        help = re.sub(r":\w+:`~?([^`]*)`", r"\1", text).replace("``", "").split(". ")[0].rstrip(".")
    return field(default_factory=cls, metadata={"help": help})


def resolve_choices(spec: Any) -> Any:
    """A registry/tuple from a ``choices``/``keys`` declaration (resolving lazy references)."""
    if isinstance(spec, str):
        from eavss.registry import lookup

        return lookup(spec)
    return spec


# ---------------------------------------------------------------------------------------------
# shared sections


@dataclass
class ModelSection:
    """The model to load."""

    name: str = option("smollm2-135m", "built-in alias (smollm2-135m [default], gemma3-270m, qwen2.5-0.5b), "
                       "hub id, local HF folder or .gguf file", flag="--model")
    dtype: str = option("float32", "float32 (fastest on CPU) | bfloat16 | float16 | auto", flag="--dtype",
                        choices=("float32", "bfloat16", "float16", "auto"))
    device: str = option("cpu", "cpu, cuda, cuda:N or auto (accelerate's device_map)", flag="--device")
    cache_dir: str | None = option(None, "where converted GGUF models are cached (default $EAVSS_CACHE or "
                                   "~/.cache/eavss/models)", flag="--cache-dir")
    trust_remote_code: bool = option(False, "allow a model folder/hub id that needs custom code: runs Python code "
                                     "from the model's folder (off by default)")

    def check(self) -> None:
        if not str(self.name).strip():
            raise EavssError("--model (model.name) is empty; pass a built-in alias (smollm2-135m), a hub id, a local "
                             "HF folder or a .gguf file")


@dataclass
class SparsitySection:
    """Near-zero rule: ``relative`` (|a| < tau * token RMS) or ``absolute`` (|a| < epsilon)."""

    mode: str = option("relative", "near-zero rule: relative (|a| < tau*RMS of the token) | absolute (|a| < epsilon)",
                       flag="--sparsity-mode")
    tau: float = option(0.01, "relative near-zero threshold", flag="--tau", min=0)
    epsilon: float = option(1e-5, "absolute near-zero threshold (the official code's 1e-5)", flag="--epsilon", min=0)

    def check(self) -> None:
        from eavss.stats import SparsityRule

        SparsityRule(mode=self.mode, epsilon=self.epsilon, tau=self.tau)  # raises the one-line error

    def rule(self):
        """The :class:`eavss.stats.SparsityRule` of this section."""
        from eavss.stats import SparsityRule

        return SparsityRule(mode=self.mode, epsilon=self.epsilon, tau=self.tau)


@dataclass
class RunOptions:
    """Options every command shares, with one meaning each (the first fields of every config)."""

    out: str = option("runs/out", "output folder (refused if it exists and is not empty, unless --overwrite)",
                      flag="--out")
    overwrite: bool = option(False, "replace an existing --out folder", flag="--overwrite", action="store_true")
    seed: int = option(0, "seed of every random choice (sampling, splits, bootstrap, torch)", flag="--seed",
                       min=0, max=2**63 - 1)
    threads: int | None = option(None, "torch CPU threads; null = the idle cores (cpu_count - round(load average), "
                                 ">= 1)", flag="--threads", min=1, max=4096)
    data_dir: str | None = option(None, "folder with the offline datasets (default $EAVSS_DATA_DIR, else "
                                  "../shared/data)", flag="--data-dir")
    progress: bool = option(True, "progress bars", flag="--no-progress", action="store_false")


# ---------------------------------------------------------------------------------------------
# walking a config


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def iter_fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field, Any]]:
    """``(dotted_key, field, declared_type)`` for every leaf field of config class ``cls``, depth first."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from iter_fields(t, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, t


def get_key(cfg: Any, key: str) -> Any:
    """The value at dotted ``key``."""
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def set_key(cfg: Any, key: str, value: Any) -> None:
    """Set the value at dotted ``key`` (no coercion; see :func:`apply_values`)."""
    *head, last = key.split(".")
    obj = cfg
    for part in head:
        obj = getattr(obj, part)
    setattr(obj, last, value)


# ---------------------------------------------------------------------------------------------
# coercion by declared type


def _strip_optional(typ: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        optional = len(args) < len(typing.get_args(typ))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional
    return typ, False


_NULL = {"null", "none", "~"}


def parse_text(raw: str, typ: Any, key: str) -> Any:
    """Parse an override's text ``raw`` by the key's declared type ``typ``.

    Strings stay literal (``out=010`` is the folder "010", ``name=a #b`` keeps "#b"); numbers,
    booleans and null are read as such; lists accept ``a,b`` or ``[a, b]``; mappings need YAML
    (``{a: 1}``).

    Raises:
        EavssError: a value that is not of the declared type (one line naming the key).
    """
    base, optional = _strip_optional(typ)
    text = raw.strip()
    if optional and text.lower() in _NULL:
        return None
    origin = typing.get_origin(base)
    if base is str:
        return raw
    if base is bool:
        low = text.lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise EavssError(f"config key {key} must be true or false, got {raw!r}")
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise EavssError(f"config key {key} must be an integer, got {raw!r}") from None
    if base is float:
        try:
            v = float(text)
        except ValueError:
            raise EavssError(f"config key {key} must be a number, got {raw!r}") from None
        return v
    if origin is list:
        (elem,) = typing.get_args(base) or (str,)
        if text.startswith("["):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise EavssError(f"config key {key} must be a list (a,b,c or [a, b, c]), got {raw!r}") from None
            return coerce(value, base, key)
        return [parse_text(p, elem, key) for p in text.split(",") if p.strip()]
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        raise EavssError(f"config key {key} could not be read ({raw!r}); write mappings as {{name: value}}") from None
    return coerce(value, typ, key)


def coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/convert a YAML-loaded ``value`` to the declared type ``typ``.

    Raises:
        EavssError: a value of the wrong type (one line naming the key).
    """
    base, optional = _strip_optional(typ)
    if value is None:
        if optional:
            return None
        raise EavssError(f"config key {key} must not be null")
    origin = typing.get_origin(base)
    args = typing.get_args(base)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise EavssError(f"config key {key} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EavssError(f"config key {key} must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-05" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EavssError(f"config key {key} must be a number, got {value!r}")
        return float(value)
    if base is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise EavssError(f"config key {key} must be a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise EavssError(f"config key {key} must be a list (e.g. a,b,c), got {value!r}")
        return [coerce(v, args[0], key) for v in value] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise EavssError(f"config key {key} must be a mapping, got {value!r}")
        return {str(k): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else value
    return value


# ---------------------------------------------------------------------------------------------
# applying values


def _apply_tree(obj: Any, data: dict, prefix: str, text: bool) -> None:
    """Apply a nested dict of values (``text``: leaves are override strings to parse)."""
    hints = get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise EavssError(f"unknown config key {key!r}; valid keys here: {sorted(names)}")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                first = sorted(f.name for f in dataclasses.fields(cur))[0]
                raise EavssError(f"config key {key!r} is a section; set its fields, e.g. {key}.{first}=...")
            _apply_tree(cur, v, key + ".", text)
            continue
        typ = hints[k]
        base, _ = _strip_optional(typ)
        if typing.get_origin(base) is dict and isinstance(v, dict):  # a mapping merges key by key
            merged = dict(cur or {})
            val_t = typing.get_args(base)[1] if typing.get_args(base) else Any
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    raise EavssError(f"config key {key}.{kk} must be a single value, not a mapping")
                merged[str(kk)] = parse_text(vv, val_t, f"{key}.{kk}") if text else coerce(vv, val_t, f"{key}.{kk}")
            setattr(obj, k, merged)
        elif text and isinstance(v, list) and typing.get_origin(base) is list:
            elem = (typing.get_args(base) or (str,))[0]
            setattr(obj, k, [parse_text(x, elem, key) if isinstance(x, str) else coerce(x, elem, key) for x in v])
        else:
            setattr(obj, k, parse_text(v, typ, key) if text and isinstance(v, str) else coerce(v, typ, key))


def parse_override(item: str) -> dict:
    """``"a.b.c=value"`` -> ``{"a": {"b": {"c": "value"}}}`` (the value stays text; it is parsed by
    the key's declared type when applied).

    Raises:
        EavssError: no ``=`` or an empty key.
    """
    if "=" not in item:
        raise EavssError(f"override {item!r} is not key=value (e.g. prune.fraction=0.3)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise EavssError(f"override {item!r} has an empty key; use dotted names like eval.batch_size=4")
    out: dict = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = raw
    return out


def read_yaml_file(path: str | Path) -> dict:
    """A YAML config file as a mapping.

    Raises:
        EavssError: missing, a folder, not UTF-8, not YAML, or not a mapping.
    """
    p = Path(path)
    if p.is_dir():
        raise EavssError(f"config path {p} is a folder; pass --config path/to/file.yaml")
    if not p.is_file():
        raise EavssError(f"config file {p} does not exist; pass --config path/to/file.yaml")
    try:
        # every scalar as text (BaseLoader), parsed by the key's declared type like an override: "0123"
        # stays "0123" for a text key, instead of YAML 1.1's octal 83
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
    except UnicodeDecodeError:
        raise EavssError(f"config file {p} is not UTF-8 text; pass a YAML file") from None
    except yaml.YAMLError as e:
        raise EavssError(f"config file {p} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise EavssError(f"config file {p} must hold a mapping of keys, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None, check: bool = True) -> Any:
    """Build a config of root class ``cls``: defaults < YAML file < ``key=value`` overrides <
    ``values`` (dotted key -> already-typed value, e.g. from flags), then :func:`validate`.

    Raises:
        EavssError: missing/unparsable file, unknown key, value of the wrong type, invalid value.
    """
    cfg = cls()
    if path:
        _apply_tree(cfg, read_yaml_file(path), "", text=True)
    for item in overrides or []:
        _apply_tree(cfg, parse_override(item), "", text=True)
    hints = {k: t for k, _, t in iter_fields(cls)}
    for key, v in (values or {}).items():
        set_key(cfg, key, coerce(v, hints[key], key))
    if check:
        validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# validation


def _check_bounds(key: str, v: Any, md: dict) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    if isinstance(v, float) and not math.isfinite(v):
        raise EavssError(f"{key} must be a finite number, got {v}")
    lo, hi = md.get("min"), md.get("max")
    if lo is not None and v < lo:
        raise EavssError(f"{key} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise EavssError(f"{key} must be <= {hi}, got {v}")


def _check_choice(key: str, v: Any, options: Any) -> None:
    if v not in options:
        names = options.names() if hasattr(options, "names") else list(options)
        raise EavssError(f"{key}={v!r} is not valid; choose one of {names}")


def validate(cfg: Any, _prefix: str = "") -> Any:
    """Check every field's declared choices, bounds and mapping keys, then each section's
    ``check()`` (sections first, the root last). Returns ``cfg``.

    Raises:
        EavssError: the first invalid value, naming its key and the valid choices.
    """
    for f in dataclasses.fields(cfg):
        key = f"{_prefix}{f.name}"
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            validate(v, key + ".")
            continue
        md = f.metadata
        if md.get("choices") is not None and v is not None:
            opts = resolve_choices(md["choices"])
            for item in (v if isinstance(v, list) else [v]):
                _check_choice(key, item, opts)
        if md.get("keys") is not None and isinstance(v, dict):
            opts = resolve_choices(md["keys"])
            for k in v:
                if k not in opts:
                    names = opts.names() if hasattr(opts, "names") else list(opts)
                    raise EavssError(f"unknown key {key}.{k}; valid keys: {names}")
        if isinstance(v, dict):
            for kk, item in v.items():
                _check_bounds(f"{key}.{kk}", item, md)
        else:
            for item in (v if isinstance(v, list) else [v]):
                _check_bounds(key, item, md)
    check = getattr(cfg, "check", None)
    if callable(check):
        check()
    return cfg


# ---------------------------------------------------------------------------------------------
# printing


def _scalar(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, width=10**9)
    return text.removesuffix("\n...\n").strip()


def dump_config(cfg: Any, comments: bool = True, _indent: int = 0) -> str:
    """The configuration as YAML (loadable with ``--config``), each key with its help as a comment."""
    lines = []
    pad = "  " * _indent
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        help_text = f.metadata.get("help", "")
        if dataclasses.is_dataclass(v):
            lines.append(f"{pad}{f.name}:" + (f"  # {help_text}" if comments and help_text else ""))
            lines.append(dump_config(v, comments, _indent + 1).rstrip("\n"))
            continue
        if isinstance(v, dict):
            lines.append(f"{pad}{f.name}:" + (" {}" if not v else "") + (f"  # {help_text}" if comments and help_text else ""))
            for k, vv in v.items():
                lines.append(f"{pad}  {k}: {_scalar(vv)}")
            continue
        comment = f"  # {help_text}" if comments and help_text else ""
        lines.append(f"{pad}{f.name}: {_scalar(v)}{comment}")
    return "\n".join(lines) + "\n"
