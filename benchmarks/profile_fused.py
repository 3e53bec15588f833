"""GPU time of the fused reduction's kernels (torch.profiler / CUPTI), per capture site and launch configuration.

    PYTHONPATH=src python3 benchmarks/profile_fused.py --out $OUT/profile.json [--best-config-file F]
    PYTHONPATH=src python3 benchmarks/profile_fused.py --cases 8x2048x18944:act,8x2048x3584:bi,8x2048x3584:delta \\
        --out $OUT/profile_sites.json

A case is ``BxTxD:MODE`` (bf16 activations, all tokens counted, pooled variance as the collector
computes it, in-place accumulation):

======  ===========================================================================================
post    ``resid_post``: the layer output with its input (block influence from the same kernel)
act     ``mlp_act``: the ``D``-wide MLP activation alone (no layer input; ``D`` > 32768 takes the
        chunked path, each row read twice, the second time mostly from L2); ``act_nopool``: without
        the pooled variance (what the pooled column sums cost)
delta   ``resid_delta`` as the collector runs it: ``out - x`` formed in the kernel, with block
        influence from the same read (``delta_nobi``: without it); ``delta_sub``: the earlier form,
        ``out - x`` by one elementwise kernel, then the reduction of the difference
bi      block influence at a site other than ``resid_post`` (the collector's second hook):
        ``block_influence_sums`` into the accumulator (the kernel's block-influence-only mode);
        ``bi_eager``: its eager float32 form
silu    torch's ``silu`` of the ``D``-wide tensor alone: what the model's own activation costs
act_silu ``mlp_act`` with the SiLU fused (``FUSE_SILU``): the activation written and reduced from one
        read of its input; it replaces ``silu`` + ``act`` (the hook reads the output again)
silu_mul torch's ``silu(gate) * up``: what a gated MLP's activation and product cost in the plain forward
gated   ``mlp_act`` on the gated MLP path (``FUSE_SILU=mlp``): gate and up read once, ``silu(gate) * up``
        written with the counted tokens' SiLU, which the statistics read again; it replaces ``silu_mul`` +
        ``act``; ``gated_gate``: the gate read again and its SiLU recomputed instead (``GATED_REREAD``)
======  ===========================================================================================

Per case: the device time of every kernel launched, summed per kernel name, against a
device-to-device copy of the largest tensor read (the bandwidth yardstick), the bytes that must be
read, and the bandwidth that implies; for ``post`` and ``act`` a sweep of launch configurations
(``EAVSS_TRITON_CONFIG="BLOCK_T,BLOCK_D,num_warps,programs_per_sm"``; a failing one is recorded),
and for wide ``act`` the tiled two-read path's (:data:`TILED_CONFIGS`).
Without ``--cases`` it profiles the Llama-3-8B ``resid_post`` case (8 x 2048 x 4096) as before.
With ``--best-config-file`` the fastest configuration of the first swept case is written there if
it beats the default by more than 3 %, else an empty line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from eavss.stats.accumulators import NUM_FIELDS
from eavss.stats.reduce import SparsityRule, block_influence_sums, reduce_activations_ext

CONFIGS = ["", "1,0,8,4", "1,0,4,2", "1,0,4,8", "2,0,4,4", "2,0,8,4", "1,0,2,4"]
"""Register-path configurations (D <= 8192), as profiled before."""

CHUNKED_CONFIGS = ["", "4,2048,8,4", "1,4096,8,4"]
"""Wide rows read in chunks, each row twice (the one-read kernel's path, forced here by ``BLOCK_D``; see
:data:`ROW_CONFIGS` for the whole row)."""

TILED_CONFIGS = ["T:off", "T:on", "T:4,1024,4,8,1024,8,8", "T:1,4096,8,2,2048,8,4", "T:2,2048,8,4,2048,8,8",
                 "T:4,2048,8,8,512,4,8", "T:2,1024,2,2,1024,4,16", "T:1,2048,4,4,512,2,16", "T:2,2048,4,8,1024,8,8",
                 "T:2,2048,4,4,1024,4,4", "T:2,2048,4,4,1024,4,16"]
"""The tiled two-read path (``T:`` + ``$EAVSS_TILED_CONFIG``: ``off`` = the one-read kernel, ``on`` = tiled
with its default, or ``BLOCK_T_A,BLOCK_D_A,warps_A,BLOCK_T_B,BLOCK_D_B,warps_B,programs_per_sm``)."""

GATED_CONFIGS = ["T:8,256,8,4,1024,4,8", "T:8,256,8,4,1024,4,32", "T:1,1024,4,4,1024,4,16", "T:1,1024,4,4,1024,4,32",
                 "T:4,256,4,4,1024,4,16", "T:8,256,8,2,2048,4,16", "T:8,256,8,4,1024,8,16", "T:16,128,8,4,1024,4,16",
                 "T:8,512,16,4,1024,4,16", "T:4,512,8,4,1024,4,16"]
"""The gated MLP path's sweep (``T:`` + ``$EAVSS_TILED_CONFIG``): its kernels compute a SiLU per element
read, so fewer elements per thread (more warps resident) than the plain tiled path's configurations."""

