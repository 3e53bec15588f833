"""GPU check of the fused Triton reduction: correctness against a float64 reference, then the
kernel alone timed against the eager and the simple reductions (CUDA events, median).

    PYTHONPATH=src python3 benchmarks/check_fused.py --out $OUT/fused.json

Correctness: fresh random activations (bfloat16 and float32, residual-stream-like scale with a few
large channels), a random token mask whose excluded positions hold NaN/Inf, one masked Inf token,
both sparsity rules, register (D <= 32768) and chunked (D > 32768) kernel paths. Reference: the eager
reduction on a float64 copy on the CPU (the same function computed in float64). Reported: max
relative error per field. Then block influence at sites other than resid_post (the fused kernel
vs. the eager form, returned and added into an accumulator), ``resid_delta`` formed in the kernel
(``delta=True``) vs. a float64 reference and vs. the kernel on the materialised difference, and
tiny models on the GPU vs. on the CPU through the whole collector (at resid_post, mlp_act, where
block influence comes from a second hook, and resid_delta). The correctness cases, the
accumulator and the collector checks run again with the tiled two-read path forced at every width
(``EAVSS_TILED_CONFIG=on``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import simple_reduce  # noqa: E402

from eavss.stats.accumulators import FIELDS  # noqa: E402
from eavss.stats.reduce import SparsityRule, reduce_activations_ext  # noqa: E402


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> dict:
    got, ref = got.double().cpu(), ref.double().cpu()
    scale = ref.abs().amax(0).clamp_min(1e-12)  # per field
    e = ((got - ref).abs().amax(0) / scale)
    return {FIELDS[i]: float(e[i]) for i in range(len(FIELDS))}


def make_inputs(B, T, D, dtype, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(B, T, D, generator=g) * 2.0
    x[..., :3] *= 40.0  # a few massive channels, as in real residual streams
    a = x + 0.5 * torch.randn(B, T, D, generator=g) + 0.05
    m = torch.rand(B, T, generator=g) > 0.25
    m[:, 0] = True
    a[~m] = float("nan")
    if T > 2:
        a[0, 1, 5] = float("inf")
        m[0, 1] = True  # a counted token holding Inf: excluded and counted as non-finite
        a[-1, 2] = float("-inf")
    return a.to(dtype).to(device), x.to(dtype).to(device), m.to(device)


CASES = [(8, 512, 4096, torch.bfloat16), (8, 512, 4096, torch.float32), (3, 37, 576, torch.bfloat16),
         (2, 100, 14336, torch.bfloat16), (4, 64, 896, torch.float16), (1, 1, 4096, torch.bfloat16),
         (2, 64, 18944, torch.bfloat16), (1, 16, 40960, torch.bfloat16),  # whole-row up to 32768, chunked above
         (6, 1, 14336, torch.bfloat16), (6, 1, 18944, torch.bfloat16)]  # decoding steps: one token, tuned widths


def check_correctness(device, cases=CASES) -> list[dict]:
    rows = []
    for i, (B, T, D, dt) in enumerate(cases):
        for rule in (SparsityRule(), SparsityRule(mode="absolute", epsilon=0.5)):
            for with_x, pooled in ((True, True), (False, False)):
                a, x, m = make_inputs(B, T, D, dt, device, seed=100 + i)
                got, _ = reduce_activations_ext(a, m, rule, x if with_x else None, pooled, implementation="fused")
                ref, _ = reduce_activations_ext(a.double().cpu(), m.cpu(), rule, x.double().cpu() if with_x else None,
                                                pooled, implementation="eager")
                err = rel_err(got, ref)
                finite = bool(torch.isfinite(got).all())
                rows.append({"B": B, "T": T, "D": D, "dtype": str(dt), "rule": rule.mode, "layer_input": with_x,
                             "pooled": pooled, "finite": finite, "max_rel_err": max(err.values()), "per_field": err})
                print(f"  {B}x{T}x{D} {dt} {rule.mode:8s} x={with_x!s:5s} pooled={pooled!s:5s} finite={finite} "
                      f"max rel err {max(err.values()):.2e}", flush=True)
    return rows


def check_accumulate(device) -> dict:
    """The collector's path (finish kernel adding into a grouped accumulator) vs. the returned sums."""
    out = {}
    for (B, T, D, dt) in [(8, 300, 4096, torch.bfloat16), (5, 33, 14336, torch.bfloat16), (6, 50, 576, torch.float32)]:
        a, x, m = make_inputs(B, T, D, dt, device, seed=7)
        rule = SparsityRule()
        groups = torch.tensor([i % 3 for i in range(B)], device=device)
        red, _ = reduce_activations_ext(a, m, rule, x, True, implementation="fused")
        ref = torch.zeros(3, red.shape[1], dtype=torch.float64, device=device).index_add_(0, groups, red)
        for acc_dtype in (torch.float64, torch.float32):
            acc = torch.zeros(3, red.shape[1], dtype=acc_dtype, device=device)
            r2, _ = reduce_activations_ext(a, m, rule, x, True, implementation="fused", acc=acc, groups=groups)
            assert r2 is None
            reduce_activations_ext(a, m, rule, x, True, implementation="fused", acc=acc, groups=groups)  # twice
            err = ((acc.double() - 2 * ref).abs().amax(0) / (2 * ref).abs().amax(0).clamp_min(1e-12)).max()
            out[f"{B}x{T}x{D} {dt} acc {acc_dtype}"] = float(err)
            print(f"  accumulate {B}x{T}x{D} {dt} into {acc_dtype}: max rel err {float(err):.2e}", flush=True)
    return out


