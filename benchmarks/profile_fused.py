"""GPU time of the fused reduction's kernels (torch.profiler / CUPTI), per launch configuration.

    PYTHONPATH=src python3 benchmarks/profile_fused.py --out $OUT/profile.json [--best-config-file F]

For a Llama-3-8B-shaped activation (8 x 2048 x 4096, bf16) with its layer input, pooled variance
on and the in-place accumulation the collector uses: the device time of the main kernel and of
the finish kernel, against a device-to-device copy of the activation (the bandwidth yardstick).
With ``--best-config-file`` the fastest configuration is written there (``EAVSS_TRITON_CONFIG``
syntax) if it beats the default by more than 3 %, else an empty line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from eavss.stats.accumulators import NUM_FIELDS
from eavss.stats.reduce import SparsityRule, reduce_activations_ext

CONFIGS = ["", "1,0,8,4", "1,0,4,2", "1,0,4,8", "2,0,4,4", "2,0,8,4", "1,0,2,4"]


def kernel_times(fn, reps: int) -> dict:
    """Mean device microseconds per call of each CUDA kernel launched by ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t:
            out[ev.key] = t / reps
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--best-config-file", default=None)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    dev = "cuda"
    B, T, D = 8, 2048, 4096
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, T, D, device=dev, dtype=torch.bfloat16, generator=g)
    a = (x.float() + 0.5 * torch.randn(B, T, D, device=dev, generator=g)).to(torch.bfloat16)
    m = torch.ones(B, T, dtype=torch.bool, device=dev)
    acc = torch.zeros(1, NUM_FIELDS, dtype=torch.float64, device=dev)
    rule = SparsityRule()
    res = {"shape": [B, T, D], "dtype": "bfloat16", "bytes_read_min": 2 * a.numel() * 2, "configs": {}}
    with torch.inference_mode():
        res["copy_us"] = sum(kernel_times(lambda: a.clone(), args.reps).values())
        for cfg in CONFIGS:
            if cfg:
                os.environ["EAVSS_TRITON_CONFIG"] = cfg
            else:
                os.environ.pop("EAVSS_TRITON_CONFIG", None)
            try:
                kt = kernel_times(lambda: reduce_activations_ext(a, m, rule, x, True, acc=acc), args.reps)
                main_us = sum(v for k, v in kt.items() if "token_stats" in k)
                fin_us = sum(v for k, v in kt.items() if "finish" in k)
                res["configs"][cfg or "default"] = {"main_us": main_us, "finish_us": fin_us,
                                                    "total_us": sum(kt.values()), "kernels": kt,
                                                    "GBps": res["bytes_read_min"] / main_us / 1e3 if main_us else None}
            except Exception as e:  # noqa: BLE001 - a configuration that fails to compile
                res["configs"][cfg or "default"] = {"error": repr(e)[:300]}
            print(f"  {cfg or 'default':10s} {res['configs'][cfg or 'default']}", flush=True)
        os.environ.pop("EAVSS_TRITON_CONFIG", None)
        # the no-accumulator path (public reduce_activations): its extra small torch ops
        kt = kernel_times(lambda: reduce_activations_ext(a, m, rule, x, True), args.reps)
        res["public_path_total_us"] = sum(kt.values())
        res["public_path_kernels"] = kt
    from eavss.stats._triton import launch_config

    res["default_config"] = launch_config(B, T, D, torch.device(dev))
    ok = {k: v for k, v in res["configs"].items() if v.get("total_us")}
    best = min(ok, key=lambda k: ok[k]["total_us"]) if ok else "default"
    res["best"] = best
    print(f"copy {res['copy_us']:.1f} us; best {best}: {ok.get(best)}; default: {ok.get('default')}", flush=True)
    if args.best_config_file:
        choose = best != "default" and ok[best]["total_us"] < 0.97 * ok["default"]["total_us"]
        Path(args.best_config_file).write_text((best if choose else "") + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
