"""The versioned results schema of ``report.json``, shared by every command.

Header (every report): ``schema`` (= ``"eavss.report"``), ``schema_version``, ``kind`` (one of
:data:`KINDS`), ``created`` (UTC ISO-8601), ``code`` (eavss version and the git commit of the code
that ran, with ``dirty`` when the checkout had uncommitted changes), ``environment`` (package
versions, platform, threads), ``tokenizer`` (class and special tokens: bos/eos/pad/unk and their
ids, padding side, whether a chat template is present), ``config`` (the full resolved command
configuration) and ``seed``. The sections that follow depend on the kind; their keys are typed
beside their renderers (:mod:`eavss.report.avss`, :mod:`eavss.report.hallucination`,
:mod:`eavss.report.mitigate`).

Version history: 1.0 -- first release. 2.0 -- one command stack: the ``code`` and ``tokenizer``
header fields; configs are per command (a ``score`` report's config has no prune/eval sections);
the variance definition is ``stats.variance`` in every command (was ``scores.variance`` for
AVSS); agreement keys ``top_k_score``/``top_k_reference``. 2.1 -- kinds ``compare``
(:mod:`eavss.report.compare`) and ``heal`` (:mod:`eavss.report.heal`). 2.2 -- ``compare``: ``paired``
(paired differences in mean retention between rows), rows that share removed layers carry
``same_layers_as``. 2.3 -- score agreements (``ground_truth.agreement``, ``compare``'s
``ground_truth_cost``, ``hallucination``'s ``agreement``) carry ``spearman_ci``, the 95 % interval
of Spearman's rho over the layers.
A reader refuses a report whose major version differs from
:data:`SCHEMA_VERSION`'s (:func:`read_report`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from eavss.errors import EavssError

SCHEMA = "eavss.report"
SCHEMA_VERSION = "2.3"
KINDS = ("score", "prune", "eval", "run", "hallucination", "compare", "heal", "mitigate")


class Header(TypedDict):
    """The keys every report starts with."""

    schema: str
    schema_version: str
    kind: str
    created: str
    code: dict
    environment: dict
    tokenizer: dict | None
    config: dict
    seed: int


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
        "accelerate": v("accelerate"), "peft": v("peft"), "numpy": np.__version__, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"eavss": version, "git_commit": sha or None, "dirty": bool or None}`` of the running code.

    The commit is read with ``git`` from the folder holding the eavss package (None when that is
    not a git checkout, e.g. an installed wheel, or git is missing).
    """
    import importlib.metadata as md

    try:
        version = md.version("eavss")
    except md.PackageNotFoundError:
        version = None
    here = Path(__file__).resolve().parent
    commit = dirty = None
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            commit = r.stdout.strip()
            s = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", str(here.parent)],
                               cwd=here, capture_output=True, text=True, timeout=10)
            dirty = bool(s.stdout.strip()) if s.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"eavss": version, "git_commit": commit, "dirty": dirty}


def tokenizer_info(tokenizer: Any) -> dict | None:
    """Class, special tokens (with ids), padding side and chat-template presence of a tokenizer."""
    if tokenizer is None:
        return None
    out: dict[str, Any] = {"class": type(tokenizer).__name__}
    for name in ("bos", "eos", "pad", "unk"):
        tok = getattr(tokenizer, f"{name}_token", None)
        out[f"{name}_token"] = str(tok) if tok is not None else None
        out[f"{name}_token_id"] = getattr(tokenizer, f"{name}_token_id", None)
    out["padding_side"] = getattr(tokenizer, "padding_side", None)
    out["chat_template"] = bool(getattr(tokenizer, "chat_template", None))
    out["vocab_size"] = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    return jsonable(out)


def new_report(kind: str, config: dict, seed: int, tokenizer: Any = None) -> dict:
    """Skeleton report of ``kind``: the :class:`Header` keys.

    Raises:
        ValueError: unknown kind (a programming error).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    header: Header = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "code": code_version(), "environment": environment(), "tokenizer": tokenizer_info(tokenizer),
        "config": config, "seed": seed,
    }
    return dict(header)


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


def check_report(d: Any, kinds: tuple[str, ...] | None = None, where: str = "report.json") -> dict:
    """Validate a loaded report's header.

    Raises:
        EavssError: not an eavss report, an incompatible major version, or a kind not in ``kinds``.
    """
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise EavssError(f"{where} is not an eavss report (no schema header); point at the --out folder of an eavss command")
    major = str(d.get("schema_version", "0")).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise EavssError(f"{where} has report schema version {d.get('schema_version')}, incompatible with "
                         f"{SCHEMA_VERSION}; re-run the command that wrote it with this eavss")
    if kinds and d.get("kind") not in kinds:
        made_by = " or ".join(f"`eavss {k}`" for k in kinds)
        raise EavssError(f"{where} is a {d.get('kind')!r} report; this needs the output of {made_by}")
    return d


def read_report(path: str | os.PathLike, kinds: tuple[str, ...] | None = None) -> dict:
    """Load and check ``report.json`` (``path`` is the file or its folder).

    Raises:
        EavssError: missing file, not JSON, not an eavss report, wrong major version or kind.
    """
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / "report.json"
    made_by = " or ".join(f"`eavss {k}`" for k in kinds) if kinds else "an eavss command"
    if not p.is_file():
        raise EavssError(f"{p} not found; pass the --out folder of {made_by}")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EavssError(f"{p} is not valid JSON (a damaged or unfinished report); re-run {made_by}") from None
    return check_report(d, kinds, where=str(p))