def check_collector(device) -> dict:
    from eavss.data.calibration import make_batches
    from eavss.stats import collect_statistics
    from eavss.testing.tiny import tiny_model

    import numpy as np

    g = np.random.default_rng(0)
    seqs = [g.integers(5, 500, size=int(g.integers(3, 40))).tolist() for _ in range(9)]
    out = {}
    runs = [(arch, "resid_post") for arch in ("llama", "gemma3", "gpt2")]
    runs += [("llama", "mlp_act"), ("llama", "resid_delta"), ("qwen2", "mlp_act")]  # block influence by a 2nd hook
    for arch, site in runs:
        m = tiny_model(arch, seed=1)
        cpu, _ = collect_statistics(m, make_batches(seqs, 4, 0), site=site, progress=False)
        gpu, _ = collect_statistics(m.to(device), make_batches(seqs, 4, 0), site=site, progress=False)
        rel = np.abs(gpu.sums - cpu.sums).max(axis=(0, 1)) / np.maximum(np.abs(cpu.sums).max(axis=(0, 1)), 1e-12)
        key = arch if site == "resid_post" else f"{arch}@{site}"
        out[key] = {FIELDS[i]: float(rel[i]) for i in range(len(FIELDS))}
        print(f"  collector tiny-{arch} at {site} GPU vs CPU: max rel diff {float(rel.max()):.2e}", flush=True)
    return out


SILU_CASES = [(2, 64, 18944), (2, 100, 14336), (3, 37, 576), (1, 16, 40960), (6, 1, 18944)]


