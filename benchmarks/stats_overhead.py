"""How much does collecting layer statistics cost on top of the forward pass it rides on?

One run, one model, the same tokens for every variant (see ``baselines.py``): (a) the plain
forward pass with no hooks -- the limit; (b) eavss statistics collection; (c) the official AVSS
code's per-layer host copy; (d) ``output_hidden_states`` then reduce; (e) ShortGPT block influence
from the full similarity matrix vs. eavss's row-wise form; plus the simple unfused per-layer
reduction eavss started from. Reports wall time (median of ``--repeats`` rounds after
``--warmup``), tokens/s, the ratio to (a) (median over rounds of the paired ratio: rounds run
every variant back to back in rotating order, so slow drift of a shared machine cancels) and
peak memory (``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak RSS (VmHWM), measured in a
fresh subprocess per variant with ``--memory``, since RSS cannot be attributed within one process).

Examples::

    # this CPU, default model (SmolLM2-135M, float32), 2 x (8 x 256) tokens of WikiText-2
    .venv/bin/python benchmarks/stats_overhead.py --out benchmarks/results/cpu.json --memory

    # one H200, Llama-3-8B shape with random weights, bf16, 64 x 2048 tokens
    PYTHONPATH=src python3 benchmarks/stats_overhead.py --model shape:llama3-8b --dtype bfloat16 \\
        --device cuda --batch-size 8 --seq-len 2048 --num-batches 8 --out $OUT/h200.json

    # the capture sites as collect_statistics runs them (pooled variance and block influence on),
    # Qwen2.5-7B shape, right-padded batches of varied length (benchmarks/device/speed.sh)
    PYTHONPATH=src python3 benchmarks/stats_overhead.py --model shape:qwen2.5-7b --dtype bfloat16 \
        --device cuda --batch-size 8 --seq-len 2048 --num-batches 4 --pad right --repeats 3 \
        --variants plain,eavss,eavss_resid_delta,eavss_resid_delta_nobi,eavss_mlp_act,eavss_mlp_act_nobi \
        --out $OUT/sites_qwen.json

Model specs: an eavss alias / HF folder / .gguf (``smollm2-135m``), ``shape:NAME`` (random weights
with the dimensions of a real model, :func:`eavss.testing.tiny.real_model_shape_config`; e.g.
``shape:llama3-8b``), or ``tiny:ARCH`` (smoke tests).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import VARIANTS  # noqa: E402

DEFAULT_VARIANTS = ["plain", "eavss", "simple", "official", "hidden_states", "bi_matrix", "bi_rowwise"]


# ---------------------------------------------------------------------------------------------
# model and tokens


def build_model(spec: str, dtype: str, device: str, seed: int = 0):
    """(model, tokenizer or None, description dict)."""
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if spec.startswith("shape:") or spec.startswith("tiny:"):
        from transformers import AutoModelForCausalLM

        from eavss.testing.tiny import real_model_shape_config, tiny_config

        name = spec.split(":", 1)[1]
        cfg = real_model_shape_config(name) if spec.startswith("shape:") else tiny_config(name)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=tdt)
        model.eval()
        desc = {"model": spec, "weights": "random", "build_seconds": round(time.perf_counter() - t0, 1)}
        tok = None
    else:
        from eavss.models.loading import load_model

        lm = load_model(spec, dtype=dtype, device=device)
        model, tok = lm.model, lm.tokenizer
        desc = {"model": spec, "weights": "pretrained", "file_sha256": lm.info.get("file_sha256")}
    c = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    desc.update({
        "architecture": c.model_type, "num_layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
        "intermediate_size": getattr(c, "intermediate_size", None), "vocab_size": c.vocab_size,
        "num_parameters": sum(p.numel() for p in model.parameters()), "dtype": dtype,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    })
    return model, tok, desc


def make_batches(tok, vocab: int, batch_size: int, seq_len: int, num_batches: int, device: str, seed: int = 0,
                 data_dir: str | None = None, pad: str = "none", min_len_frac: float = 0.5) -> tuple[list[dict], str]:
    """``(batch_size, seq_len)`` batches: WikiText-2 validation text packed (with a tokenizer),
    else seeded random ids. All batches have the same shape, so per-batch times are comparable.

    ``pad="right"``: each sequence keeps a seeded random length in ``[min_len_frac * seq_len,
    seq_len]`` and is right-padded (pad id, attention mask 0) to ``seq_len``, as a calibration
    batch of documents of varied length is; every position is still computed by the forward pass."""
    n = batch_size * seq_len * num_batches
    source = "random ids"
    if tok is not None:
        try:
            from eavss.data.calibration import load_calibration_texts, tokenize_samples

            texts = load_calibration_texts("wikitext2", data_dir)
            seqs = tokenize_samples(tok, texts, seq_len, "packed", batch_size * num_batches)
            if len(seqs) >= batch_size * num_batches:
                ids = torch.tensor(seqs[:batch_size * num_batches], dtype=torch.long)
                source = "wikitext2 validation, packed"
            else:
                raise ValueError("too little text")
        except Exception as e:  # noqa: BLE001 - fall back to random ids, say so
            print(f"[tokens] wikitext2 unavailable ({e}); using random ids", file=sys.stderr)
            tok = None
    if tok is None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(10, vocab, (n,), generator=g).view(batch_size * num_batches, seq_len)
    am = torch.ones_like(ids)
    if pad == "right":
        g = torch.Generator().manual_seed(seed + 1)
        lo = max(1, int(round(min_len_frac * seq_len)))
        lens = torch.randint(lo, seq_len + 1, (len(ids),), generator=g)
        am = (torch.arange(seq_len)[None, :] < lens[:, None]).long()
        pad_id = getattr(tok, "pad_token_id", None) or 0
        ids = torch.where(am.bool(), ids, torch.full_like(ids, pad_id))
        source += f", right-padded to {seq_len} (lengths {lo}-{seq_len}, {int(am.sum())} real tokens)"
    elif pad != "none":
        raise ValueError(f"pad must be none or right, got {pad!r}")
    batches = []
    for i in range(num_batches):
        sl = slice(i * batch_size, (i + 1) * batch_size)
        batches.append({"input_ids": ids[sl].to(device), "attention_mask": am[sl].to(device)})
    return batches, source


# ---------------------------------------------------------------------------------------------
# measurement


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def vm_hwm_kib() -> int:
    """Peak resident set size of this process (KiB), Linux ``VmHWM``."""
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmHWM:\s+(\d+)", fh.read()).group(1))


def vm_rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmRSS:\s+(\d+)", fh.read()).group(1))


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def run_pass(variant, batches, device, cpu_times: list | None = None) -> float:
    """Wall seconds for one pass of ``variant`` over ``batches`` (steps + finish, device synced).
    The process CPU seconds of the pass are appended to ``cpu_times`` (less sensitive than wall
    time to other processes on a shared CPU)."""
    variant.reset()
    sync(device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    for b in batches:
        variant.step(b)
    variant.finish()
    sync(device)
    wall = time.perf_counter() - t0
    if cpu_times is not None:
        cpu = time.process_time() - c0
        cpu_times.append(cpu)
        timer = getattr(variant, "timer", None)
        if timer is not None and hasattr(cpu_times, "attributed"):
            cpu_times.attributed.append((wall, timer.wall, cpu, timer.cpu))
    return wall


class _Times(list):
    """A list of CPU seconds with the in-pass hook attribution of each pass beside it."""

    def __init__(self):
        super().__init__()
        self.attributed: list[tuple[float, float, float, float]] = []


def time_variants(model, names, batches, device, repeats, warmup, subsets) -> dict:
    """Interleaved rounds. ``subsets[name]``: number of batches that variant runs (slow ones run
    fewer; its per-token time is compared with the plain pass's per-token time)."""
    variants = {n: VARIANTS[n](model) for n in names}
    times = {n: [] for n in names}
    cpu = {n: _Times() for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                run_pass(variants[n], batches[:max(1, min(2, subsets[n]))], device)
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                times[n].append(run_pass(variants[n], batches[:subsets[n]], device, cpu[n]))
                print(f"  round {r + 1}/{repeats} {n:14s} {times[n][-1]:9.3f} s  cpu {cpu[n][-1]:9.3f} s",
                      file=sys.stderr, flush=True)
    return times, cpu


def peak_memory_cuda(model, names, batches, device, subsets, max_batches: int | None = None) -> dict:
    """Per variant: peak allocated bytes over one pass (and over its first batch alone, to show that
    the peak does not grow with the number of batches); ``max_batches`` caps the pass."""
    res = {}
    with torch.inference_mode():
        for n in names:
            v = VARIANTS[n](model)
            k = subsets[n] if not max_batches else min(subsets[n], max_batches)
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            run_pass(v, batches[:1], device)
            one = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run_pass(v, batches[:k], device)
            res[n] = {"peak_bytes": torch.cuda.max_memory_allocated(), "peak_bytes_one_batch": one,
                      "batches": k}
            del v
    return res


def peak_memory_cpu_subprocess(args, names) -> dict:
    """Per variant, in a fresh process: VmHWM after loading (reset), after 1 pass and after 3."""
    res = {}
    for n in names:
        cmd = [sys.executable, __file__, "--memory-probe", n, "--model", args.model, "--dtype", args.dtype,
               "--device", args.device, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--num-batches", str(args.num_batches), "--seed", str(args.seed), "--pad", args.pad,
               "--min-len-frac", str(args.min_len_frac)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("MEMORY ")]
        if out.returncode or not line:
            res[n] = {"error": (out.stderr or out.stdout)[-2000:]}
        else:
            res[n] = json.loads(line[-1][7:])
        print(f"  memory {n:14s} {res[n]}", file=sys.stderr, flush=True)
    return res


def memory_probe(args) -> None:
    """Child process of :func:`peak_memory_cpu_subprocess`."""
    model, tok, _ = build_model(args.model, args.dtype, args.device, args.seed)
    batches, _ = make_batches(tok, model.config.vocab_size, args.batch_size, args.seq_len, args.num_batches,
                              args.device, args.seed, args.data_dir, args.pad, args.min_len_frac)
    v = VARIANTS[args.memory_probe](model)
    gc.collect()
    base = vm_rss_kib()
    reset_hwm()
    with torch.inference_mode():
        run_pass(v, batches, args.device)
        p1 = vm_hwm_kib()
        run_pass(v, batches, args.device)
        run_pass(v, batches, args.device)
        p3 = vm_hwm_kib()
    print("MEMORY " + json.dumps({"rss_before_kib": base, "peak_kib_1_pass": p1, "peak_kib_3_passes": p3,
                                  "batches_per_pass": len(batches)}))


# ---------------------------------------------------------------------------------------------
# cross-check: the variants that compute the same statistics agree


def cross_check_sites(model, names, batches, device) -> dict:
    """For each other site among the variants, on one batch: block influence from its second hook
    vs. the resid_post pass's (the same quantity; relative difference), and on CUDA every field of
    the fused path vs. the eager one (``EAVSS_REDUCE=eager``)."""
    from baselines import Eavss

    from eavss.stats.accumulators import FIELDS, F

    out = {}
    sites = [s for s in ("resid_delta", "mlp_act") if any(n.startswith(f"eavss_{s}") for n in names)]
    if not sites:
        return out
    with torch.inference_mode():
        ref = Eavss(model)
        run_pass(ref, batches[:1], device)
        bi_ref = ref.col.accumulator[:, 0, F["bi_sum"]].double().cpu()
        for site in sites:
            e = Eavss(model, site=site)
            run_pass(e, batches[:1], device)
            acc = e.col.accumulator[:, 0].double().cpu()
            row = {"bi_vs_resid_post": float(((acc[:, F["bi_sum"]] - bi_ref).abs() / bi_ref.abs().clamp_min(1e-12)).max())}
            if torch.device(device).type == "cuda":
                g = Eavss(model, site=site, implementation="eager")
                run_pass(g, batches[:1], device)
                acc_e = g.col.accumulator[:, 0].double().cpu()
                scale = acc_e.abs().amax(0).clamp_min(1e-12)
                err = (acc - acc_e).abs().amax(0) / scale
                row["fused_vs_eager"] = {FIELDS[i]: float(err[i]) for i in range(len(FIELDS))}
            out[site] = row
    return out


def cross_check(model, batches, device) -> dict:
    from baselines import Eavss, HiddenStates, Simple

    from eavss.stats.accumulators import F

    out = {}
    with torch.inference_mode():
        e = Eavss(model)
        run_pass(e, batches[:1], device)
        ev = e.col.accumulator[:, 0].double().cpu()
        for cls in (Simple, HiddenStates):
            v = cls(model)
            run_pass(v, batches[:1], device)
            ref = v.acc.double().cpu()
            L = min(len(ref), len(ev)) - 1  # the last hidden state is after the final norm
            rel = {}
            for f in ("within_m2", "sum_mean_sq", "near_zero", "bi_sum", "pooled_var_sum"):
                a, b = ev[:L, F[f]], ref[:L, F[f]]
                rel[f] = float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())
            out[cls.name] = rel
    return out


# ---------------------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    info = {"date": dt.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as fh:
            m = re.search(r"model name\s*:\s*(.*)", fh.read())
        info["cpu"] = m.group(1) if m else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
    from eavss.stats.reduce import reduce_backend

    info["reduction"] = reduce_backend(device)
    info["EAVSS_TRITON_CONFIG"] = os.environ.get("EAVSS_TRITON_CONFIG") or "default"
    info["EAVSS_TILED_CONFIG"] = os.environ.get("EAVSS_TILED_CONFIG") or "auto"
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--num-batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--slow-batches", type=int, default=None,
                    help="batches for the slow variants (official, bi_matrix): default all on CPU, 1 on GPU")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--memory", action="store_true", help="CPU: measure peak RSS per variant in subprocesses")
    ap.add_argument("--memory-variants", default=None, help="CPU: only these variants' peak RSS (default: all)")
    ap.add_argument("--no-cross-check", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--pad", default="none", choices=["none", "right"],
                    help="right: sequences of varied length (see --min-len-frac), right-padded to --seq-len")
    ap.add_argument("--min-len-frac", type=float, default=0.5, help="with --pad right: shortest length / seq-len")
    ap.add_argument("--memory-batches", type=int, default=None,
                    help="GPU peak memory: batches per measured pass (default: the variant's batches)")
    ap.add_argument("--out", default=None, help="write the full results as JSON here")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(args)
        return 0
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    if "plain" not in names:
        names.insert(0, "plain")
    cuda = torch.device(args.device).type == "cuda"

    info = machine_info(args.device)
    model, tok, mdesc = build_model(args.model, args.dtype, args.device, args.seed)
    batches, source = make_batches(tok, model.config.vocab_size, args.batch_size, args.seq_len, args.num_batches,
                                   args.device, args.seed, args.data_dir, args.pad, args.min_len_frac)
    slow = args.slow_batches if args.slow_batches is not None else (1 if cuda else args.num_batches)
    subsets = {n: (min(slow, args.num_batches) if n in ("official", "bi_matrix") else args.num_batches) for n in names}
    tokens_per_batch = args.batch_size * args.seq_len
    print(f"{mdesc['model']} {args.dtype} on {args.device}: {args.num_batches} x ({args.batch_size} x {args.seq_len}) "
          f"tokens ({source}); variants {names}; reduction {info['reduction']}", file=sys.stderr, flush=True)

    times, cpu_times = time_variants(model, names, batches, args.device, args.repeats, args.warmup, subsets)
    res = {"machine": info, "model": mdesc,
           "workload": {"batch_size": args.batch_size, "seq_len": args.seq_len, "num_batches": args.num_batches,
                        "tokens": tokens_per_batch * args.num_batches, "token_source": source, "pad": args.pad,
                        "real_tokens": int(sum(int(b["attention_mask"].sum()) for b in batches)),
                        "repeats": args.repeats, "warmup": args.warmup, "batches_per_variant": subsets},
           "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
           "variants": {}}
    per_tok = {n: [t / (subsets[n] * tokens_per_batch) for t in times[n]] for n in names}
    cpu_tok = {n: [t / (subsets[n] * tokens_per_batch) for t in cpu_times[n]] for n in names}
    for n in names:
        med = statistics.median(times[n])
        paired = [a / b for a, b in zip(per_tok[n], per_tok["plain"])]
        cpu_paired = [a / b for a, b in zip(cpu_tok[n], cpu_tok["plain"])]
        res["variants"][n] = {
            "seconds": times[n], "median_seconds": med, "batches": subsets[n],
            "tokens_per_second": subsets[n] * tokens_per_batch / med,
            "ratio_to_plain": statistics.median(paired),
            "ratio_of_medians": statistics.median(per_tok[n]) / statistics.median(per_tok["plain"]),
            "ratio_min": min(paired), "ratio_max": max(paired),
            "cpu_seconds": list(cpu_times[n]), "cpu_ratio_to_plain": statistics.median(cpu_paired),
        }
        att = cpu_times[n].attributed
        if att and not cuda:  # CPU: time inside the hooks, measured within each pass
            res["variants"][n]["in_pass"] = {
                "hook_wall_seconds": [h for _, h, _, _ in att], "hook_cpu_seconds": [h for _, _, _, h in att],
                "ratio_wall": statistics.median([w / max(w - h, 1e-9) for w, h, _, _ in att]),
                "ratio_cpu": statistics.median([c / max(c - h, 1e-9) for _, _, c, h in att]),
            }
    if not args.no_cross_check and "eavss" in names:
        res["cross_check_max_rel_diff"] = cross_check(model, batches, args.device)
    if not args.no_cross_check:
        res["cross_check_sites"] = cross_check_sites(model, names, batches, args.device)
    if cuda:
        mem = peak_memory_cuda(model, names, batches, args.device, subsets, args.memory_batches)
        for n in names:
            res["variants"][n]["memory"] = mem[n]
            res["variants"][n]["peak_ratio_to_plain"] = mem[n]["peak_bytes"] / mem["plain"]["peak_bytes"]
        res["memory_kind"] = "torch.cuda.max_memory_allocated"
    elif args.memory:
        del model
        gc.collect()
        mem_names = [n for n in names if args.memory_variants is None or n in args.memory_variants.split(",")]
        if "plain" not in mem_names:
            mem_names.insert(0, "plain")
        mem = peak_memory_cpu_subprocess(args, mem_names)
        base = mem.get("plain", {}).get("peak_kib_3_passes")
        for n in mem_names:
            res["variants"][n]["memory"] = mem[n]
            if base and "peak_kib_3_passes" in mem[n]:
                res["variants"][n]["peak_ratio_to_plain"] = mem[n]["peak_kib_3_passes"] / base
        res["memory_kind"] = "peak RSS (VmHWM) of a fresh process, reset after loading"
    try:
        res["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass

    print(render_table(res))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


def render_table(res: dict) -> str:
    w = res["workload"]
    lines = [f"model {res['model']['model']} ({res['model']['dtype']}), {w['num_batches']} x "
             f"({w['batch_size']} x {w['seq_len']}) tokens, {res['machine'].get('gpu') or res['machine'].get('cpu')}, "
             f"threads {res['machine']['torch_threads']}",
             "| variant | batches | median s | tokens/s | ratio to plain (paired median) | min-max | CPU-time ratio "
             "| in-pass ratio (wall / CPU) | peak memory | peak / plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n, v in res["variants"].items():
        mem = v.get("memory", {})
        if "peak_bytes" in mem:
            pm = f"{mem['peak_bytes'] / 2**30:.2f} GiB"
        elif "peak_kib_3_passes" in mem:
            pm = f"{mem['peak_kib_3_passes'] / 2**20:.3f} GiB"
        else:
            pm = "-"
        pr = f"{v['peak_ratio_to_plain']:.4f}" if "peak_ratio_to_plain" in v else "-"
        lines.append(f"| {n} | {v['batches']} | {v['median_seconds']:.3f} | {v['tokens_per_second']:.0f} | "
                     f"{v['ratio_to_plain']:.4f} | {v['ratio_min']:.3f}-{v['ratio_max']:.3f} | "
                     f"{v['cpu_ratio_to_plain']:.4f} | {_inpass(v)} | {pm} | {pr} |")
    return "\n".join(lines)


def _inpass(v: dict) -> str:
    ip = v.get("in_pass")
    return f"{ip['ratio_wall']:.4f} / {ip['ratio_cpu']:.4f}" if ip else "-"


if __name__ == "__main__":
    sys.exit(main())
