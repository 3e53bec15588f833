"""Which reading of AVSS tracks the ground truth? Every documented reading on one model.

For each capture site (``resid_post``, ``resid_delta``, ``mlp_act``) and near-zero rule (relative
``|a| < 0.01 RMS(token)``, the official absolute ``|a| < 1e-5``), and -- when the statistics
engine supports it -- with and without massive-activation tokens excluded, one statistics pass
over the calibration sample; from its sums every variance definition (``element``, ``token``,
``pooled``) gives an AVSS. Each AVSS, and the field's scores from the same passes (block
influence; variance and density alone), is held against the ground truth: the calibration-loss
increase when the layer alone is skipped (:func:`eavss.scores.ablation.layer_skip_loss`).
Printed and written as JSON: Spearman with the ground truth, the summed skip cost of the k
lowest layers against the k cheapest, and whether the sparsity term carries information.

Run (CPU, ~5-15 min per model):
    .venv/bin/python scripts/avss_readings.py --model smollm2-135m --out runs/readings_smollm2.json
    .venv/bin/python scripts/avss_readings.py --model gemma3-270m --out runs/readings_gemma3.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--num-samples", type=int, default=64, help="calibration sequences for the statistics")
    ap.add_argument("--gt-samples", type=int, default=32, help="calibration sequences for the ground truth")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--massive", type=float, nargs="*", default=[20.0],
                    help="massive-token multiples to try besides 'off' (if the engine supports it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from eavss.data.calibration import calibration_batches, load_calibration_texts
    from eavss.models.loading import load_model
    from eavss.scores.ablation import layer_skip_loss
    from eavss.scores.agreement import rank_agreement, removal_cost
    from eavss.scores.avss import avss_scores
    from eavss.stats import SparsityRule, collect_statistics

    torch.manual_seed(args.seed)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    texts = load_calibration_texts("wikitext2")
    batches, cal = calibration_batches(lm.tokenizer, "wikitext2", args.num_samples, args.max_length, 8,
                                       seed=args.seed, texts=texts)
    gt_batches, gt_cal = calibration_batches(lm.tokenizer, "wikitext2", args.gt_samples, args.max_length, 8,
                                             seed=args.seed, texts=texts)
    t0 = time.perf_counter()
    gt = layer_skip_loss(lm.model, gt_batches, progress=True)
    gt_secs = time.perf_counter() - t0
    delta = np.asarray(gt["delta"])
    L = len(delta)
    k = math.floor(args.fraction * L + 1e-9)

    def judge(score) -> dict:
        ra = rank_agreement(score, delta, k)
        rc = removal_cost(score, delta, k)
        return {"spearman": ra["spearman"], "p": ra["p_value"], "removed": rc["removed"], "cost": rc["cost"],
                "oracle_cost": rc["oracle_cost"], "overlap": rc["overlap"]}

    supports_massive = "massive" in inspect.signature(collect_statistics).parameters
    massive_values = [None] + (list(args.massive) if supports_massive else [])
    rows = []
    for site in ("resid_post", "resid_delta", "mlp_act"):
        for rule_name, rule in (("relative 0.01", SparsityRule(mode="relative", tau=0.01)),
                                ("absolute 1e-5", SparsityRule(mode="absolute", epsilon=1e-5))):
            for massive in massive_values:
                kw = {"massive": massive} if supports_massive else {}
                t0 = time.perf_counter()
                stats, info = collect_statistics(lm.model, batches, site=site, rule=rule, progress=False, **kw)
                secs = time.perf_counter() - t0
                sp = stats.sparsity()[0]
                nz = stats.sums[0, :, 4] if stats.sums.ndim == 3 else None
                base = {"site": site, "sparsity_rule": rule_name, "massive": massive, "seconds": round(secs, 1),
                        "sparsity_min": float(sp.min()), "sparsity_max": float(sp.max()),
                        "near_zero_min_count": float(np.min(nz)) if nz is not None else None}
                for var in ("element", "token", "pooled"):
                    a = avss_scores(stats.variance(var)[0], sp, stats.n_elements()[0])
                    rows.append({**base, "score": f"avss[{var}]", **judge(a["avss"])})
                    rows.append({**base, "score": f"variance[{var}]", **judge(stats.variance(var)[0])})
                rows.append({**base, "score": "density", **judge(1.0 - sp)})
                if site == "resid_post" and rule_name.startswith("relative"):
                    rows.append({**base, "score": "block_influence", **judge(stats.block_influence()[0])})
                print(f"{site:12s} {rule_name:14s} massive={massive}: avss[element] rho="
                      f"{rows[-7 if site != 'resid_post' or not rule_name.startswith('relative') else -8]['spearman']:.2f}",
                      flush=True)
    rows.sort(key=lambda r: -(r["spearman"] if r["spearman"] is not None and np.isfinite(r["spearman"]) else -9))
    out = {"model": args.model, "num_layers": L, "k": k, "calibration": cal, "ground_truth": {
        "num_sequences": gt_cal["num_samples"], "num_tokens": gt["num_tokens"], "base_loss": gt["base_loss"],
        "delta": delta.tolist(), "seconds": gt_secs}, "massive_supported": supports_massive, "readings": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print(f"\nground truth: {gt_cal['num_samples']} sequences, {gt['num_tokens']} tokens; k = {k}")
    print(f"{'score':22s} {'site':12s} {'sparsity':14s} {'massive':8s} {'rho':>6s} {'cost':>7s} {'oracle':>7s} removed")
    for r in rows[:40]:
        print(f"{r['score']:22s} {r['site']:12s} {r['sparsity_rule']:14s} {str(r['massive']):8s} "
              f"{r['spearman']:6.2f} {r['cost']:7.3f} {r['oracle_cost']:7.3f} {r['removed']}")


if __name__ == "__main__":
    main()