def check_silu(device, gated: bool = False) -> dict:
    """The fused SiLU (``silu_out``) against ``torch.nn.functional.silu`` to the bit, for each dtype
    and kernel path (whole row, split row, chunked, one-token rows), with extreme inputs (exp overflow,
    signed zeros, subnormals, NaN/Inf in uncounted positions); its statistics against the kernel run on
    torch's SiLU output; then tiny SiLU models through the collector: ``auto`` (replaced forward) vs
    ``hook``, statistics and logits. ``gated``: the same for the gated MLP path (``up`` given: the
    product ``silu(gate) * up`` to the bit, the statistics of ``silu(gate)`` also against the float64
    reference, the collector's ``mlp`` mode)."""
    import numpy as np

    from eavss.stats.collector import ActivationStatsCollector, silu_matches_torch

    out = {"cases": [], "matches_torch": {}}
    rule = SparsityRule()
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        out["matches_torch"][str(dtype)] = silu_matches_torch(torch.device(device), dtype, gated=gated)
        for i, (B, T, D) in enumerate(SILU_CASES):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(B, T, D, generator=g) * 4
            flat = x.view(-1)
            special = torch.tensor([0.0, -0.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4, 1e-40, -1e-40, 1e-30, 3.0e38,
                                    -3.0e38, float("inf"), float("-inf"), float("nan")])
            flat[:len(special)] = special[:flat.numel()]
            x = x.to(dtype).to(device)
            m = torch.ones(B, T, dtype=torch.bool, device=device)
            m[0, 0] = False  # the row with NaN/Inf is not counted (its SiLU is still written)
            y = torch.empty_like(x)
            up = (torch.randn(B, T, D, generator=g) * 2).to(dtype).to(device) if gated else None
            sums = reduce_activations_ext(x, m, rule, None, True, silu_out=y, up=up)[0]
            if gated:  # the collector's form: the gate a private temporary, its SiLU stored into it
                y2 = torch.empty_like(x)
                sums2 = reduce_activations_ext(x.clone(), m, rule, None, True, silu_out=y2, up=up, overwrite_act=True)[0]
                overwrite_same = bool(torch.equal(sums2, sums) and torch.equal(y2.nan_to_num(), y.nan_to_num()))
            act = torch.nn.functional.silu(x)
            ref = act * up if gated else act
            same = (y == ref) | (y.isnan() & ref.isnan())
            bits = torch.equal(y.view(torch.int16 if dtype != torch.float32 else torch.int32)[~ref.isnan()],
                               ref.view(torch.int16 if dtype != torch.float32 else torch.int32)[~ref.isnan()])
            on_ref = reduce_activations_ext(act, m, rule, None, True)[0]
            f64 = reduce_activations_ext(act.double(), m, rule, None, True, implementation="eager")[0]
            row = {"shape": [B, T, D], "dtype": str(dtype), "bit_equal": bool(bits),
                   "n_differ": int((~same).sum()), "max_abs_diff": float((y.float() - ref.float()).nan_to_num().abs().max()),
                   "stats_vs_kernel_on_torch_silu": float((sums - on_ref).abs().max()),
                   "stats_max_rel_err_vs_float64": max(rel_err(sums, f64).values())}
            if gated:
                row["overwrite_act_identical"] = overwrite_same
                row["bit_equal"] = row["bit_equal"] and overwrite_same
            out["cases"].append(row)
            print(f"  {'gated' if gated else 'silu'} {dtype} {B}x{T}x{D}: bit-equal {row['bit_equal']} "
                  f"(differ {row['n_differ']}), stats vs torch's SiLU output {row['stats_vs_kernel_on_torch_silu']:.2e}, "
                  f"vs float64 {row['stats_max_rel_err_vs_float64']:.2e}", flush=True)
    out["all_bit_equal"] = all(r["bit_equal"] for r in out["cases"])

    from eavss.data.calibration import make_batches
    from eavss.testing.tiny import tiny_model

    gen = np.random.default_rng(1)
    seqs = [gen.integers(5, 500, size=int(gen.integers(3, 40))).tolist() for _ in range(9)]
    out["collector"] = {}
    for arch in ("llama", "qwen2"):
        for dtype in (torch.float32, torch.bfloat16):
            model = tiny_model(arch, seed=1).to(device=device, dtype=dtype)
            res = {}
            for mode in ("hook", "mlp" if gated else "auto"):
                os.environ["EAVSS_FUSE_SILU"] = mode
                col = ActivationStatsCollector(model, site="mlp_act", group_names=("a", "b"))
                logits = []
                with col, torch.inference_mode():
                    for b in make_batches(seqs, 4, 0):
                        col.set_batch(b["attention_mask"].to(device).bool(), torch.arange(len(b["input_ids"])) % 2)
                        logits.append(model(input_ids=b["input_ids"].to(device),
                                            attention_mask=b["attention_mask"].to(device)).logits)
                res[mode] = (col.result().sums, logits, col.fused_silu_calls)
            os.environ.pop("EAVSS_FUSE_SILU", None)
            (sh, lh, ch), (sa, la, ca) = res["hook"], res["mlp" if gated else "auto"]
            key = f"{arch}/{dtype}"
            out["collector"][key] = {"replaced_calls": ca, "hook_calls": ch,
                                     "sums_max_abs_diff": float(np.abs(sa - sh).max()),
                                     "logits_bit_equal": all(torch.equal(p, q) for p, q in zip(la, lh))}
            print(f"  collector tiny-{key} mlp_act {'mlp' if gated else 'auto'} vs hook: {out['collector'][key]}",
                  flush=True)
    return out


