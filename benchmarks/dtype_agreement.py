"""Do bfloat16 statistics agree with float32 ones? (Accumulators are float32/float64 either way.)

Runs the same calibration batches through the default model loaded in float32 and in bfloat16
(and optionally float16), collects statistics with the normal collector, and compares per-layer
variance, sparsity, block influence and the AVSS ranking (Spearman rank correlation of the AVSS
scores, and whether the layers a 25 % prune would remove are the same).

    .venv/bin/python benchmarks/dtype_agreement.py --out benchmarks/results/dtype_agreement.json

On this CPU bfloat16 matrix products are much slower than float32, so the default is a modest
calibration set (32 WikiText-2 validation documents of up to 256 tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    from eavss.data.calibration import calibration_batches
    from eavss.models.loading import load_model
    from eavss.prune.selection import select_layers
    from eavss.scores.registry import ScoreOptions, compute_scores
    from eavss.stats import collect_statistics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    dtypes = [d.strip() for d in args.dtypes.split(",")]
    res = {"model": args.model, "device": args.device, "num_samples": args.num_samples, "max_length": args.max_length,
           "torch_threads": torch.get_num_threads(), "per_dtype": {}}
    scores = {}
    for dt in dtypes:
        lm = load_model(args.model, dtype=dt, device=args.device)
        batches, info = calibration_batches(lm.tokenizer, "wikitext2", args.num_samples, args.max_length,
                                            args.batch_size, "documents", 0, None)
        t0 = time.perf_counter()
        stats, cinfo = collect_statistics(lm.model, batches, progress=False)
        secs = time.perf_counter() - t0
        sc, _ = compute_scores(stats, ScoreOptions())
        scores[dt] = {"avss": np.asarray(sc["avss"]["avss"], float),
                      "variance": stats.element_variance()[0], "sparsity": stats.sparsity()[0],
                      "block_influence": stats.block_influence()[0],
                      "removed": select_layers(list(sc["avss"]["score"]), "count", 0.25, 0.25, 0, 0)}
        res["per_dtype"][dt] = {"seconds": secs, "tokens": cinfo["num_tokens"], "removed_25pct": scores[dt]["removed"],
                                "avss": scores[dt]["avss"].tolist()}
        print(f"{dt}: {secs:.1f} s, {cinfo['num_tokens']} tokens, remove {scores[dt]['removed']}", flush=True)
        del lm
    ref = dtypes[0]
    res["comparison"] = {}
    for dt in dtypes[1:]:
        c = {"avss_spearman": spearman(scores[ref]["avss"], scores[dt]["avss"]),
             "same_removed_layers": sorted(scores[ref]["removed"]) == sorted(scores[dt]["removed"])}
        for k in ("variance", "sparsity", "block_influence", "avss"):
            a, b = scores[ref][k], scores[dt][k]
            c[f"{k}_max_rel_diff"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
        res["comparison"][f"{dt}_vs_{ref}"] = c
        print(f"{dt} vs {ref}: {json.dumps(c)}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
