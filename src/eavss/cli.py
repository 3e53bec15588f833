"""The ``eavss`` command line.

Every sub-command takes ``--config FILE.yaml`` and trailing dotted overrides (``key=value``, e.g.
``prune.fraction=0.3 eval.limits.squad=50``); explicit flags win over both. ``eavss config``
prints the resolved configuration with every key and default. User errors print one line
(``eavss: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from eavss.errors import EavssError

# flag dest -> dotted config key
COMMON = {
    "model": "model.name", "dtype": "model.dtype", "device": "model.device", "cache_dir": "model.cache_dir",
    "data_dir": "data_dir", "out": "out", "seed": "seed", "threads": "threads",
}
SCORE = {
    "calib": "calibration.dataset", "num_samples": "calibration.num_samples",
    "max_length": "calibration.max_length", "calib_batch_size": "calibration.batch_size",
    "packing": "calibration.packing", "site": "stats.site", "sparsity_mode": "stats.sparsity.mode",
    "tau": "stats.sparsity.tau", "epsilon": "stats.sparsity.epsilon", "variance": "scores.variance",
    "normalisation": "scores.normalisation",
}
PRUNE = {
    "rule": "prune.rule", "fraction": "prune.fraction", "mass": "prune.mass", "score": "prune.score",
    "protect_first": "prune.protect_first", "protect_last": "prune.protect_last",
}
EVAL = {"batch_size": "eval.batch_size"}

HELP = {
    "model": "built-in alias (smollm2-135m [default], gemma3-270m, qwen2.5-0.5b), hub id, local HF folder or .gguf file",
    "dtype": "float32 (default; fastest on CPU) | bfloat16 | float16 | auto",
    "device": "cpu (default), cuda, cuda:1, ...",
    "cache_dir": "where converted GGUF models are cached (default $EAVSS_CACHE or ~/.cache/eavss/models)",
    "data_dir": "folder with the offline datasets (default $EAVSS_DATA_DIR, else ../shared/data)",
    "out": "output folder (refused if it exists and is not empty, unless --overwrite)",
    "seed": "seed for sampling and torch (default 0)",
    "threads": "torch CPU threads (default: torch's choice)",
    "calib": "calibration set: wikitext2 (default), ptb, sst2, text:PATH, jsonl:PATH:FIELD",
    "num_samples": "calibration sequences (default 256)",
    "max_length": "tokens per calibration sequence (default 256)",
    "calib_batch_size": "calibration batch size (default 8)",
    "packing": "documents (one text per sequence, padded; default) | packed (EOS-joined chunks)",
    "site": "capture site: resid_post (decoder layer output; default) | resid_delta (layer output minus input: the block update) | mlp_act (MLP activation output)",
    "sparsity_mode": "near-zero rule: relative (|a| < tau*RMS of the token; default) | absolute (|a| < epsilon)",
    "tau": "relative near-zero threshold (default 0.01)",
    "epsilon": "absolute near-zero threshold (default 1e-5, the official code's)",
    "variance": "element (all masked elements; default) | token | pooled (official-code mean-pool variance)",
    "normalisation": "across-layer normalisation: sum (default) | max | none",
    "rule": "count (remove floor(fraction * candidate layers); default) | mass (cumulative normalised score <= mass)",
    "fraction": "share of the candidate (unprotected) layers to remove with rule=count: floor(fraction * candidates) (default 0.25)",
    "mass": "share of the normalised score to remove with rule=mass (default 0.25)",
    "score": "score to prune by: avss (default), variance, density, block_influence",
    "protect_first": "never remove the first N layers (default 0)",
    "protect_last": "never remove the last N layers (default 0)",
    "batch_size": "evaluation batch size (default 8)",
}


def _add(p: argparse.ArgumentParser, table: dict, types: dict | None = None) -> None:
    types = types or {}
    for dest in table:
        p.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None, type=types.get(dest, str),
                       help=HELP.get(dest))


TYPES = {"seed": int, "threads": int, "num_samples": int, "max_length": int, "calib_batch_size": int,
         "tau": float, "epsilon": float, "fraction": float, "mass": float, "protect_first": int,
         "protect_last": int, "batch_size": int, "limit": int}


def _base(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see `eavss config` for every key)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add(p, COMMON, TYPES)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. prune.fraction=0.3")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all sub-commands."""
    ap = argparse.ArgumentParser(
        prog="eavss",
        description="Layer importance (AVSS) for decoder-only LMs: score every decoder layer, remove the least "
                    "important, measure what is kept. Default model: SmolLM2-135M-Instruct from PyPI.",
        epilog="Each sub-command has its own --help. Definitions: docs/method.md.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="score -> prune -> evaluate original and pruned -> report (the main job)",
                       description="The main job: per-layer statistics and AVSS, remove the least important layers, "
                                   "evaluate original and pruned model, write report.json/report.md/avss.png and the "
                                   "pruned HF model (pruned/) into --out.")
    _base(p)
    _add(p, SCORE, TYPES)
    _add(p, PRUNE, TYPES)
    _add(p, EVAL, TYPES)
    p.add_argument("--tasks", help="comma-separated evaluation tasks (default ppl,wikitext2,squad,sst2)")
    p.add_argument("--limit", type=int, help="cap every evaluation task at N items: articles, questions, sentences; for ppl N windows of eval.ppl_context_length tokens (default: per-task limits in the config)")
    p.add_argument("--no-save-model", action="store_true", help="do not write the pruned model folder")

    p = sub.add_parser("score", help="per-layer activation statistics and AVSS",
                       description="Run the calibration set through the model with hooks on every decoder layer and "
                                   "write per-layer variance, sparsity and AVSS (report.json, report.md, avss.png). "
                                   "Several devices: `torchrun --nproc_per_node=N -m eavss.cli score --device cuda ...` "
                                   "(or --device cpu: gloo) gives each process a shard of the calibration batches, "
                                   "all-reduces the sums (results equal one process's) and rank 0 writes; the same "
                                   "for `run`, whose pruning and evaluation then run on rank 0.")
    _base(p)
    _add(p, SCORE, TYPES)

    p = sub.add_parser("prune", help="remove the least important layers; writes a HF model folder",
                       description="Read the scores of an `eavss score`/`eavss run` folder, remove layers from the "
                                   "model that was scored there (--model is ignored) and save a model that "
                                   "AutoModelForCausalLM.from_pretrained loads with no custom code.")
    _base(p)
    p.add_argument("--from", dest="from_dir", required=True, help="output folder of `eavss score` or `eavss run`")
    _add(p, PRUNE, TYPES)

    p = sub.add_parser("eval", help="evaluate a model on the retention tasks",
                       description="Evaluate a model (e.g. a pruned folder) on ppl (token-level WikiText-2 perplexity), "
                                   "wikitext2 (lm-eval word perplexity), squad (EM/F1), sst2 (accuracy).")
    _base(p)
    _add(p, EVAL, TYPES)
    p.add_argument("--tasks", help="comma-separated tasks (default ppl,wikitext2,squad,sst2)")
    p.add_argument("--limit", type=int, help="cap every task at N items (ppl: N windows of eval.ppl_context_length tokens)")

    p = sub.add_parser("config", help="print the resolved configuration (all keys, defaults and overrides)")
    _base(p)
    for name, (add_parser, _) in plugin_commands().items():
        add_parser(sub)
    return ap