def check_block_influence(device) -> dict:
    """``block_influence_sums`` (the collector's second hook at sites other than resid_post): the
    fused kernel on the GPU vs. the eager form on a float64 host copy, per sequence."""
    from eavss.stats.reduce import block_influence_sums

    out = {}
    for (B, T, D, dt) in [(4, 300, 4096, torch.bfloat16), (3, 37, 3584, torch.bfloat16), (2, 50, 576, torch.float32)]:
        a, x, m = make_inputs(B, T, D, dt, device, seed=11)
        a = torch.where(m[..., None], a, torch.zeros((), dtype=a.dtype, device=a.device))  # finite everywhere:
        a[0, 1, 5] = float("inf")  # except one counted Inf token, left out by both forms
        got = block_influence_sums(a, x, m, implementation="fused")
        ref = block_influence_sums(a.double().cpu(), x.double().cpu(), m.cpu(), implementation="eager")
        err = float(((got.double().cpu() - ref).abs() / ref.abs().clamp_min(1e-12)).max())
        from eavss.stats.accumulators import F, NUM_FIELDS

        acc = torch.zeros(2, NUM_FIELDS, dtype=torch.float64, device=device)  # the collector's path: into acc
        grp = torch.tensor([i % 2 for i in range(B)], device=device)
        block_influence_sums(a, x, m, implementation="fused", acc=acc, groups=grp)
        want = torch.zeros(2, dtype=torch.float64).index_add_(0, grp.cpu(), got.double().cpu())
        e_acc = float(((acc[:, F["bi_sum"]].cpu() - want).abs() / want.abs().clamp_min(1e-12)).max())
        others = float(acc[:, [i for i in range(NUM_FIELDS) if i != F["bi_sum"]]].abs().max())
        out[f"{B}x{T}x{D} {dt}"] = err
        out[f"{B}x{T}x{D} {dt} accumulate"] = {"vs_returned": e_acc, "other_fields_max_abs": others}
        print(f"  block influence fused vs float64 eager {B}x{T}x{D} {dt}: max rel err {err:.2e} "
              f"(finite {bool(torch.isfinite(got).all())}); into acc {e_acc:.2e}, other fields {others:g}", flush=True)
    return out