MODES = ("post", "act", "act_nopool", "delta", "delta_nobi", "delta_sub", "bi", "bi_eager", "silu", "act_silu",
         "silu_mul", "gated", "gated_gate")

ROW_CONFIGS = ["", "1,0,16,4,0,0", "1,0,16,4,1,0", "1,0,16,4,0,1", "1,0,8,4,1,1", "1,0,16,2,1,1", "1,0,32,2,1,1",
               "1,0,8,2,1,1", "2,0,16,4,1,1"]
"""Whole-row configurations (``BLOCK_T,0,num_warps,programs_per_sm,split,joint``): the row in two
power-of-two pieces or not, joint or separate reductions (``0,0`` = the configuration before both),
and the warps and programs per SM around the default."""


def kernel_times(fn, reps: int, device: str = "cuda") -> dict:
    """Mean device microseconds per call of each CUDA kernel launched by ``fn`` (on a CPU: self CPU
    time per top-level operator, for smoke runs only)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        if cuda:
            torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        if cuda:
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        else:
            t = ev.self_cpu_time_total
        if t:
            out[ev.key] = t / reps
    return out


def parse_case(spec: str) -> tuple[int, int, int, str]:
    shape, _, mode = spec.partition(":")
    B, T, D = (int(v) for v in shape.lower().split("x"))
    mode = mode or "post"
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r} in case {spec!r}; choose from {MODES}")
    return B, T, D, mode


def _reread(what: str, fn, *args, **kw):
    """``fn(*args, **kw)`` with the gated path's column kernel reading ``what`` (``GATED_REREAD``)."""
    from eavss.stats import _triton

    old, _triton.GATED_REREAD = _triton.GATED_REREAD, what
    try:
        return fn(*args, **kw)
    finally:
        _triton.GATED_REREAD = old


