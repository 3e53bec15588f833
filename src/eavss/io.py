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


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def follow_umask(path: str | os.PathLike, folder: bool = False) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would (``0o666``/``0o777`` less the
    umask); ``mkstemp``/``mkdtemp`` create them private (0600/0700)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing (``mode`` ``"w"``: UTF-8 text, ``"wb"``:
    bytes) and rename it to ``path`` when the block ends without error (fsync first); on an error
    the temporary file is removed and ``path`` is left as it was. The file gets the permissions
    the umask gives a new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        follow_umask(tmp)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path, "w") as fh:
        fh.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, inline_scalar_lists: bool = False) -> None:
    """Serialise ``obj`` as indented JSON (NaN/Inf refused) and write it atomically.

    ``inline_scalar_lists`` writes every list that holds no list or object on one line (compact
    per-item arrays); the JSON value is the same either way.
    """
    if inline_scalar_lists:
        text = _dumps_inline(obj, 0)
    else:
        text = json.dumps(obj, indent=2, allow_nan=False, default=_json_default)
    write_text_atomic(path, text + "\n")


def _dumps_inline(obj: Any, level: int, indent: int = 2) -> str:
    """Indented JSON with scalar-only lists on one line."""
    if hasattr(obj, "tolist") or isinstance(obj, Path):
        obj = _json_default(obj)
    pad, inner = " " * (indent * level), " " * (indent * (level + 1))
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {_dumps_inline(v, level + 1, indent)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if not any(isinstance(v, (dict, list, tuple)) or hasattr(v, "tolist") for v in obj):
            return json.dumps(list(obj), allow_nan=False, default=_json_default)
        items = [inner + _dumps_inline(v, level + 1, indent) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False, default=_json_default)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


OUTPUT_MARKERS = ("report.json", "eavss_pruning.json", "eavss_healing.json", "eavss_mitigation.json")
"""Files by which an existing folder is recognised as an eavss output that ``--overwrite`` may replace."""


def check_utf8_path(path: str | os.PathLike, what: str, fix: str) -> None:
    """Refuse a path that is not UTF-8.

    A Linux file name may hold any bytes; Python hands the ones that are not UTF-8 over as
    surrogate escapes (``b"\\xff"`` -> ``"\\udcff"``). Python's own file functions accept such a
    path, but the tokenizer and model writers (Rust) and UTF-8 text do not, so a run would fail only
    when it writes its outputs. The message shows the path with those bytes as ``\\xNN``.

    Args:
        path: the path to check.
        what: how the message names it, e.g. ``"--out"``.
        fix: the end of the message: what to do instead.

    Raises:
        EavssError: ``"{what} {path} is not a UTF-8 path ...; {fix}"``.
    """
    text = os.fsdecode(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        except UnicodeError:  # a surrogate that is not an escaped byte
            shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
        raise EavssError(f"{what} {shown} is not a UTF-8 path (the model and tokenizer writers need UTF-8 file "
                         f"names); {fix}") from None


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing, non-empty output folder unless ``overwrite``.

    Raises:
        EavssError: ``out`` exists and is not empty and ``overwrite`` is false, ``out`` is a file,
            or its path is not UTF-8 (:func:`check_utf8_path`).
    """
    if not str(out).strip():
        raise EavssError("--out is empty; pass an output folder path")
    try:
        out = Path(out).expanduser().resolve()
    except RuntimeError as e:  # "~user" of no such user
        raise EavssError(f"--out {out}: {e}; pass a path without ~user") from None
    check_utf8_path(out, "--out", "choose an output folder whose path is UTF-8")
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


def check_replaceable(out: str | os.PathLike) -> None:
    """Refuse to replace (``--overwrite``) an existing non-empty folder that eavss did not write:
    only a folder holding one of :data:`OUTPUT_MARKERS` is an eavss output.

    Raises:
        EavssError: ``out`` holds files but no eavss report or marker.
    """
    o = Path(out).expanduser().resolve()
    if o.is_dir() and any(o.iterdir()) and not any((o / m).exists() for m in OUTPUT_MARKERS):
        raise EavssError(f"--out {o} is a folder eavss did not write (no {' / '.join(OUTPUT_MARKERS)}); --overwrite "
                         "replaces only eavss outputs: choose a new --out")


def check_not_inside(out: str | os.PathLike, *inputs: str | os.PathLike | None,
                     may_hold_out: tuple[str | os.PathLike | None, ...] = (), what: str = "--out") -> None:
    """The one input/output rule of every command: an output folder may not be, contain, or lie
    inside an input (a model folder or file, the data folder, the model cache, a ``--from``
    folder). Replacing such an output with ``--overwrite`` would delete the input, and writing
    inside it would change it. The exception is a results folder named in ``may_hold_out``
    (``eavss prune --from runs/x --out runs/x/pruned``): its report is read, not changed.

    ``what`` names the output in the message (``--out``, ``work_dir``).

    Raises:
        EavssError: ``out`` overlaps an existing input.
    """
    o = Path(out).expanduser().resolve()
    holders = {Path(p).expanduser().resolve() for p in may_hold_out if p}
    for inp in (*inputs, *may_hold_out):
        if not inp:
            continue
        i = Path(inp).expanduser()
        if not i.exists():
            continue
        i = i.resolve()
        if o == i or o in i.parents:
            raise EavssError(f"{what} {o} is or contains the input {i}; --overwrite would delete it; "
                             "choose another output folder")
        if i in o.parents and i not in holders:
            raise EavssError(f"{what} {o} lies inside the input {i}; writing there would change it; "
                             "choose an output folder outside it")


# -- one writer per output folder ---------------------------------------------------------------

_LOCKS: dict[Path, int] = {}


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def lock_out_dir(out: str | os.PathLike) -> None:
    """Take the exclusive writer's lock of an output folder for this process, or refuse.

    The lock is ``fcntl.flock`` on the sibling file ``.NAME.lock``: the operating system drops it
    when the process ends, however it ends, so a killed run never leaves a stale lock. Re-entrant
    within one process. With the lock held, leftovers of killed runs of the same ``--out``
    (``.NAME.*.partial``, ``.NAME.old-*``) are removed: no other process can be writing them.

    Raises:
        EavssError: another process holds the lock (it is writing the same ``--out``), or the
        folder's parent cannot be written.
    """
    import fcntl

    out = Path(out).expanduser().resolve()
    if out in _LOCKS:
        return
    lock = _lock_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as e:  # e.g. /proc/x: os.access says yes to root, the file system says no
        raise EavssError(f"cannot write the output folder {out} ({e.strerror or e}); choose a writable --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
        finally:
            os.close(fd)
        raise EavssError(f"another eavss run (pid {holder}) is writing {out}; wait for it to finish or choose "
                         "another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _LOCKS[out] = fd
    for stale in [*out.parent.glob(f".{glob_escape(out.name)}.*.partial"), *out.parent.glob(f".{glob_escape(out.name)}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    import glob

    return glob.escape(name)


def unlock_out_dir(out: str | os.PathLike | None = None) -> None:
    """Release the lock of ``out`` (every lock this process holds when None)."""
    import fcntl

    targets = list(_LOCKS) if out is None else [Path(out).expanduser().resolve()]
    for o in targets:
        fd = _LOCKS.pop(o, None)
        if fd is None:
            continue
        with contextlib.suppress(OSError):
            os.unlink(_lock_path(o))
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder atomically.

    Yields a temporary sibling folder; on success it replaces ``out`` (an existing ``out`` is
    removed only then, and only when ``overwrite``); on an error in the ``with`` body the temporary
    folder is deleted and ``out`` is left as it was. The folder gets the permissions the umask
    gives a new folder, and the writer's lock of ``out`` (:func:`lock_out_dir`) is held until the
    end.

    A write failure (a full disk, a folder that became read-only: ``OSError``) does not lose the
    results: what was written is moved to a folder in the system's temporary directory, and the
    one-line error says where.

    Raises:
        EavssError: see :func:`check_out_dir` and :func:`lock_out_dir`; a write failure.
    """
    out = check_out_dir(out, overwrite)
    lock_out_dir(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        follow_umask(tmp, folder=True)
        try:
            yield tmp
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except OSError as e:
            kept = _keep(tmp, out.name)
            raise EavssError(f"could not write {out} ({e.strerror or e}); "
                             + (f"what was written is kept in {kept}" if kept else "nothing could be kept")) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        unlock_out_dir(out)


def _keep(tmp: Path, name: str) -> Path | None:
    """Move a partly written output folder to the system temporary directory (None if impossible)."""
    if not tmp.exists():
        return None
    try:
        dest = Path(tempfile.mkdtemp(prefix=f"eavss-{name}-"))
        for item in tmp.iterdir():
            shutil.move(str(item), dest / item.name)
        shutil.rmtree(tmp, ignore_errors=True)
        return dest
    except OSError:
        return tmp