def check_delta(device) -> dict:
    """The ``resid_delta`` site formed in the kernel (``delta=True``: statistics of ``out - x`` rounded
    to the input dtype, block influence of ``x`` vs ``out``) vs. a float64 reference on the host:
    the eager reduction of ``(out - x)`` subtracted by torch on the GPU, plus the eager block
    influence of float64 copies; and vs. the fused kernel on that materialised difference."""
    from eavss.stats.accumulators import F
    from eavss.stats.reduce import block_influence_sums

    out = {}
    for (B, T, D, dt) in [(4, 300, 4096, torch.bfloat16), (3, 37, 3584, torch.bfloat16), (2, 50, 576, torch.float32),
                          (2, 64, 896, torch.float16), (1, 16, 40960, torch.bfloat16)]:
        o, x, m = make_inputs(B, T, D, dt, device, seed=13)
        rule = SparsityRule()
        for bi in (True, False):
            got, _ = reduce_activations_ext(o, m, rule, x, True, implementation="fused", delta=True, block_influence=bi)
            d = o - x  # torch's rounding of the difference: what the site is
            ref, _ = reduce_activations_ext(d.double().cpu(), m.cpu(), rule, None, True, implementation="eager")
            if bi:
                ref[:, F["bi_sum"]] = block_influence_sums(o.double().cpu(), x.double().cpu(), m.cpu(),
                                                           implementation="eager")
            mat, _ = reduce_activations_ext(d, m, rule, None, True, implementation="fused")
            if bi:
                mat[:, F["bi_sum"]] = block_influence_sums(o, x, m, implementation="fused")
            e_ref, e_mat = rel_err(got, ref), rel_err(got, mat)
            acc = torch.zeros(2, got.shape[1], dtype=torch.float64, device=device)
            grp = torch.tensor([i % 2 for i in range(B)], device=device)
            reduce_activations_ext(o, m, rule, x, True, implementation="fused", delta=True, block_influence=bi,
                                   acc=acc, groups=grp)
            want = torch.zeros_like(acc).index_add_(0, grp, got)
            e_acc = float(((acc - want).abs().amax(0) / want.abs().amax(0).clamp_min(1e-12)).max())
            key = f"{B}x{T}x{D} {dt} bi={bi}"
            out[key] = {"vs_float64_ref": max(e_ref.values()), "vs_materialised_fused": max(e_mat.values()),
                        "accumulate_vs_returned": e_acc, "finite": bool(torch.isfinite(got).all()),
                        "per_field_vs_ref": e_ref}
            print(f"  delta {key}: vs float64 ref {max(e_ref.values()):.2e}, vs fused on out - x "
                  f"{max(e_mat.values()):.2e}, accumulate {e_acc:.2e}", flush=True)
    return out