def profile_case(B: int, T: int, D: int, mode: str, reps: int, sweep: bool, dev: str = "cuda",
                 extra: tuple = (), only_extra: bool = False) -> dict:
    """Kernel times of one case (see the module doc); the tensors are freed on return."""
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16, generator=g)
    a = (x.float() + 0.5 * torch.randn(B, T, D, device=dev, generator=g)).to(torch.bfloat16)
    m = torch.ones(B, T, dtype=torch.bool, device=dev)
    acc = torch.zeros(1, NUM_FIELDS, dtype=torch.float64, device=dev)
    rule = SparsityRule()
    elem = a.numel() * a.element_size()
    fns = {
        "post": (lambda: reduce_activations_ext(a, m, rule, x, True, acc=acc), 2 * elem),
        "act": (lambda: reduce_activations_ext(a, m, rule, None, True, acc=acc), elem),
        "act_nopool": (lambda: reduce_activations_ext(a, m, rule, None, False, acc=acc), elem),
        "delta": (lambda: reduce_activations_ext(a, m, rule, x, True, acc=acc, delta=True, block_influence=True),
                  2 * elem),
        "delta_nobi": (lambda: reduce_activations_ext(a, m, rule, x, True, acc=acc, delta=True,
                                                      block_influence=False), 2 * elem),
        "delta_sub": (lambda: reduce_activations_ext(a - x, m, rule, None, True, acc=acc), 2 * elem),
        "bi": (lambda: block_influence_sums(a, x, m, acc=acc), 2 * elem),
        "bi_eager": (lambda: block_influence_sums(a, x, m, implementation="eager"), 2 * elem),
        "silu": (lambda: torch.nn.functional.silu(a), 2 * elem),  # read the gate, write the activation
        "act_silu": (lambda: reduce_activations_ext(a, m, rule, None, True, acc=acc, silu_out=torch.empty_like(a)),
                     2 * elem),
        # gated MLP (x stands for up_proj(x)): read gate and up, write the product, at the least
        "silu_mul": (lambda: torch.nn.functional.silu(a) * x, 3 * elem),
        "gated": (lambda: reduce_activations_ext(a, m, rule, None, True, acc=acc, silu_out=torch.empty_like(a), up=x),
                  3 * elem),
        "gated_gate": (lambda: _reread("gate", reduce_activations_ext, a, m, rule, None, True, acc=acc,
                                       silu_out=torch.empty_like(a), up=x), 3 * elem),
    }
    fn, need = fns[mode]
    res = {"shape": [B, T, D], "mode": mode, "dtype": "bfloat16", "bytes_read_min": need,
           "bytes_note": "the tensors the site must read once (delta: out and x, from which out - x is formed)",
           "configs": {}}
    with torch.inference_mode():
        res["copy_us"] = sum(kernel_times(lambda: a.clone(), reps, dev).values())
        res["copy_TBps"] = 2 * elem / res["copy_us"] / 1e6  # read + write
        res["floor_us_at_copy_bandwidth"] = need / (res["copy_TBps"] * 1e6)
        if not sweep:
            configs = [""]
        elif mode in ("act", "act_nopool", "act_silu") and D > 8192:
            configs = ([""] if only_extra else CHUNKED_CONFIGS + ROW_CONFIGS[1:]) + [c for c in extra if c]
            configs += TILED_CONFIGS if mode in ("act", "act_nopool") else []
        elif mode in ("gated", "gated_gate"):  # always the tiled kernels: sweep their shapes
            configs = [""] + [c for c in extra if c] + ([] if only_extra else GATED_CONFIGS)
        elif mode in ("post", "act", "delta", "delta_nobi", "bi"):
            configs = CONFIGS if mode in ("post", "act") else [""]
            configs = configs + ["1,0,4,4,1,0", "1,0,8,2,1,1", "1,0,8,4,1,1"]
        else:
            configs = [""]
        for cfg in configs:
            var = "EAVSS_TILED_CONFIG" if cfg.startswith("T:") else "EAVSS_TRITON_CONFIG"
            if cfg:
                os.environ[var] = cfg.removeprefix("T:")
            else:
                os.environ.pop("EAVSS_TRITON_CONFIG", None)
            try:
                kt = kernel_times(fn, reps, dev)
                main_us = sum(v for k, v in kt.items() if "token_stats" in k or "tiled" in k)
                fin_us = sum(v for k, v in kt.items() if "finish" in k)
                total = sum(kt.values())
                res["configs"][cfg or "default"] = {
                    "main_us": main_us, "finish_us": fin_us, "total_us": total, "kernels": kt,
                    "TBps_main": need / main_us / 1e6 if main_us and mode != "delta_sub" else None,
                    "TBps_total": need / total / 1e6 if total else None}
            except Exception as e:  # noqa: BLE001 - a configuration that fails to compile
                res["configs"][cfg or "default"] = {"error": repr(e)[:300]}
            finally:
                os.environ.pop(var, None)
            c = res["configs"][cfg or "default"]
            print(f"  {B}x{T}x{D}:{mode} {cfg or 'default':14s} "
                  + (f"total {c['total_us']:.1f} us, main {c['main_us']:.1f} us" if "total_us" in c else c["error"]),
                  flush=True)
    res["default_config"] = res["default_tiled_config"] = None
    if torch.device(dev).type == "cuda":
        from eavss.stats._triton import launch_config, tiled_config

        res["default_config"] = launch_config(B, T, D, torch.device(dev))
        res["default_tiled_config"] = tiled_config(B, T, D, torch.device(dev))  # None: the one-read kernel
    ok = {k: v for k, v in res["configs"].items() if v.get("total_us")}
    res["best"] = min(ok, key=lambda k: ok[k]["total_us"]) if ok else "default"
    d = ok.get("default")
    print(f"{B}x{T}x{D}:{mode}: copy {res['copy_us']:.1f} us ({res['copy_TBps']:.2f} TB/s), floor "
          f"{res['floor_us_at_copy_bandwidth']:.1f} us; default total {d['total_us'] if d else float('nan'):.1f} us; "
          f"best {res['best']}", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--best-config-file", default=None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cases", default=None, help="comma-separated BxTxD:MODE (default: 8x2048x4096:post)")
    ap.add_argument("--no-sweep", action="store_true", help="the default launch configuration only")
    ap.add_argument("--extra-configs", default="", help="more configurations for the wide act cases, separated by ';' "
                    "(each BLOCK_T,BLOCK_D,num_warps,programs_per_sm[,split[,joint[,num_stages]]])")
    ap.add_argument("--only-extra", action="store_true", help="wide act cases: the default and --extra-configs only")
    ap.add_argument("--device", default="cuda", help="cuda (what it is for); cpu: smoke run of the code path")
    args = ap.parse_args(argv)
    if args.cases is None:  # the earlier single-case output, unchanged in form
        res = profile_case(8, 2048, 4096, "post", args.reps, not args.no_sweep, args.device)
        with torch.inference_mode():
            g = torch.Generator(device=args.device).manual_seed(0)
            x = torch.randn(8, 2048, 4096, device=args.device, dtype=torch.bfloat16, generator=g)
            m = torch.ones(8, 2048, dtype=torch.bool, device=args.device)
            # the no-accumulator path (public reduce_activations): its extra small torch ops
            kt = kernel_times(lambda: reduce_activations_ext(x, m, SparsityRule(), x, True), args.reps, args.device)
        res["public_path_total_us"] = sum(kt.values())
        res["public_path_kernels"] = kt
        first = res
    else:
        cases = [parse_case(c.strip()) for c in args.cases.split(",") if c.strip()]
        res = {"cases": {}}
        for B, T, D, mode in cases:
            res["cases"][f"{B}x{T}x{D}:{mode}"] = profile_case(B, T, D, mode, args.reps, not args.no_sweep, args.device,
                                                               tuple(args.extra_configs.split(";")), args.only_extra)
            if args.out:  # after every case: a run stopped by a time cap keeps what it measured
                Path(args.out).write_text(json.dumps(res, indent=1))
        swept = [v for v in res["cases"].values() if len(v["configs"]) > 1]
        first = swept[0] if swept else next(iter(res["cases"].values()))
    if args.best_config_file:
        ok = {k: v for k, v in first["configs"].items() if v.get("total_us")}
        best = first["best"]
        choose = best != "default" and "default" in ok and ok[best]["total_us"] < 0.97 * ok["default"]["total_us"]
        Path(args.best_config_file).write_text((best if choose else "") + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
