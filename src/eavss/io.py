"""Atomic file and folder output.

Nothing eavss writes is ever half-written: files go to a temporary sibling and are renamed into
place (``os.replace`` is atomic on POSIX), and whole output folders are built in a temporary
sibling folder and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from eavss.errors import EavssError


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Serialise ``obj`` as indented JSON (NaN/Inf refused) and write it atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing, non-empty output folder unless ``overwrite``.

    Raises:
        EavssError: ``out`` exists and is not empty and ``overwrite`` is false, or ``out`` is a file.
    """
    if not str(out).strip():
        raise EavssError("--out is empty; pass an output folder path")
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise EavssError(f"--out {out} is a file; pass a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise EavssError(f"output folder {out} already exists and is not empty; pass --overwrite or choose another --out")
    if out == Path.cwd().resolve() or out in Path.cwd().resolve().parents or out.parent == out:
        raise EavssError(f"--out {out} is the current folder or one of its parents; choose a new sub-folder")
    # fail now, not after the computation, when the parent cannot be written
    parent = out.parent
    while not parent.exists() and parent.parent != parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise EavssError(f"cannot write --out {out}: {parent} is not a writable folder; choose another --out")
    return out


def check_not_inside(out: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Refuse an output folder that is, or contains, an input folder (``--model``, ``--from``): replacing
    it with ``--overwrite`` would delete the input. An output *inside* an input folder is allowed
    (``eavss prune --from runs/x --out runs/x/pruned``).

    Raises:
        EavssError: ``out`` overlaps an existing input folder (``--overwrite`` would delete it).
    """
    o = Path(out).expanduser().resolve()
    for inp in inputs:
        if not inp:
            continue
        i = Path(inp).expanduser()
        if not i.exists():
            continue
        i = i.resolve()
        if o == i or o in i.parents:
            raise EavssError(f"--out {o} is or contains the input {i}; choose another output folder")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder atomically.

    Yields a temporary sibling folder; on success it replaces ``out`` (an existing ``out`` is
    removed only then, and only when ``overwrite``); on any error the temporary folder is deleted
    and ``out`` is left as it was.

    Raises:
        EavssError: see :func:`check_out_dir`.
    """
    out = check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
