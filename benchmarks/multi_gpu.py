"""Data-parallel statistics over several GPUs with torchrun, and device_map="auto" with hooks.

Speed-up (run once with 1 process and once with N; same model, same tokens)::

    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=1 benchmarks/multi_gpu.py speed --out $OUT/mg1.json
    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=2 benchmarks/multi_gpu.py speed --out $OUT/mg2.json
    python3 benchmarks/multi_gpu.py compare $OUT/mg1.json $OUT/mg2.json

Each rank builds the same random-weight model (seeded) on its GPU, shards the batches
(:func:`eavss.distributed.shard`) and runs ``collect_statistics(..., distributed=True)`` (NCCL
``all_reduce`` of the float64 sums); the time is the whole call on the slowest rank, after a
warm-up batch, between barriers. ``compare`` prints the speed-up and the largest relative
difference of the sums (equal up to float64 summation order).

device_map check (a model split over the GPUs by accelerate vs. the same model on one GPU)::

    python3 benchmarks/multi_gpu.py device-map --out $OUT/devmap.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")


def _model(shape: str, dtype: torch.dtype, device: str, seed: int, **overrides):
    from transformers import AutoModelForCausalLM

    from eavss.testing.tiny import real_model_shape_config

    cfg = real_model_shape_config(shape, **overrides)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return m.eval()


def _batches(vocab: int, b: int, t: int, n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(10, vocab, (b, t), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def speed(args) -> int:
    from eavss import distributed as edist
    from eavss.stats import collect_statistics

    edist.init_from_env("cuda")
    dev = edist.device_for_rank("cuda")
    torch.cuda.set_device(torch.device(dev).index or 0)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    t_build = time.perf_counter()
    model = _model(args.model, dtype, dev, args.seed)
    t_build = time.perf_counter() - t_build
    batches = _batches(model.config.vocab_size, args.batch_size, args.seq_len, args.num_batches, args.seed)
    mine = edist.shard(batches)
    with torch.inference_mode():  # warm-up (kernel compilation, cuBLAS handles), not distributed
        collect_statistics(model, mine[:1], progress=False)
    torch.cuda.synchronize()
    edist.barrier()
    t0 = time.perf_counter()
    stats, info = collect_statistics(model, mine, progress=False, distributed=edist.is_distributed())
    torch.cuda.synchronize()
    edist.barrier()
    secs = time.perf_counter() - t0
    if edist.is_main():
        res = {"world_size": edist.world_size(), "seconds": secs, "tokens": args.batch_size * args.seq_len * args.num_batches,
               "tokens_per_second": args.batch_size * args.seq_len * args.num_batches / secs, "info": info,
               "model": args.model, "dtype": args.dtype, "batch_size": args.batch_size, "seq_len": args.seq_len,
               "num_batches": args.num_batches, "build_seconds": t_build, "gpu": torch.cuda.get_device_name(),
               "gpus_visible": torch.cuda.device_count(), "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
               "sums": stats.sums.tolist(), "peak_bytes_rank0": torch.cuda.max_memory_allocated()}
        Path(args.out).write_text(json.dumps(res))
        print(f"world {res['world_size']}: {secs:.2f} s, {res['tokens_per_second']:.0f} tokens/s", flush=True)
    edist.shutdown()
    return 0


def compare(args) -> int:
    one, many = (json.loads(Path(p).read_text()) for p in (args.one, args.many))
    a, b = np.asarray(one["sums"]), np.asarray(many["sums"])
    rel = float((np.abs(a - b) / np.maximum(np.abs(a), 1e-12)).max())
    res = {"speedup": one["seconds"] / many["seconds"], "world_sizes": [one["world_size"], many["world_size"]],
           "seconds": [one["seconds"], many["seconds"]], "tokens_per_second": [one["tokens_per_second"],
                                                                               many["tokens_per_second"]],
           "max_rel_diff_sums": rel}
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


def device_map(args) -> int:
    from transformers import AutoModelForCausalLM

    from eavss.stats import collect_statistics

    n = torch.cuda.device_count()
    res = {"gpus": n}
    with tempfile.TemporaryDirectory() as d:
        src = _model(args.dm_model, torch.bfloat16, "cpu", args.seed, num_hidden_layers=args.dm_layers)
        src.save_pretrained(d)
        per_layer = sum(p.numel() for p in src.model.layers[0].parameters()) * 2
        emb = src.model.embed_tokens.weight.numel() * 2
        del src
        one = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map={"": 0}).eval()
        # "auto" with GPU 0 capped so that about half of the layers land on GPU 1
        cap = emb + per_layer * (args.dm_layers // 2) + (256 << 20)
        max_memory = {0: cap, **{i: "60GiB" for i in range(1, n)}}
        split = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="auto",
                                                     max_memory=max_memory).eval()
        res["hf_device_map"] = {k: str(v) for k, v in split.hf_device_map.items()}
        res["devices_used"] = sorted({str(v) for v in split.hf_device_map.values()})
        batches = _batches(one.config.vocab_size, 4, 512, 3, args.seed)
        with torch.inference_mode():
            s1, i1 = collect_statistics(one, batches, progress=False)
            s2, i2 = collect_statistics(split, batches, progress=False)
        rel = np.abs(s1.sums - s2.sums) / np.maximum(np.abs(s1.sums), 1e-12)
        res["max_rel_diff_sums"] = float(rel.max())
        res["per_field_max_rel_diff"] = {f: float(rel[..., i].max()) for i, f in enumerate(
            __import__("eavss.stats.accumulators", fromlist=["FIELDS"]).FIELDS)}
        res["tokens_per_second"] = {"one_gpu": i1["tokens_per_second"], "device_map_auto": i2["tokens_per_second"]}
        res["model"] = f"{args.dm_model} shape, {args.dm_layers} layers, bf16, random weights"
    print(json.dumps({k: v for k, v in res.items() if k != "hf_device_map"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--num-batches", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("compare")
    p.add_argument("one")
    p.add_argument("many")
    p.add_argument("--out")
    p = sub.add_parser("device-map")
    p.add_argument("--dm-model", default="llama3.2-1b")
    p.add_argument("--dm-layers", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = ap.parse_args()
    return {"speed": speed, "compare": compare, "device-map": device_map}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
