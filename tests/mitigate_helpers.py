"""Helpers of the mitigate tests: a tiny saved model and an `eavss hallucination`-shaped folder for it."""

from __future__ import annotations

import json
from pathlib import Path

SOURCES = ("truthfulqa", "halueval", "nq_open", "triviaqa", "sciq", "wikiqa")


def tiny_model_dir(path: Path, seed: int = 0, num_layers: int = 4) -> Path:
    """A tiny llama (hidden 64) and the tiny tokenizer saved as a HF folder."""
    from eavss.testing.tiny import tiny_model, tiny_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    tiny_model("llama", seed=seed, num_layers=num_layers).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def fake_analysis(folder: Path, model_dir: Path, ranking: list[int] | None = None, probe: list[float] | None = None,
                  sources=SOURCES, fractions=(0.5, 0.25, 0.25), num_layers: int = 4) -> Path:
    """An analysis folder with the keys `eavss mitigate` reads: report.json (kind hallucination: model id and
    sha256, eavss.ranking/top_k/per_layer with probe_auroc) and splits.json (the real split of every source)."""
    from eavss.data.qa import load_source
    from eavss.hallucination.splits import build_splits
    from eavss.models.loading import _safetensors_sha256
    from eavss.report.schema import new_report

    folder.mkdir(parents=True, exist_ok=True)
    L = num_layers
    ranking = ranking if ranking is not None else list(range(L))[::-1]
    probe = probe if probe is not None else [0.5 + 0.01 * i for i in range(L)]
    rep = new_report("hallucination", {"seed": 0}, 0)
    rep["model"] = {"model_id": str(Path(model_dir).resolve()), "file_sha256": _safetensors_sha256(Path(model_dir)),
                    "num_layers": L}
    rep["eavss"] = {"ranking": ranking, "top_k": ranking[:2], "k": 2,
                    "per_layer": [{"layer": i, "eavss": 1.0 / L, "probe_auroc": probe[i]} for i in range(L)]}
    (folder / "report.json").write_text(json.dumps(rep))
    items = {s: load_source(s) for s in sources}
    splits = build_splits(items, 0, fractions, {s: [] for s in sources})
    (folder / "splits.json").write_text(json.dumps(splits))
    return folder


def mitigate_args(analysis: Path, out: Path, *extra: str) -> list[str]:
    """CLI arguments of a fast tiny run: 3 train questions per source, 2 eval items of wikiqa and sciq_mc."""
    return ["mitigate", "--from", str(analysis), "--out", str(out), "--no-progress", "--limit", "3", "--k", "2",
            "eval.tasks=[wikiqa,sciq_mc]", "eval.limits={wikiqa: 2, sciq_mc: 2}", "eval.resamples=50",
            "train.batch_size=2", "data.max_negatives=2", "data.max_new_tokens=4", *extra]
