"""Answer generation of ``eavss hallucination``: with statistics capture, without, and Hugging Face ``generate``.

Every variant generates greedily for the same prompts (random token ids of the analysis's prompt
shape: a shared few-shot prefix of ``--prefix-len`` tokens -- 57 with SmolLM2's tokenizer -- and a
question suffix whose length follows the default run's NQ-open/TriviaQA distribution, 11-83 tokens,
median 18), left-padded in batches of the given size, for ``--max-new-tokens`` tokens:

==============  =================================================================================
capture         the analysis's own generation with its capture hooks, exactly as the command runs
                it: :func:`eavss.recipes.hallucination.generate_answers` (the shared prefix's KV
                cache, ``greedy_generate``) with :func:`~eavss.recipes.hallucination.answer_capture`
                (the statistics collector, one group per sample, and the probe features)
capture_step    the same, counting the last token of an answer cut at the length cap in one extra
                decoding step per batch (``last_token="step"``, the implementation before
                2026-12-02 evening) instead of the deferred teacher-forced passes
capture_layers  the same with the capture reducing layer by layer in every decoding step
                (``Capture.stage = False``: the implementation before staging)
capture_stats   the same with the statistics collector only (``probe.enabled=false``)
plain           the same generation without capture (``capture=None``)
plain_full      no capture and no prefix cache: every batch runs prefix + question (the work HF
                ``generate`` does on the same prompts)
hf              ``model.generate(do_sample=False)`` on the full left-padded prompts, batched the same
                way (rows sorted by length, as ``greedy_generate`` sorts them)
==============  =================================================================================

Stop rule (``--stop``): ``none`` (default) -- every row generates exactly ``--max-new-tokens`` tokens,
so all variants do the same number of steps whatever the (random) weights produce; ``recipe`` -- the
analysis's rule, stop at a newline token or EOS (needs a tokenizer: a real model, or ``--tokenizer``;
HF ``generate`` gets the same ids as ``eos_token_id``, and keeps finished rows in the batch where
``greedy_generate`` drops them). Capture counts the last answer token of a row cut at the length
cap in teacher-forced passes over ``prompt + answer`` shared by many batches, when a batch's cut
rows hold at most :data:`eavss.hallucination.capture.LAST_TOKEN_DEFER_TOKENS` tokens, else in one
extra decoding step; ``capture_step`` always takes the step. With ``--stop none`` every row is cut,
so a batch of 8 or more prompts usually takes the step and ``capture`` ~ ``capture_step``; with real
prompts and ``--stop recipe`` (``--prompts``) few rows are cut and their batches defer. Both make
more model calls than ``plain``; the per-call ratio is reported beside the plain ratio. ``--batches-per-size`` > 1
gives several batches per call, as in the analysis (66 batches), where the deferred pass is shared.

Timing: the capture variants' hooks and buffers are built before the clock starts (the analysis
builds them once for all its samples; before 2026-12-02 they were built inside it, which on a GPU
costs ~1 ms but on a CPU 0.17 s per call for SmolLM2's 245 MB feature buffer). All variants run in
one process on the same model, one warm-up round (which also counts
model calls and, on CUDA, measures peak allocated memory per variant), then ``--rounds`` rounds,
each running every (batch size, variant) once in rotating variant order; reported: median seconds,
generated tokens/s, and the median over rounds of the paired per-round ratios
``capture / plain`` (target <= 1.05), ``capture / capture_step``, ``capture_step / plain``,
``capture / capture_layers``, ``capture_layers / plain``, ``capture_stats / plain``, ``plain / hf``,
``plain_full / hf`` and ``plain / plain_full`` (each where both variants ran). With ``--out`` the JSON is rewritten after
every round (``rounds_completed``), so a run stopped by a time cap keeps what it measured. Checks: the capture variants and ``plain`` must generate identical
tokens (capture never changes the model's output) wherever ``plain`` itself repeats exactly (its
first timed run against the warm-up's; on a GPU, bf16 kernels may round differently from run to
run, and random weights give near-tied logits, so a flipped token there says nothing about
capture: the counts are reported and the check is skipped); agreement of ``plain`` with
``plain_full`` and ``hf`` is reported.

Examples::

    # one H200, Llama-3-8B shape with random weights, bf16
    PYTHONPATH=src python3 benchmarks/gen_overhead.py --model shape:llama3-8b --device cuda --dtype bfloat16 \\
        --batch-sizes 8,16,32,64 --max-new-tokens 16 --rounds 3 --out $OUT/gen_overhead.json

    # this CPU, smoke run
    PYTHONPATH=src .venv/bin/python benchmarks/gen_overhead.py --model tiny:llama --threads 1 \\
        --batch-sizes 2,4 --max-new-tokens 4 --rounds 1 --out /tmp/gen.json

Model specs as ``stats_overhead.py``: an eavss alias / HF folder / .gguf, ``shape:NAME`` (random
weights of a real model's shape), ``tiny:ARCH``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stats_overhead import build_model, machine_info  # noqa: E402

VARIANTS = ("capture", "capture_step", "capture_layers", "capture_stats", "plain", "plain_full", "hf")
RATIOS = {"capture/plain": ("capture", "plain"), "capture_layers/plain": ("capture_layers", "plain"),
          "capture/capture_layers": ("capture", "capture_layers"), "capture_stats/plain": ("capture_stats", "plain"),
          "capture/capture_step": ("capture", "capture_step"), "capture_step/plain": ("capture_step", "plain"),
          "plain/hf": ("plain", "hf"), "plain_full/hf": ("plain_full", "hf"), "plain/plain_full": ("plain", "plain_full")}

SUFFIX_QUANTILES = [(0.0, 11), (0.1, 15), (0.25, 16), (0.5, 18), (0.75, 23), (0.9, 30), (1.0, 83)]
"""Question-suffix token lengths of the default run's generated samples (NQ-open/TriviaQA, SmolLM2's
tokenizer, 1,600 prompts): (quantile, tokens)."""

PREFIX_LEN = 57
"""Tokens of the ``qa`` few-shot prefix with SmolLM2's tokenizer (BOS included)."""


