"""Where the offline datasets live.

Resolution order: the ``--data-dir`` option, the ``EAVSS_DATA_DIR`` environment variable, then
``shared/data`` beside the current folder or beside any of its parents (the layout of this
project's workspace, ``../shared/data`` from the repository root).
"""

from __future__ import annotations

import os
from pathlib import Path

from eavss.errors import EavssError

ENV_VAR = "EAVSS_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the dataset root folder.

    Raises:
        EavssError: the given or found folder does not exist.
    """
    if data_dir:
        p = Path(data_dir).expanduser()
        if not p.is_dir():
            raise EavssError(f"data dir {p} does not exist; pass --data-dir pointing at the folder that holds wikitext2/, squad/, sst2/ ...")
        return p.resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise EavssError(f"{ENV_VAR}={env} does not exist; set it to the folder that holds wikitext2/, squad/, sst2/ ...")
        return p.resolve()
    here = Path.cwd().resolve()
    for base in (here, *here.parents):
        for cand in (base / "shared" / "data", base.parent / "shared" / "data"):
            if cand.is_dir():
                return cand
    raise EavssError(f"no dataset folder found; pass --data-dir DIR or set {ENV_VAR}=DIR (the folder with wikitext2/, squad/, sst2/ ...)")


def data_file(data_dir: str | os.PathLike | None, relative: str) -> Path:
    """Path of one dataset file under the data root.

    Raises:
        EavssError: the file is missing.
    """
    root = resolve_data_dir(data_dir)
    p = root / relative
    if not p.exists():
        raise EavssError(f"dataset file {p} is missing; check --data-dir ({root})")
    return p