def plugin_commands() -> dict:
    """Sub-commands that live beside the AVSS core: ``name -> (add_parser(sub), run(args) -> int)``.

    Each module in :data:`PLUGIN_MODULES` exposes ``COMMAND``, ``add_parser`` and ``run``.
    """
    import importlib

    out = {}
    for mod_name in PLUGIN_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name and mod_name.startswith(e.name):
                continue  # plugin not present in this build
            raise
        out[mod.COMMAND] = (mod.add_parser, mod.run)
    return out


PLUGIN_MODULES = ("eavss.hallucination.cli", "eavss.benchmarks_cli")


def resolve(args: argparse.Namespace):
    """Config from defaults, --config, overrides and flags."""
    from eavss.config import load_config

    overrides = list(args.overrides or [])
    tables = {**COMMON, **SCORE, **PRUNE, **EVAL}
    for dest, key in tables.items():
        v = getattr(args, dest, None)
        if v is not None:
            overrides.append(f"{key}={v}")
    cfg = load_config(args.config, overrides)
    if getattr(args, "overwrite", False):
        cfg.overwrite = True
    if getattr(args, "no_progress", False):
        cfg.progress = False
    tasks = getattr(args, "tasks", None)
    if tasks is not None:
        cfg.eval.tasks = list(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
        if not cfg.eval.tasks:
            raise EavssError("--tasks is empty; pass e.g. --tasks ppl,wikitext2,squad,sst2")
    limit = getattr(args, "limit", None)
    if limit is not None:
        if limit < 1:
            raise EavssError(f"--limit must be >= 1, got {limit}")
        cfg.eval.limits = {t: limit for t in cfg.eval.tasks}
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eavss`` console script. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import signal

    def _term(signum, frame):  # SIGTERM unwinds like Ctrl-C, so atomic outputs are cleaned up
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    plugins = plugin_commands()
    if args.command in plugins:
        try:
            return plugins[args.command][1](args)
        except EavssError as e:
            print(f"eavss: error: {e}", file=sys.stderr)
            return 2
    try:
        cfg = resolve(args)
        if args.command == "config":
            from eavss.config import dump_config

            sys.stdout.write(dump_config(cfg))
            return 0
        from eavss.recipes import avss

        # --- torchrun (eavss.distributed): `torchrun --nproc_per_node=N -m eavss.cli score|run ...`
        # runs one process per device; calibration batches are sharded and their sums all-reduced.
        from eavss import distributed as edist

        if args.command in ("score", "run") and edist.env_rank()[1] > 1:
            cfg.model.device = edist.device_for_rank(cfg.model.device)
            edist.init_from_env(cfg.model.device)
            cfg.progress = cfg.progress and edist.is_main()
        # --- end torchrun
        if args.command == "run":
            rep = avss.run(cfg, save_pruned=not args.no_save_model)
            _summary(rep, cfg.out)
        elif args.command == "score":
            rep = avss.score(cfg)
            _summary(rep, cfg.out)
        elif args.command == "prune":
            rep = avss.prune(cfg, args.from_dir)
            pr = rep["pruning"]
            print(f"removed layers {pr['removed']} ({pr['num_layers_before']} -> {pr['num_layers_after']}); "
                  f"model saved to {cfg.out}")
        elif args.command == "eval":
            rep = avss.evaluate_cmd(cfg)
            _summary(rep, cfg.out)
    except EavssError as e:
        print(f"eavss: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eavss: interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        from eavss import distributed as edist  # --- torchrun: leave the process group

        edist.shutdown()
    return 0


def _summary(report: dict, out: str) -> None:
    """Print report.md to the terminal and where the outputs are."""
    from eavss import distributed as edist
    from eavss.report.render import render_markdown

    if not edist.is_main():  # --- torchrun: rank 0 alone prints
        return

    print(render_markdown(report))
    print(f"outputs: {out}/report.json, {out}/report.md" + (f", {out}/avss.png" if report.get("statistics") else ""))


if __name__ == "__main__":
    sys.exit(main())