# ---------------------------------------------------------------------------------------------
# prompts and configuration


def make_prompts(n: int, vocab: int, prefix_len: int = PREFIX_LEN, seed: int = 0,
                 lo: int = 10) -> tuple[list[int], list[list[int]]]:
    """Seeded random prompts of the analysis's shape.

    Args:
        n: number of prompts. vocab: ids are drawn from ``[lo, vocab)``. prefix_len: the shared
            prefix's length. seed: RNG seed.

    Returns:
        ``(prefix_ids (prefix_len,), suffixes)``: ``n`` lists of ids whose lengths follow
        :data:`SUFFIX_QUANTILES` (piecewise-linear inverse CDF).
    """
    g = np.random.default_rng(seed)
    q, v = zip(*SUFFIX_QUANTILES)
    lens = np.rint(np.interp(g.random(n), q, v)).astype(int)
    prefix = g.integers(lo, vocab, size=prefix_len).tolist()
    return prefix, [g.integers(lo, vocab, size=int(k)).tolist() for k in lens]


def recipe_config(batch_size: int, max_new_tokens: int, probe: bool = True, site: str = "resid_post"):
    """The analysis's default configuration with the benchmark's generation settings."""
    from eavss.recipes.hallucination import HallucinationConfig

    cfg = HallucinationConfig()
    cfg.generation.batch_size = batch_size
    cfg.generation.max_new_tokens = max_new_tokens
    cfg.probe.enabled = probe
    cfg.stats.site = site
    cfg.progress = False
    return cfg


def stop_tokens(stop: str, model, tok) -> tuple[list[int], list[int]]:
    """``(newline_ids, eos_ids)`` of the stop rule: none -> no stop tokens; recipe -> the analysis's."""
    if stop == "none":
        return [], []
    if tok is None:
        raise SystemExit("--stop recipe needs a tokenizer: a real model or --tokenizer PATH")
    from eavss.hallucination.capture import eos_token_ids, newline_token_ids

    return newline_token_ids(tok), eos_token_ids(model, tok)


