"""What every report renderer shares: number formatting, the atomic figure writer, the timings table."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def format_number(x: Any, nd: int = 4, exp_digits: int = 3) -> str:
    """Table cell for a value: "–" for None, yes/blank for bools, ints as is, floats with ``nd``
    decimals or in exponent form (``exp_digits``) when very small or large."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else ""
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.{exp_digits}e}"
        return f"{x:.{nd}f}"
    return str(x)


def format_ci(ci: Any, nd: int = 2) -> str:
    """`` [lo, hi]`` for an interval (a two-item list), or "" when there is none or it is undefined
    (NaN, as :func:`eavss.scores.agreement.spearman_ci` gives for fewer than 4 items)."""
    if not ci or len(ci) != 2 or any(v is None or v != v for v in ci):
        return ""
    return f" [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically (temporary file, then rename) and close it."""
    plt = pyplot()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        from eavss.io import follow_umask

        follow_umask(tmp)
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def timings_table(timings: dict[str, float]) -> str:
    """Markdown table of seconds per phase (a list -- e.g. the earlier sittings of a resumed run -- as its items)."""
    def cell(v) -> str:
        return ", ".join(f"{x:.1f}" for x in v) if isinstance(v, (list, tuple)) else f"{v:.1f}"

    return "| phase | seconds |\n|---|---|\n" + "".join(f"| {k} | {cell(v)} |\n" for k, v in timings.items())


def header_lines(report: dict) -> list[str]:
    """The model / code lines every report.md starts with."""
    m = report.get("model") or {}
    code = report.get("code") or {}
    commit = code.get("git_commit")
    out = [f"- model: `{m.get('model_id')}` ({m.get('architecture')}, {m.get('num_layers')} decoder layers, "
           f"dtype {m.get('dtype')}, sha256 `{str(m.get('file_sha256'))[:16]}…`)"]
    version = code.get("eavss") or "(version unknown: not installed)"
    out.append(f"- code: eavss {version}" + (f", commit `{commit[:12]}`" + (" (uncommitted changes)" if code.get("dirty") else "")
                                                       if commit else "") + f"; report schema {report.get('schema_version')}")
    return out
