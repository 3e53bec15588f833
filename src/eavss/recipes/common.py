"""What every recipe does the same way: check options and the output folder before any slow work,
seed, choose threads, load the model, time phases.

Recipe-layer code: it reads the shared config sections (:class:`eavss.config.RunOptions`,
:class:`eavss.config.ModelSection`) and calls the library with plain arguments.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from eavss.config import ModelSection, RunOptions
from eavss.io import check_not_inside, check_out_dir, check_replaceable, lock_out_dir


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def choose_threads(requested: int | None) -> dict:
    """Set torch's CPU threads and say why (the one meaning of ``threads`` for every command).

    ``requested`` wins. ``None`` (auto) uses the idle cores: ``cpu_count - round(1-min load
    average)``, at least 1, at most torch's default. On a shared 2-core machine multi-threaded
    small matmuls wait on descheduled threads; one thread was 2-4x faster there under load.

    Returns:
        ``{"threads", "rule", "cpu_count", "load_average_1min", "previous"}``.
    """
    import torch

    prev = torch.get_num_threads()
    cpu = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = 0.0
    if requested:
        n, rule = int(requested), "configured"
        if n > cpu:
            n, rule = cpu, f"configured {requested}, capped at cpu_count"
    else:
        n, rule = max(1, min(prev, int(round(cpu - load)))), "auto: idle cores = cpu_count - round(load average), >= 1"
    torch.set_num_threads(n)
    return {"threads": n, "rule": rule, "cpu_count": cpu, "load_average_1min": round(load, 2), "previous": prev}


def start(opts: RunOptions, *inputs: str | os.PathLike | None, may_hold_out: tuple = ()) -> dict:
    """The common start of every command, before any slow work: the output folder is checked
    (exists/overwrite, writable, not overlapping an input -- ``inputs``, the data folder and the
    model cache -- see :func:`eavss.io.check_not_inside`) and locked for this run
    (:func:`eavss.io.lock_out_dir`), the model cache is checked to be writable when a built-in model
    will be converted into it, then seeds and threads are set.

    Returns:
        The thread choice (:func:`choose_threads`), for the report.

    Raises:
        EavssError: an unusable output folder or model cache, or another run writing the folder.
    """
    from eavss.data.paths import resolve_data_dir
    from eavss.errors import EavssError
    from eavss.models.loading import alias_needs_conversion, cache_root, check_cache_writable

    check_out_dir(opts.out, opts.overwrite)
    try:
        data = resolve_data_dir(opts.data_dir)
    except EavssError:  # a command that needs data says so where it reads it
        data = None
    model = getattr(opts, "model", None)
    cache = cache_root(getattr(model, "cache_dir", None))
    if cache.exists() and not cache.is_dir():
        raise EavssError(f"--cache-dir {cache} is a file; pass a folder for the converted-model cache")
    check_not_inside(opts.out, *inputs, *input_files(opts), data, cache, may_hold_out=may_hold_out)
    check_replaceable(opts.out)
    name = getattr(model, "name", None)
    if name and alias_needs_conversion(absolute_if_path(name), cache):  # as load() names it; converting writes there
        check_cache_writable(cache)
    from eavss import distributed as edist

    if edist.is_main():  # --- torchrun: rank 0 alone writes, so it alone holds the writer's lock
        lock_out_dir(opts.out)
    seed_everything(opts.seed)
    return choose_threads(opts.threads)


def input_files(cfg) -> list[str]:
    """Every file a config reads besides the model and data folders: text files named as
    ``text:PATH`` / ``jsonl:PATH:FIELD`` anywhere in it (calibration, healing text), and the files
    of a built-in model alias (its package folder in site-packages). The output folder must not
    hold any of them (:func:`eavss.io.check_not_inside`)."""
    import dataclasses

    out: list[str] = []

    def walk(obj) -> None:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v)
            elif isinstance(v, str) and v.startswith("text:"):
                out.append(v[5:])
            elif isinstance(v, str) and v.startswith("jsonl:"):
                out.append(v[6:].rpartition(":")[0])

    walk(cfg)
    name = getattr(getattr(cfg, "model", None), "name", None)
    if name:
        from eavss.models.loading import ALIASES

        if name in ALIASES:
            try:
                out += [str(Path(p).parent) for p in ALIASES[name].locate()]
            except Exception:  # noqa: BLE001 -- not installed: nothing of it to protect
                pass
    return out


def absolute_if_path(name: str) -> str:
    """``name`` as an absolute path when it names an existing file or folder (so a report records
    where it was), else unchanged (an alias or hub id)."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def load(model: ModelSection, progress: bool = True, name: str | None = None):
    """Load ``name`` (default ``model.name``) with the section's dtype/device/cache settings.

    Returns:
        :class:`eavss.models.loading.LoadedModel`.
    """
    from eavss.models.loading import load_model

    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return load_model(absolute_if_path(name or model.name), dtype=model.dtype, device=model.device,
                      cache_dir=model.cache_dir, trust_remote_code=model.trust_remote_code)