# ---------------------------------------------------------------------------------------------
# the variants


class Setup:
    """What every variant shares: model, prompts, stop ids, prefix cache (built once, untimed).

    Args:
        model: causal LM. prefix: ``(P,)`` ids. suffixes: per prompt its ids after the prefix.
        newline / eos: stop ids. pad: padding id. max_new_tokens: length cap. site: capture site.
        capture_rows: number of sample groups of the capture (>= prompts; the analysis has one per
            sample of the whole run, which sizes the probe-feature buffer ``L x N x D`` float32).
    """

    def __init__(self, model, prefix: list[int], suffixes: list[list[int]], newline: list[int], eos: list[int],
                 pad: int, max_new_tokens: int, site: str = "resid_post", capture_rows: int = 0):
        from eavss.hallucination.capture import PrefixCache
        from eavss.recipes.hallucination import Tokens

        self.model = model
        self.prefix = list(prefix)
        self.suffixes = [list(s) for s in suffixes]
        self.full = [self.prefix + s for s in self.suffixes]
        self.ids = Tokens(prefix={"qa": self.prefix}, suffix=dict(enumerate(self.suffixes)), newline=list(newline),
                          eos=list(eos), pad=pad)
        self.max_new_tokens = max_new_tokens
        self.site = site
        self.rows = max(len(suffixes), capture_rows)
        self.cache = PrefixCache(model, self.prefix)
        self.device = next(p for p in model.parameters() if p.device.type != "meta").device

    def capture(self, variant: str, batch_size: int):
        """The capture hooks of ``variant`` with empty buffers (None for the variants without capture).

        Built outside the timed region: the analysis builds them once per run, for all its samples,
        and their allocation (``L x N x D`` float32 probe features, 245 MB for SmolLM2 at 3,549
        samples, 0.17 s of page faults on a 2-core CPU) is not a cost of generating one batch."""
        from eavss.recipes.hallucination import answer_capture

        if not variant.startswith("capture"):
            return None
        cfg = recipe_config(batch_size, self.max_new_tokens, probe=variant != "capture_stats", site=self.site)
        cap = answer_capture(self.model, self.rows, cfg)
        cap.stage = variant != "capture_layers"
        if cap.features is not None:  # allocate the feature buffer now (it is made at the first activation)
            width = self.model.config.hidden_size if self.site != "mlp_act" else self.model.config.intermediate_size
            cap.features._sums = torch.zeros(cap.features.num_layers, self.rows, width, dtype=torch.float32,
                                             device=self.device)
        return cap

    def run(self, variant: str, batch_size: int, cap=None) -> dict:
        """One generation of every prompt, with ``cap`` (:meth:`capture`) for the capture variants;
        returns ``{"tokens": [...], "capture": Capture | None, "info"}``."""
        from eavss.recipes.hallucination import generate_answers

        n = len(self.suffixes)
        if variant == "hf":
            return {"tokens": hf_generate(self.model, self.full, batch_size, self.max_new_tokens, self.ids.pad,
                                          self.ids.newline + self.ids.eos), "capture": None, "info": {}}
        cfg = recipe_config(batch_size, self.max_new_tokens, probe=variant != "capture_stats", site=self.site)
        if variant.startswith("capture") and cap is None:
            cap = self.capture(variant, batch_size)
        info: dict = {}
        if variant == "plain_full":
            cfg.generation.prefix_cache = False
            outs = generate_answers(self.model, self.full, None, self.ids, cfg, stats=info)
        else:
            outs = generate_answers(self.model, self.suffixes, self.cache, self.ids, cfg, capture=cap,
                                    sample_indices=list(range(n)) if cap is not None else None, stats=info,
                                    last_token="step" if variant == "capture_step" else "deferred")
        return {"tokens": [g.tokens for g in outs], "capture": cap, "info": info}


