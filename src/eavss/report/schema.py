"""The versioned results schema of ``report.json``.

Top-level keys (all runs): ``schema`` (= ``"eavss.report"``), ``schema_version``, ``kind``
(``score`` | ``prune`` | ``eval`` | ``run`` | ``hallucination``), ``created`` (UTC ISO-8601),
``environment`` (eavss, python, torch, transformers, lm_eval versions, platform, threads),
``config`` (the full resolved configuration), ``seed``. Optional sections, by kind:
``model``, ``calibration``, ``statistics`` (site, sparsity rule, per-layer table, raw sums),
``scores``, ``pruning``, ``evaluation`` (``original``, ``pruned``, ``retention``), ``timings``
(seconds per phase). Version history: 1.0 -- first release. A reader must refuse a report whose
major version differs from :data:`SCHEMA_VERSION`'s.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import sys
from typing import Any

import numpy as np

from eavss.errors import EavssError

SCHEMA = "eavss.report"
SCHEMA_VERSION = "1.0"
KINDS = ("score", "prune", "eval", "run", "hallucination")


def environment() -> dict:
    """Versions of the packages that shape the numbers, and the machine."""
    import importlib.metadata as md

    import torch

    def v(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "eavss": v("eavss"), "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": v("transformers"), "lm_eval": v("lm_eval") or v("lm-eval"), "gguf": v("gguf"),
        "accelerate": v("accelerate"), "numpy": np.__version__, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def new_report(kind: str, config: dict, seed: int) -> dict:
    """Skeleton report of ``kind`` with schema header, environment and config."""
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(), "config": config, "seed": seed,
    }


def jsonable(obj: Any) -> Any:
    """Recursively convert numpy types to Python ones and non-finite floats to None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def check_report(d: dict, kinds: tuple[str, ...] | None = None) -> dict:
    """Validate a loaded report's header.

    Raises:
        EavssError: not an eavss report, an incompatible major version, or the wrong kind.
    """
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise EavssError("not an eavss report.json (missing schema header); point --from at an `eavss score` or `eavss run` output folder")
    major = str(d.get("schema_version", "0")).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise EavssError(f"report schema version {d.get('schema_version')} is incompatible with {SCHEMA_VERSION}; re-run `eavss score`")
    if kinds and d.get("kind") not in kinds:
        raise EavssError(f"report kind {d.get('kind')!r} has no layer scores; use the output of `eavss score` or `eavss run`")
    return d
