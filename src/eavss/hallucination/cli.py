"""``eavss hallucination``: the plugin sub-command (auto-discovered by :mod:`eavss.cli`).

Flags win over ``key=value`` overrides, which win over ``--config``, which wins over defaults
(:class:`eavss.hallucination.config.HallucinationConfig`).
"""

from __future__ import annotations

import argparse
import sys

from eavss.errors import EavssError

COMMAND = "hallucination"

# flag dest -> dotted config key
FLAGS = {
    "model": "model.name", "dtype": "model.dtype", "device": "model.device", "cache_dir": "model.cache_dir",
    "data_dir": "data_dir", "out": "out", "seed": "seed", "threads": "threads", "top_k": "scores.top_k",
    "batch_size": "generation.batch_size", "max_new_tokens": "generation.max_new_tokens",
    "site": "stats.site", "hsav": "scores.hsav", "hss": "scores.hss", "combine": "scores.combine",
    "pooling": "scores.pooling", "judge": "judge.match",
}
TYPES = {"seed": int, "threads": int, "top_k": int, "batch_size": int, "max_new_tokens": int}
HELP = {
    "model": "built-in alias (smollm2-135m [default], gemma3-270m, qwen2.5-0.5b), local HF folder or .gguf file",
    "dtype": "float32 (default; fastest on CPU) | bfloat16 | float16",
    "device": "cpu (default), cuda, cuda:1, ...",
    "cache_dir": "where converted GGUF models are cached",
    "data_dir": "folder with the offline datasets (default $EAVSS_DATA_DIR, else ../shared/data)",
    "out": "output folder (default runs/hallucination; refused if not empty, unless --overwrite)",
    "seed": "seed of the splits, option order, bootstrap, permutations and probe folds (default 0)",
    "threads": "torch CPU threads (default: torch's choice)",
    "top_k": "number of hallucination-prone layers listed (default 5)",
    "batch_size": "generation batch size (default 32)",
    "max_new_tokens": "answer length cap in tokens (default 16)",
    "site": "capture site for HSAV/HSS: resid_post (default) | mlp_act",
    "hsav": "HSAV definition: log_ratio (default) | rel_diff | cohens_d",
    "hss": "HSS definition: log_odds_ratio (default) | diff | cohens_d",
    "combine": "EAVSS combination: mean (default) | product | geometric | hsav_only | hss_only",
    "pooling": "across sources: stratified (default) | stratified_abs | pooled",
    "judge": "answer judge: exact (default) | contains (alias inside the answer, negation-guarded)",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``hallucination`` on the ``eavss`` sub-parser set."""
    p = subparsers.add_parser(
        COMMAND, help="find the layers where hallucination lives (HSAV, HSS, EAVSS + probe check)",
        description="Label answers as hallucinated or truthful (teacher-forced TruthfulQA/HaluEval pairs; the model's own "
                    "greedy answers to NQ-open, TriviaQA, SciQ, judged against gold answers), collect per-layer "
                    "activation variance and sparsity of the answer tokens per class, score each layer (HSAV, HSS, "
                    "EAVSS), check the ranking against per-layer linear-probe AUROC, and write report.json, report.md, "
                    "eavss.png, separability.png, splits.json and samples.jsonl into --out.",
        epilog="Definitions: docs/hallucination.md. Example: eavss hallucination --sources truthfulqa,nq_open --limit 50 "
               "--out runs/h scores.combine=product")
    p.add_argument("--config", help="YAML config file (keys as in report.json's config section)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--sources", help="comma-separated: truthfulqa,halueval,nq_open,triviaqa,sciq (default all five)")
    p.add_argument("--limit", type=int, help="cap every source at N questions (default: per-source limits in the config)")
    p.add_argument("--with-avss", action="store_true", help="multiply EAVSS by the layer's normalised AVSS")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probes (no agreement check)")
    for dest, key in FLAGS.items():
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, type=TYPES.get(dest, str),
                       help=HELP.get(dest, key))
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. scores.top_k=3 limits.sciq=50")
    return p


def resolve(args: argparse.Namespace):
    """The :class:`HallucinationConfig` of parsed arguments."""
    from eavss.hallucination.config import load_hallucination_config

    overrides = list(args.overrides or [])
    for dest, key in FLAGS.items():
        v = getattr(args, dest, None)
        if v is not None:
            overrides.append(f"{key}={v}")
    if args.sources:
        overrides.append(f"sources=[{','.join(s.strip() for s in args.sources.split(',') if s.strip())}]")
    cfg = load_hallucination_config(args.config, overrides)
    if args.limit is not None:
        if args.limit < 1:
            raise EavssError(f"--limit must be >= 1, got {args.limit}")
        cfg.limits = {s: args.limit for s in cfg.sources}
    if args.overwrite:
        cfg.overwrite = True
    if args.no_progress:
        cfg.progress = False
    if args.with_avss:
        cfg.scores.with_avss = True
    if args.no_probe:
        cfg.probe.enabled = False
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run the sub-command; returns the exit status (user errors raise :class:`EavssError`)."""
    from eavss.hallucination.recipe import run as run_recipe
    from eavss.hallucination.report import summary

    cfg = resolve(args)
    try:
        report = run_recipe(cfg)
    except KeyboardInterrupt:
        print("eavss: interrupted; nothing was written", file=sys.stderr)
        return 130
    for line in summary(report):
        print(line)
    print(f"outputs: {cfg.out}/report.json, report.md, eavss.png, separability.png, splits.json, samples.jsonl "
          f"({report['timings']['total']:.0f} s)")
    return 0