@torch.inference_mode()
def hf_generate(model, prompts: list[list[int]], batch_size: int, max_new_tokens: int, pad: int,
                stop_ids: list[int]) -> list[list[int]]:
    """``model.generate(do_sample=False)`` over ``prompts`` (full prompts), batched like
    ``greedy_generate`` (sorted by length, longest first; left padding).

    Returns:
        Per prompt (input order), its generated ids up to and including the first stop id.
    """
    from transformers import GenerationConfig

    from eavss.stats.collector import input_device

    device = input_device(model)
    gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                          eos_token_id=list(stop_ids) or None)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    res: list[list[int] | None] = [None] * len(prompts)
    # generate() fills every None field of ``gc`` from model.generation_config (eos included):
    # without stop ids, blank the model's eos for the call so that every row runs to the cap
    mgc = getattr(model, "generation_config", None)
    saved_eos = getattr(mgc, "eos_token_id", None)
    if mgc is not None and not stop_ids:
        mgc.eos_token_id = None
    try:
        _hf_batches(model, prompts, order, batch_size, gc, pad, stop_ids, device, res)
    finally:
        if mgc is not None:
            mgc.eos_token_id = saved_eos
    return res  # type: ignore[return-value]


def _hf_batches(model, prompts, order, batch_size, gc, pad, stop_ids, device, res) -> None:
    for k in range(0, len(order), batch_size):
        idx = order[k:k + batch_size]
        T = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        am = torch.zeros(len(idx), T, dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, T - len(prompts[i]):] = torch.tensor(prompts[i])
            am[b, T - len(prompts[i]):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=am.to(device), generation_config=gc)
        new = out[:, T:].tolist()
        stop = set(stop_ids)
        for b, i in enumerate(idx):
            toks = []
            for t in new[b]:
                toks.append(t)
                if t in stop:
                    break
            res[i] = toks


