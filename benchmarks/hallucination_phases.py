"""``eavss hallucination`` on a random-weights model of a real shape: seconds per phase, the slowest named.

The command's own pipeline runs (:func:`eavss.recipes.hallucination.run`, handed the model instead
of loading one): data, tokenise, teacher-forced passes, generation with capture, judge, scores
(EAVSS, permutations, bootstrap, variants), probes, surface baselines, report. Only the model is
different: ``shape:NAME`` builds the dimensions of a real model with random weights directly on
the device (the ``load`` phase is that build, not a checkpoint read), with a tokenizer that fits
(its ids must be below the model's vocabulary): by default SmolLM2-135M's (the default model's,
from the converted-model cache), or ``--tokenizer FOLDER``, or ``tiny``.

Random weights make the answers random: generated answers rarely contain a newline, so almost
every answer runs to ``--max-new-tokens`` (the longest generation the real run could do), and their
labels are meaningless (only the timing is). Teacher-forced passes are the real ones.

Limits: the default run's (3,549 samples), ``--scale F`` (every source's default number of questions
times F, at least 1), or ``--limit N`` (every source). Phases print as they end, so a run stopped by
a time limit (SIGINT) still reports the phases it finished and the one it was in (``phases.json``).

Examples::

    # one H200, Llama-3-8B shape, bf16, a quarter of the default limits
    PYTHONPATH=src python3 benchmarks/hallucination_phases.py --model shape:llama3-8b --device cuda \\
        --dtype bfloat16 --tokenizer KIT/tokenizer --data-dir KIT/data --scale 0.25 --out $OUT/hphases

    # this CPU, smoke run
    PYTHONPATH=src .venv/bin/python benchmarks/hallucination_phases.py --model tiny:llama --dtype float32 \\
        --device cpu --threads 1 --limit 4 --out /tmp/hphases --set scores.bootstrap=5 --set scores.permutations=5

Output (``--out``): the command's outputs (report.json, report.md, samples.jsonl, ...) and
``phases.json`` (seconds per phase, shares, the slowest phase, the workload, the command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats_overhead import build_model, machine_info  # noqa: E402

PHASE_ORDER = ["data", "load", "tokenise", "teacher_forced", "generation", "judge", "scores.eavss",
               "scores.permutations", "scores.bootstrap", "scores.variants", "scores", "probe", "baselines",
               "total_before_write", "write", "total"]
"""The order in which :func:`eavss.recipes.hallucination.run` ends its phases (``scores.*`` are
parts of ``scores``; ``total*`` are sums)."""

TOP = ("data", "load", "tokenise", "teacher_forced", "generation", "judge", "scores", "probe", "baselines", "write")
"""The top-level phases, whose seconds add up to ``total``."""


class PhaseClock(dict):
    """The run's ``timings`` dict: prints each phase as it ends and keeps ``path`` up to date."""

    def __init__(self, path: Path | None = None, t0: float | None = None):
        super().__init__()
        self.path = path
        self.t0 = t0 if t0 is not None else time.perf_counter()

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        print(f"[phase] {key:20s} {value:9.2f} s   (wall {time.perf_counter() - self.t0:7.1f} s)", flush=True)

    def pending(self) -> str | None:
        """The phase running now: the first of :data:`PHASE_ORDER` not yet ended."""
        return next((p for p in PHASE_ORDER if p not in self), None)


def load_tokenizer(spec: str):
    """``default``: SmolLM2-135M's tokenizer (converted-model cache, else loaded via the alias);
    ``tiny``: the tiny test tokenizer; else a tokenizer folder. Returns ``(tokenizer, description)``."""
    from eavss.models.loading import ensure_pad_token

    if spec == "tiny":
        from eavss.testing.tiny import tiny_tokenizer

        return tiny_tokenizer(), "tiny (eavss.testing)"
    if spec == "default":
        from eavss.models.loading import ALIASES, cache_root, load_model

        folder = cache_root() / ALIASES["smollm2-135m"].sha256[:16]
        if (folder / "tokenizer.json").is_file():
            spec = str(folder)
        else:
            lm = load_model("smollm2-135m", dtype="float32", device="cpu")
            return lm.tokenizer, "smollm2-135m (alias)"
    from transformers import AutoTokenizer

    return ensure_pad_token(AutoTokenizer.from_pretrained(spec)), spec


