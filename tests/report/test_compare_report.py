"""``compare.png``: retention bars carry their 95 % intervals where the report has them."""

from __future__ import annotations

import numpy as np


def test_compare_figure_draws_the_retention_intervals(tmp_path, monkeypatch):
    import eavss.report.compare as compare

    figs = []
    monkeypatch.setattr(compare, "save_figure", lambda fig, path: figs.append(fig))
    rows = {
        "block_influence": {"retention": {"sst2": {"retention_pct": 90.0, "ci": [80.0, 97.0]}},
                            "mean_retention": {"mean_pct": 90.0, "ci": [80.0, 97.0]},
                            "score": [3.0, 1.0, 2.0, 0.5], "removed": [3]},
        "random": {"retention": {"sst2": {"retention_pct": 70.0, "ci": None}},
                   "mean_retention": {"mean_pct": 70.0, "ci": [60.0, 75.0]}, "score": None, "removed": [1]},
    }
    report = {"rows": rows, "evaluation": {"tasks": ["sst2"]}, "settings": {"num_layers": 4, "k": 1},
              "model": {"model_id": "tiny"}}
    compare.plot_compare(report, tmp_path / "compare.png")
    ax = figs[0].axes[0]
    from matplotlib.container import ErrorbarContainer

    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # the task and the mean
    segs = [[np.asarray(s) for s in b.lines[2][0].get_segments()] for b in bars]
    # task bars: one interval (random has none); mean bars: both, drawn from lo to hi
    finite = [[s for s in seg if s.size and np.isfinite(s).all()] for seg in segs]
    assert len(finite[0]) == 1 and np.allclose([finite[0][0][0][1], finite[0][0][1][1]], [80.0, 97.0])
    assert sorted(round(s[0][1]) for s in finite[1]) == [60, 80] and sorted(round(s[1][1]) for s in finite[1]) == [75, 97]