class CallCounter:
    """Counts the forward calls of the model's decoder stack (attached in the untimed warm-up round
    only): calls of the whole LM and the capture's last step, which runs the stack without the LM head."""

    def __init__(self, model):
        from eavss.stats.collector import forward_for_stats

        self.n = 0
        self.h = forward_for_stats(model).register_forward_pre_hook(self._hook)

    def _hook(self, *a):
        self.n += 1

    def close(self) -> int:
        self.h.remove()
        return self.n


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shape:llama3-8b")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-sizes", default="8,16,32,64")
    ap.add_argument("--batches-per-size", type=int, default=1,
                    help="prompts per batch size = this x the batch size (default 1: one full batch)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="the analysis's default answer cap is 16")
    ap.add_argument("--prefix-len", type=int, default=PREFIX_LEN)
    ap.add_argument("--prompts", default=None,
                    help="JSON {prefix: ids, suffixes: [ids, ...]}: real prompts instead of random ones (e.g. an "
                         "analysis's, from benchmarks/prompts_from_samples.py); every prompt at every batch size")
    ap.add_argument("--prompt-sample", type=int, default=0,
                    help="with --prompts: a seeded random sample (--seed) of this many of them (0: all)")
    ap.add_argument("--stop", default="none", choices=["none", "recipe"])
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (for --stop recipe with a shape model)")
    ap.add_argument("--site", default="resid_post", help="capture site (the analysis's default: resid_post)")
    ap.add_argument("--capture-rows", type=int, default=0,
                    help="sample groups of the capture (default: the number of prompts; the default analysis "
                         "has 3,549 samples, which sizes its probe-feature buffer)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds (the first also counts calls and memory)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {list(VARIANTS)}")
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    device = torch.device(args.device)

    info = machine_info(args.device)
    model, tok, mdesc = build_model(args.model, args.dtype, args.device, args.seed)
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    newline, eos = stop_tokens(args.stop, model, tok)
    pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0
    vocab = model.get_input_embeddings().weight.shape[0]
    if tok is not None:
        vocab = min(vocab, len(tok))
    setups = {}
    given = None
    if args.prompts:
        try:
            given = json.loads(Path(args.prompts).read_text())
            ok = isinstance(given["prefix"], list) and given["suffixes"] and all(given["suffixes"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--prompts {args.prompts}: cannot read it ({e}); make it with benchmarks/prompts_from_samples.py")
        if not ok:
            ap.error(f"--prompts {args.prompts}: needs a prefix list and non-empty suffixes; make it with "
                     "benchmarks/prompts_from_samples.py")
    if args.prompt_sample < 0:
        ap.error(f"--prompt-sample must be >= 0 (0: every prompt), got {args.prompt_sample}")
    if given is not None and 0 < args.prompt_sample < len(given["suffixes"]):
        pick = np.random.default_rng(args.seed).choice(len(given["suffixes"]), args.prompt_sample, replace=False)
        given["suffixes"] = [given["suffixes"][i] for i in sorted(pick)]
    for bs in sizes:
        if given is not None:
            prefix, suffixes = given["prefix"], given["suffixes"]
        else:
            prefix, suffixes = make_prompts(bs * args.batches_per_size, vocab, args.prefix_len, seed=args.seed + bs)
        setups[bs] = Setup(model, prefix, suffixes, newline, eos, pad, args.max_new_tokens, args.site,
                           args.capture_rows)
    print(f"{mdesc['model']} {args.dtype} on {args.device}: batch sizes {sizes}, {args.max_new_tokens} new tokens, "
          f"stop {args.stop}, variants {names}", file=sys.stderr, flush=True)

    cuda = device.type == "cuda"
    calls, memory, tokens, gen_tokens = {}, {}, {}, {}
    secs = {bs: {n: [] for n in names} for bs in sizes}
    for w in range(args.warmup):
        for bs in sizes:
            for n in names:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                counter = CallCounter(model) if w == 0 else None
                out = setups[bs].run(n, bs)
                sync(device)
                if counter is not None:
                    calls[f"{bs}/{n}"] = counter.close()
                    tokens[f"{bs}/{n}"] = out["tokens"]
                    if cuda:
                        memory[f"{bs}/{n}"] = torch.cuda.max_memory_allocated(device)
                del out
    def summarize(done: int) -> dict:
        """The result dict after ``done`` complete timed rounds (written after every round, so a run
        stopped by a time cap keeps what it measured)."""
        res = {"machine": info, "model": mdesc, "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
               "workload": {"batch_sizes": sizes, "prompts_per_size": {bs: len(setups[bs].suffixes) for bs in sizes},
                            "max_new_tokens": args.max_new_tokens, "prefix_len": args.prefix_len, "stop": args.stop,
                            "prompts": args.prompts or "random", "prompt_sample": args.prompt_sample or "all",
                            "suffix_length_quantiles": SUFFIX_QUANTILES, "site": args.site,
                            "capture_rows": {bs: setups[bs].rows for bs in sizes}, "rounds": args.rounds,
                            "warmup": args.warmup, "dtype": args.dtype},
               "sizes": {}}
        for bs in sizes:
            row = {"variants": {}, "ratios": {}, "checks": {}}
            for n in names:
                t = secs[bs][n]
                k = f"{bs}/{n}"
                med = statistics.median(t) if t else float("nan")
                row["variants"][n] = {"seconds": t, "median_seconds": med, "generated_tokens": gen_tokens.get(k),
                                      "tokens_per_second": gen_tokens[k] / med if t else None,
                                      "model_calls": calls.get(k), "peak_bytes": memory.get(k)}
            for name, (a, b) in RATIOS.items():
                if a in names and b in names and secs[bs][a]:
                    paired = [x / y for x, y in zip(secs[bs][a], secs[bs][b])]
                    ent = {"median": statistics.median(paired), "rounds": paired, "min": min(paired), "max": max(paired)}
                    ca, cb = calls.get(f"{bs}/{a}"), calls.get(f"{bs}/{b}")
                    if ca and cb:
                        ent["per_model_call"] = ent["median"] * cb / ca
                    ma, mb = memory.get(f"{bs}/{a}"), memory.get(f"{bs}/{b}")
                    if ma and mb:
                        ent["peak_memory_ratio"] = ma / mb
                    row["ratios"][name] = ent
            ref = tokens.get(f"{bs}/plain")
            again = tokens.get(f"{bs}/plain_again")
            if ref is not None and again is not None:
                same = [a == b for a, b in zip(again, ref)]
                row["checks"]["plain_repeat_identical_rows"] = f"{sum(same)}/{len(same)}"
            repeatable = again is None or again == ref
            for n in names:
                got = tokens.get(f"{bs}/{n}")
                if n == "plain" or ref is None or got is None:
                    continue
                same = [a == b for a, b in zip(got, ref)]
                row["checks"][f"{n}_vs_plain_identical_rows"] = f"{sum(same)}/{len(same)}"
                if n.startswith("capture") and repeatable:  # else round-off already differs run to run
                    row["checks"][f"{n}_identical"] = all(same)
            res["sizes"][str(bs)] = row
        res["capture_identical_everywhere"] = all(r["checks"].get(f"{n}_identical", True)
                                                  for r in res["sizes"].values()
                                                  for n in ("capture", "capture_step", "capture_layers", "capture_stats"))
        res["rounds_completed"] = done
        return res

    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for bs in sizes:
            for n in order:
                cap = setups[bs].capture(n, bs)  # untimed: built once per analysis
                sync(device)
                t0 = time.perf_counter()
                out = setups[bs].run(n, bs, cap)
                sync(device)
                secs[bs][n].append(time.perf_counter() - t0)
                gen_tokens[f"{bs}/{n}"] = sum(len(t) for t in out["tokens"])
                if args.warmup == 0 and r == 0:
                    tokens[f"{bs}/{n}"] = out["tokens"]
                elif r == 0 and n == "plain":  # the same variant again: is generation itself repeatable here?
                    tokens[f"{bs}/plain_again"] = out["tokens"]
                print(f"  round {r + 1}/{args.rounds} bs {bs:3d} {n:14s} {secs[bs][n][-1]:8.3f} s", file=sys.stderr,
                      flush=True)
                del out, cap
        if args.out:  # a partial result after every round (written whole, then renamed)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out + ".part").write_text(json.dumps(summarize(r + 1), indent=1))
            os.replace(args.out + ".part", args.out)

    res = summarize(args.rounds)
    print(render(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0 if res["capture_identical_everywhere"] else 1


def render(res: dict) -> str:
    w = res["workload"]
    lines = [f"model {res['model']['model']} ({w['dtype']}), {w['max_new_tokens']} new tokens, stop {w['stop']}, "
             f"{res['machine'].get('gpu') or res['machine'].get('cpu')}",
             "| batch | variant | median s | tokens/s | model calls | peak GiB |", "|---|---|---|---|---|---|"]
    for bs, row in res["sizes"].items():
        for n, v in row["variants"].items():
            pk = f"{v['peak_bytes'] / 2**30:.2f}" if v.get("peak_bytes") else "-"
            tps = f"{v['tokens_per_second']:.0f}" if v.get("tokens_per_second") else "-"
            lines.append(f"| {bs} | {n} | {v['median_seconds']:.3f} | {tps} | {v['model_calls']} | {pk} |")
    lines += ["", "| batch | ratio | paired median | min-max | per model call | peak memory ratio |", "|---|---|---|---|---|---|"]
    for bs, row in res["sizes"].items():
        for name, e in row["ratios"].items():
            pc = f"{e['per_model_call']:.4f}" if "per_model_call" in e else "-"
            pm = f"{e['peak_memory_ratio']:.4f}" if "peak_memory_ratio" in e else "-"
            lines.append(f"| {bs} | {name} | {e['median']:.4f} | {e['min']:.3f}-{e['max']:.3f} | {pc} | {pm} |")
        lines.append(f"| {bs} | checks | {row['checks']} | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