def default_question_counts(data_dir: str | None) -> dict[str, int]:
    """Questions per source that the default limits take (from the score split)."""
    from eavss.recipes.hallucination import HallucinationConfig, prepare

    cfg = HallucinationConfig()
    cfg.data_dir = data_dir
    _, samples = prepare(cfg)
    out: dict[str, set] = {}
    for s in samples:
        out.setdefault(s.source, set()).add(s.qid)
    return {k: len(v) for k, v in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shape:llama3-8b", help="shape:NAME | tiny:ARCH")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokenizer", default="default", help="default (SmolLM2-135M's) | tiny | a tokenizer folder")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--scale", type=float, default=None, help="every source's default question count x F")
    ap.add_argument("--limit", type=int, default=None, help="questions per source (overrides --scale)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the command's (16)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any config override of the command (repeatable), e.g. scores.bootstrap=50")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if not args.model.startswith(("shape:", "tiny:")):
        ap.error("--model must be shape:NAME or tiny:ARCH (a real model runs with `eavss hallucination` itself)")
    t_start = time.perf_counter()
    from eavss.config import load_config
    from eavss.models.layers import find_decoder_layers
    from eavss.models.loading import LoadedModel
    from eavss.recipes.hallucination import HallucinationConfig, run

    out = Path(args.out)
    values: dict = {"out": str(out), "overwrite": True, "model.name": args.model, "model.dtype": args.dtype,
                    "model.device": args.device, "progress": False, "seed": args.seed}
    if args.threads:
        values["threads"] = args.threads
    if args.data_dir:
        values["data_dir"] = args.data_dir
    if args.max_new_tokens:
        values["generation.max_new_tokens"] = args.max_new_tokens
    counts = None
    if args.limit:
        values["limits"] = {s: args.limit for s in HallucinationConfig().sources}
    elif args.scale:
        counts = default_question_counts(args.data_dir)
        values["limits"] = {s: max(1, round(n * args.scale)) for s, n in counts.items()}
    cfg = load_config(HallucinationConfig, overrides=args.set, values=values)

    info = machine_info(args.device)
    tok, tok_desc = load_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    model, _, mdesc = build_model(args.model, args.dtype, args.device, args.seed)
    if torch.device(args.device).type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tok) > vocab:
        raise SystemExit(f"the tokenizer has {len(tok)} ids, more than the model's vocabulary ({vocab}); "
                         "pass a smaller tokenizer (--tokenizer tiny) or a shape with a larger vocabulary")
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    path, layers = find_decoder_layers(model)
    loaded = LoadedModel(model=model, tokenizer=tok, info={
        "model_id": args.model, "source": "random weights (real model shape)", "file": None, "file_sha256": None,
        "cache_path": None, "cache_hit": None, "dtype": args.dtype, "device": args.device,
        "architecture": model.config.model_type, "num_layers": len(layers), "layers_path": path,
        "load_seconds": round(build_s, 3), "tokenizer": tok_desc})
    print(f"{args.model} {args.dtype} on {args.device} ({mdesc['num_parameters'] / 1e9:.2f} B parameters, built in "
          f"{build_s:.1f} s), tokenizer {tok_desc} ({len(tok)} ids), limits {cfg.limits}", flush=True)

    clock = PhaseClock(t0=t_start)
    status, error = "finished", None
    report = None
    try:
        report = run(cfg, loaded=loaded, timings=clock)
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception as e:  # noqa: BLE001 - record what ran, then fail
        status, error = "failed", f"{type(e).__name__}: {str(e)[:500]}"
    phases = dict(clock)
    top = {k: v for k, v in phases.items() if k in TOP}
    total = sum(top.values())  # the run's own total starts after the model was handed to it
    res = {"status": status, "error": error, "interrupted_in": clock.pending() if status != "finished" else None,
           "machine": info, "model": {**mdesc, "build_seconds": build_s, "tokenizer": tok_desc},
           "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
           "limits": cfg.limits, "default_question_counts": counts, "scale": args.scale,
           "phases": phases, "total_of_phases": total,
           "shares": {k: v / total for k, v in top.items()} if total else {},
           "slowest_phase": max(top, key=top.get) if top else None,
           "slowest_part_of_scores": max((k for k in phases if k.startswith("scores.")), key=phases.get, default=None),
           "note": "load = building the random-weights model on the device, not reading a checkpoint"}
    if report is not None:
        res["samples"] = report["samples"]["total"]
        res["labelled"] = report["samples"]["labelled"]
        res["passes"] = report["statistics"]["passes"]
        res["probe_seconds"] = (report.get("probe") or {}).get("seconds")
        res["stop_reasons"] = {s: d.get("stop_reasons") for s, d in report["sources"].items() if d.get("stop_reasons")}
    if torch.device(args.device).type == "cuda":
        res["peak_bytes"] = torch.cuda.max_memory_allocated()
    out.mkdir(parents=True, exist_ok=True)
    (out / "phases.json").write_text(json.dumps(res, indent=1, default=str))
    print(render(res), flush=True)
    return {"finished": 0, "interrupted": 130}.get(status, 1)


def render(res: dict) -> str:
    ph = res["phases"]
    total = res["total_of_phases"]
    lines = [f"status {res['status']}" + (f" (in {res['interrupted_in']})" if res.get("interrupted_in") else "")
             + (f": {res['error']}" if res.get("error") else ""),
             "| phase | seconds | share |", "|---|---|---|"]
    for k in PHASE_ORDER:
        if k in ph:
            share = f"{ph[k] / total:.1%}" if total and k in TOP else ""
            name = f"  {k}" if k.startswith("scores.") else k
            if k in ("total_before_write", "total"):
                name = f"{k} (the run's own, without load)"
            lines.append(f"| {name} | {ph[k]:.2f} | {share} |")
    lines.append(f"| sum of the phases | {total:.2f} | 100% |")
    lines.append(f"slowest phase: {res['slowest_phase']}; slowest part of scores: {res['slowest_part_of_scores']} "
                 "(load = building the random-weights model, not reading a checkpoint)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