def model_section(loaded) -> dict:
    """The report's ``model`` section: the loader's info plus the parameter count."""
    from eavss.report.schema import jsonable

    info = dict(loaded.info)
    info["num_parameters"] = sum(t.numel() for t in loaded.model.parameters())
    return jsonable(info)


@contextlib.contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Add the seconds spent in the ``with`` block to ``timings[phase]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# the work folder of a resumable command (mitigate, compare)


def work_folder(out: str, work_dir: str | None) -> Path:
    """``work_dir``, or ``OUT.work`` beside the output folder ``out``."""
    if work_dir:
        return Path(work_dir).expanduser().resolve()
    o = Path(out).expanduser().resolve()
    return o.with_name(o.name + ".work")


def check_work_dir(work: Path, out: str, *inputs, may_hold_out: tuple = (), data_dir: str | None = None,
                   cache_dir: str | None = None) -> None:
    """Before any slow work: the work folder of a resumable command must be a folder (or not exist
    yet), apart from ``--out`` (the finished output replaces ``--out``; the work folder is removed
    after it), and outside every input, the data folder and the model cache (the rule of
    :func:`eavss.io.check_not_inside`).

    Raises:
        EavssError: one line naming the problem and the fix.
    """
    from eavss.data.paths import resolve_data_dir
    from eavss.errors import EavssError
    from eavss.io import check_not_inside
    from eavss.models.loading import cache_root

    w = Path(work).expanduser().resolve()
    o = Path(out).expanduser().resolve()
    if w.exists() and not w.is_dir():
        raise EavssError(f"work_dir {w} is a file; pass a folder for the run's resumable state (default: OUT.work)")
    if w == o or o in w.parents or w in o.parents:
        raise EavssError(f"work_dir {w} overlaps --out {o}; the finished output replaces --out, so keep the work folder "
                         "beside it (default: OUT.work)")
    try:
        data = resolve_data_dir(data_dir)
    except EavssError:
        data = None
    check_not_inside(w, *inputs, data, cache_root(cache_dir), may_hold_out=may_hold_out, what="work_dir")


def fingerprint_settings(config: dict, **extra) -> dict:
    """What a work folder's fingerprint is the digest of: ``{"config": config, **extra}`` as plain JSON
    (non-JSON values by ``str``), stored beside the digest so a refused resume can name what differs."""
    import json

    return json.loads(json.dumps({"config": config, **extra}, sort_keys=True, default=str))


def settings_digest(settings: dict) -> str:
    """sha256 (hex) of a :func:`fingerprint_settings` dict: the work folder's key."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def settings_diff(old: dict, new: dict, limit: int = 3) -> str:
    """``"key: A in the folder, B now; ..."`` for the first ``limit`` dotted keys whose values differ
    between two :func:`fingerprint_settings` dicts (the ``config.`` prefix dropped), '' when none."""
    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.update(flat(v, key + "."))
            else:
                out[key] = v
        return out

    a, b = flat(old), flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    parts = [f"{k.removeprefix('config.')}: {a.get(k, '<unset>')!r} in the folder, {b.get(k, '<unset>')!r} now"
             for k in keys[:limit]]
    more = f"; and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def open_work(folder: Path, settings: dict, resume: bool, command: str, out: str) -> Path:
    """Create ``folder`` (or reuse it, when resuming a run with the same settings) and mark it with
    ``settings`` (:func:`fingerprint_settings`) and their digest, the folder's key, so that a refused
    resume names the settings that differ.

    A folder that holds only the marker of a run with other settings (interrupted before any step
    finished) is started over: there is nothing in it to protect.

    Raises:
        EavssError: the folder holds another run's state (and ``resume`` is on), or is not a work
        folder of ``eavss COMMAND``.
    """
    import shutil

    from eavss.errors import EavssError
    from eavss.io import write_json_atomic

    fingerprint = settings_digest(settings)
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    marker = folder / "fingerprint.json"
    if folder.exists() and marker.is_file():
        held = cached_json(marker) or {}
        if held.get("fingerprint") != fingerprint:
            if any(p != marker for p in folder.iterdir()):
                diff = settings_diff(held["settings"], settings) if held.get("settings") else ""
                raise EavssError(f"the work folder {folder} holds the state of a run with other settings"
                                 + (f" ({diff})" if diff else "") + "; run with those, or pass --restart to start over")
            shutil.rmtree(folder)  # interrupted before any step finished: nothing to keep
    elif folder.exists() and any(folder.iterdir()):
        raise EavssError(f"the work folder {folder} exists and is not an eavss {command} work folder; choose another "
                         "work_dir or remove it")
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"fingerprint": fingerprint, "command": command, "out": str(Path(out).resolve()),
                               "settings": settings})
    return folder


def cached_json(path: Path):
    """The JSON in ``path``, or None when it is not there (a step not yet finished)."""
    import json

    from eavss.errors import EavssError

    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EavssError(f"{path} is damaged (not JSON; a run killed while writing it?); pass --restart to start "
                         "over") from None
