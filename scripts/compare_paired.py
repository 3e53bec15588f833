"""Paired differences in mean retention between the rows of a finished `eavss compare` report.

Reports of schema 2.2 and later hold them (``report["paired"]``, the section "Is one metric's
choice better than another's?" of report.md). For an earlier report this script recomputes them
from the per-item results the report keeps, with the same library functions: every row's
retention against the original (and, with healing, the healed rows' against the healed unpruned
model) on the same items and the same bootstrap resamples, then each row minus the best row and
minus the mean of the random seeds, with the paired 95 % interval.

Run:
    python scripts/compare_paired.py runs/compare/report.json          # markdown on stdout
    python scripts/compare_paired.py runs/compare/report.json --json paired.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def paired_from_report(rep: dict) -> dict:
    """``{"before": paired_rows(...), "healed_vs_healed_unpruned": ... | None}`` recomputed from the
    per-item evaluations in ``rep`` (a compare report dict)."""
    from eavss.recipes.compare_eval import paired_rows, retention_of

    seed = int(rep.get("seed", 0))
    original = rep["evaluation"]["original"]
    healed_ref = ((rep.get("healing") or {}).get("unpruned") or {}).get("evaluation")
    rows = {}
    for name, r in rep["rows"].items():
        ret, mean = retention_of(original, r["evaluation"], seed)
        row = {"seed": r.get("seed"), "mean_retention": mean}
        if healed_ref is not None and r.get("healing"):
            _, hmean = retention_of(healed_ref, r["healing"]["evaluation"], seed)
            row["healing"] = {"vs_healed_unpruned": {"mean_retention": hmean}}
        rows[name] = row
    return {"before": paired_rows(rows),
            "healed_vs_healed_unpruned": paired_rows(rows, "healing.vs_healed_unpruned") if healed_ref else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", help="report.json of `eavss compare`")
    ap.add_argument("--json", default=None, help="also write the differences to this file")
    args = ap.parse_args(argv)
    path = Path(args.report)
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"compare_paired: cannot read {path}: {e}; pass the report.json of an `eavss compare` run",
              file=sys.stderr)
        return 2
    if rep.get("kind") != "compare":
        print(f"compare_paired: {path} is a {rep.get('kind')!r} report, not a compare report", file=sys.stderr)
        return 2
    from eavss.report.compare import paired_section

    paired = rep.get("paired") or paired_from_report(rep)
    print("\n".join(paired_section({"paired": paired})))
    if args.json:
        Path(args.json).write_text(json.dumps(paired, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
