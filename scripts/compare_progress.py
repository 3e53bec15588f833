"""The retention table of an `eavss compare` run that has not finished yet, read from its work folder.

`eavss compare` keeps every finished step (the original's evaluation, the healed unpruned control,
each metric's pruned -- and healed -- model) in ``OUT.work`` until the run ends, and resumes from
there when the same command runs again. This script prints, from those files alone (no model,
no GPU), the rows finished so far: removed layers, each task's primary metric, mean retention
with its paired bootstrap interval, and with ``--heal`` the same after healing, against the
original and against the unpruned model healed with the same budget. The ranking by ground-truth
cost, the rank correlations and the figure need the finished report (they are computed at the end).

Run:
    python scripts/compare_progress.py runs/compare.work            # markdown on stdout
    python scripts/compare_progress.py runs/compare.work --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_TASK_METRIC = {"ppl": "ppl", "ptb": "ptb", "squad": "F1", "sciq": "acc", "sst2": "acc", "wikitext2": "word ppl"}


class NothingYet(Exception):
    """A work folder of `eavss compare` in which no step has finished."""


def _fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _load(work: Path) -> dict:
    index_file = work / "steps.json"
    if not index_file.is_file():
        if (work / "fingerprint.json").is_file():
            raise NothingYet(f"{work}: no step of the run has finished yet (the original model's evaluation comes first)")
        _fail(f"{work} is not the work folder of an `eavss compare` run (no steps.json); pass OUT.work")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        steps = {}
        for k, f in index.items():
            if (work / "steps" / f).is_file():  # a step file lost: that step is simply not shown (the run redoes it)
                steps[k] = json.loads((work / "steps" / f).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(f"{work} holds a damaged file ({e}); `eavss compare ... --restart` starts the run over")
    if "original" not in steps:
        raise NothingYet(f"{work}: the original model's evaluation has not finished yet; nothing to show")
    return steps


def _primary(result: dict) -> float:
    return result["metrics"][result["primary_metric"]]


def _fmt_mean(block: dict) -> str:
    m = block["mean_retention"]
    lo, hi = m.get("ci") or (None, None)
    return f"{m['mean_pct']:.1f}" + (f" [{lo:.1f}, {hi:.1f}]" if lo is not None else "")


def rows_of(steps: dict) -> dict:
    """``{"original": {task: value}, "healed_unpruned": {...} | None, "rows": [...]}`` from the steps."""
    original = steps["original"]["results"]
    tasks = list(original)
    out = {"tasks": tasks, "n_items": {t: original[t]["n_samples"] for t in tasks},
           "original": {t: _primary(original[t]) for t in tasks}, "healed_unpruned": None, "rows": []}
    if "healed_unpruned" in steps:
        h = steps["healed_unpruned"]["results"]
        out["healed_unpruned"] = {t: _primary(h[t]) for t in tasks}
    for key, step in steps.items():
        if not key.startswith("row."):
            continue
        name, _, removed = key[4:].rpartition(".removed=")
        e = step["entry"]
        row = {"row": name, "removed": [int(x) for x in removed.split(",") if x],
               "params_kept_pct": e["params_kept_pct"],
               "pruned": {t: e["retention"][t]["pruned"] for t in tasks},
               "retention_pct": {t: e["retention"][t]["retention_pct"] for t in tasks},
               "mean_retention": e["mean_retention"], "seconds": step["seconds"]}
        if "healing" in e:
            hv = e["healing"]
            row["healed"] = {t: hv["vs_original"]["retention"][t]["pruned"] for t in tasks}
            row["healed_vs_original"] = hv["vs_original"]["mean_retention"]
            row["healed_vs_healed_unpruned"] = hv["vs_healed_unpruned"]["mean_retention"]
        out["rows"].append(row)
    return out


def markdown(t: dict) -> str:
    tasks = t["tasks"]
    head = " | ".join(f"{x} {_TASK_METRIC.get(x, '')}".strip() for x in tasks)
    n = ", ".join(f"{x} {t['n_items'][x]}" for x in tasks)
    lines = [f"Items per task: {n}. Retention: mean over tasks of the chance-corrected retention, paired 95 % "
             "bootstrap interval.", "",
             f"| model | removed | {head} | mean retention % |", "|---|---|" + "---|" * len(tasks) + "---|"]
    lines.append("| original | – | " + " | ".join(f"{t['original'][x]:.3g}" for x in tasks) + " | 100 |")
    for r in t["rows"]:
        lines.append(f"| {r['row']} | {r['removed']} | " + " | ".join(f"{r['pruned'][x]:.3g}" for x in tasks)
                     + f" | {_fmt_mean(r)} |")
    if t["healed_unpruned"] is not None:
        lines += ["", "After healing (same budget for every model):", "",
                  f"| model | {head} | retention vs original % | vs healed unpruned % |",
                  "|---|" + "---|" * len(tasks) + "---|---|"]
        lines.append("| unpruned, healed | " + " | ".join(f"{t['healed_unpruned'][x]:.3g}" for x in tasks)
                     + " | – | 100 |")
        for r in t["rows"]:
            if "healed" not in r:
                continue
            lines.append(f"| {r['row']} | " + " | ".join(f"{r['healed'][x]:.3g}" for x in tasks)
                         + f" | {_fmt_mean({'mean_retention': r['healed_vs_original']})}"
                         + f" | {_fmt_mean({'mean_retention': r['healed_vs_healed_unpruned']})} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="the work folder of an `eavss compare` run (OUT.work)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    try:
        t = rows_of(_load(a.work))
    except NothingYet as e:
        print(e)
        return 0
    print(markdown(t))
    if a.json:
        a.json.write_text(json.dumps(t, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