def bench(fn, reps=50, warmup=5) -> float:
    """Median milliseconds of ``fn`` over ``reps`` CUDA-event-timed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


def time_kernels(device, B=8, T=2048, D=4096) -> dict:
    rule = SparsityRule()
    sets = []
    for k in range(3):  # rotate over inputs larger than L2
        g = torch.Generator(device=device).manual_seed(k)
        x = torch.randn(B, T, D, device=device, dtype=torch.bfloat16, generator=g)
        a = (x.float() + 0.5 * torch.randn(B, T, D, device=device, generator=g)).to(torch.bfloat16)
        sets.append((a, x))
    m = torch.ones(B, T, dtype=torch.bool, device=device)
    it = {"i": 0}

    def nxt():
        it["i"] = (it["i"] + 1) % len(sets)
        return sets[it["i"]]

    res = {"shape": [B, T, D], "dtype": "bfloat16",
           "bytes_read_min": 2 * B * T * D * 2}
    with torch.inference_mode():
        res["fused_ms"] = bench(lambda: reduce_activations_ext(nxt()[0], m, rule, sets[0][1], True,
                                                               implementation="fused"))
        res["fused_no_x_ms"] = bench(lambda: reduce_activations_ext(nxt()[0], m, rule, None, True, implementation="fused"))
        res["eager_ms"] = bench(lambda: reduce_activations_ext(nxt()[0], m, rule, sets[0][1], True,
                                                               implementation="eager"), reps=20)
        res["simple_ms"] = bench(lambda: simple_reduce(nxt()[0], m, rule, sets[0][1], True), reps=20)
        res["copy_ms"] = bench(lambda: nxt()[0].clone())  # read + write of one activation: bandwidth yardstick
        res["fused_GBps"] = res["bytes_read_min"] / res["fused_ms"] / 1e6
        sweep = {}
        for cfg in ("1,0,4,4", "1,0,8,4", "1,0,16,4", "2,0,16,4", "1,0,8,8", "1,0,8,2", "4,1024,8,4", "8,512,8,4"):
            os.environ["EAVSS_TRITON_CONFIG"] = cfg
            try:
                sweep[cfg] = bench(lambda: reduce_activations_ext(nxt()[0], m, rule, sets[0][1], True,
                                                                  implementation="fused"), reps=30)
            except Exception as e:  # noqa: BLE001 - a config that does not compile
                sweep[cfg] = repr(e)[:200]
            finally:
                os.environ.pop("EAVSS_TRITON_CONFIG", None)
        res["config_sweep_ms"] = sweep
    from eavss.stats._triton import launch_config

    res["default_config"] = launch_config(B, T, D, torch.device(device))
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    ap.add_argument("--timing", action="store_true", help="also time whole calls with CUDA events "
                    "(host-launch bound for one call; benchmarks/profile_fused.py gives kernel times)")
    args = ap.parse_args()
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        import triton

        res["triton"] = triton.__version__
    except ImportError:
        res["triton"] = None
    print("correctness (fused vs float64 reference):", flush=True)
    res["correctness"] = check_correctness(args.device)
    res["max_rel_err"] = max(r["max_rel_err"] for r in res["correctness"])
    res["all_finite"] = all(r["finite"] for r in res["correctness"])
    res["accumulate_vs_returned"] = check_accumulate(args.device)
    res["block_influence_fused_vs_eager"] = check_block_influence(args.device)
    res["delta_in_kernel"] = check_delta(args.device)
    res["delta_max_rel_err_vs_float64"] = max(v["vs_float64_ref"] for v in res["delta_in_kernel"].values())
    res["collector_gpu_vs_cpu"] = check_collector(args.device)
    print("tiled two-read path at every width (EAVSS_TILED_CONFIG=on) vs float64 reference:", flush=True)
    os.environ["EAVSS_TILED_CONFIG"] = "on"
    try:
        res["tiled_correctness"] = check_correctness(args.device)
        res["tiled_accumulate_vs_returned"] = check_accumulate(args.device)
        res["tiled_collector_gpu_vs_cpu"] = check_collector(args.device)
    finally:
        os.environ.pop("EAVSS_TILED_CONFIG", None)
    res["tiled_max_rel_err"] = max(r["max_rel_err"] for r in res["tiled_correctness"])
    res["tiled_all_finite"] = all(r["finite"] for r in res["tiled_correctness"])
    print("fused SiLU at mlp_act (vs torch's silu, to the bit):", flush=True)
    res["silu"] = check_silu(args.device)
    print("gated MLP path at mlp_act (silu(gate) * up vs torch's, to the bit; statistics vs float64):", flush=True)
    res["gated"] = check_silu(args.device, gated=True)
    if args.timing:
        print("kernel timing (8 x 2048 x 4096 bf16, with layer input):", flush=True)
        res["timing"] = time_kernels(args.device)
        t = res["timing"]
        print(f"  fused {t['fused_ms']:.3f} ms ({t['fused_GBps']:.0f} GB/s of the 2 tensors read), without x "
              f"{t['fused_no_x_ms']:.3f} ms, eager {t['eager_ms']:.3f} ms, simple {t['simple_ms']:.3f} ms, "
              f"clone {t['copy_ms']:.3f} ms; sweep {t['config_sweep_ms']}; default {t['default_config']}", flush=True)
    print(f"max rel err {res['max_rel_err']:.2e}, all finite {res['all_finite']}; tiled path "
          f"{res['tiled_max_rel_err']:.2e}, all finite {res['tiled_all_finite']}; resid_delta in the kernel "
          f"{res['delta_max_rel_err_vs_float64']:.2e}; fused SiLU bit-equal to torch's: {res['silu']['all_bit_equal']} "
          f"{res['silu']['matches_torch']}; gated product bit-equal: {res['gated']['all_bit_equal']} "
          f"{res['gated']['matches_torch']}, its statistics vs float64 "
          f"{max(r['stats_max_rel_err_vs_float64'] for r in res['gated']['cases']):.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
