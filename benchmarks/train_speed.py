"""Training speed and peak memory of ``eavss mitigate``'s step: k layers full vs. LoRA vs. LoRA on all layers.

Every variant runs the recipe's own training step -- :func:`eavss.training.params.select_trainable`,
:func:`eavss.training.contrastive.contrastive_loss_fn` (InfoNCE at the k layers + LM loss on the truthful
answers) and :func:`eavss.training.loop.train` (AdamW; bf16 with float32 masters and optimiser state when
``--dtype bfloat16``) -- on the same synthetic contrastive batches: ``--batch-size`` examples of one
truthful and ``--negatives`` hallucinated answers each, ``--prompt-len`` + ``--answer-len`` random
token ids per sequence (the shape of a real batch: the few-shot prompt is ~70 tokens on SmolLM2).

Variants: ``full`` (every parameter of the k layers), ``lora`` (LoRA r=8 on every linear map of the
k layers), ``lora_all`` (LoRA on every layer, InfoNCE still at the k layers, as the recipe's control).
Reported per variant: trainable parameters, training tokens/s (all tokens of all sequences, median
over the timed steps' wall time after ``--warmup`` steps), and peak memory: CUDA
``max_memory_allocated`` during the timed steps; on CPU the peak RSS of a fresh process per variant
(``--isolate``, default on CPU; RSS cannot be attributed to one variant inside a shared process).

Layers: ``--layers`` (default ``0,2,4,5,6``, the EAVSS top-5 of SmolLM2-135M-Instruct measured in
docs/hallucination.md; the lowest layer sets how deep the backward pass goes).

Examples::

    # this CPU: the default model, float32
    PYTHONPATH=src .venv/bin/python benchmarks/train_speed.py --out benchmarks/results/train_speed_cpu.json

    # one GPU: Llama-3-8B shape with random weights, bf16 (float32 masters), 8 examples x (1 + 4) x 160 tokens
    PYTHONPATH=src python3 benchmarks/train_speed.py --model shape:llama3-8b --device cuda --dtype bfloat16 \\
        --batch-size 8 --prompt-len 128 --answer-len 32 --steps 10 --out $OUT/train_speed_llama3-8b.json

Model specs: an eavss alias / HF folder / .gguf (``smollm2-135m``), ``shape:NAME`` (random weights with a
real model's dimensions, :func:`eavss.testing.tiny.real_model_shape_config`), ``tiny:ARCH`` (smoke tests).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = ("full", "lora", "lora_all")


def build_model(spec: str, dtype: str, device: str, seed: int = 0):
    """(model, description). ``dtype`` is the training dtype: bf16 models are built in bf16."""
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if spec.startswith(("shape:", "tiny:")):
        from transformers import AutoModelForCausalLM

        from eavss.testing.tiny import real_model_shape_config, tiny_config

        name = spec.split(":", 1)[1]
        cfg = real_model_shape_config(name) if spec.startswith("shape:") else tiny_config(name, num_layers=8)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=tdt)
        desc = {"model": spec, "weights": "random"}
    else:
        from eavss.models.loading import load_model

        lm = load_model(spec, dtype=dtype, device=device)
        model = lm.model
        desc = {"model": spec, "weights": "pretrained", "file_sha256": lm.info.get("file_sha256")}
    c = model.config
    desc.update({"architecture": c.model_type, "num_layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
                 "vocab_size": c.vocab_size, "num_parameters": sum(p.numel() for p in model.parameters()),
                 "dtype": dtype, "device": device})
    return model, desc


def make_examples(n: int, vocab: int, negatives: int, prompt_len: int, answer_len: int, seed: int = 0):
    """``n`` tokenised examples of random ids (ids 10..vocab-1), every sequence exactly prompt + answer long."""
    from eavss.training.pairs import TokenizedExample

    g = torch.Generator().manual_seed(seed)

    def ids(k: int) -> list[int]:
        return torch.randint(10, vocab, (k,), generator=g).tolist()

    return [TokenizedExample(qid=str(i), prompt_ids=ids(prompt_len), positive_ids=ids(answer_len),
                             negative_ids=[ids(answer_len) for _ in range(negatives)]) for i in range(n)]


def run_variant(model, variant: str, layers: list[int], args) -> dict:
    """Warm-up steps, then timed steps of one variant; the model is restored afterwards."""
    from eavss.training.contrastive import contrastive_loss_fn
    from eavss.training.loop import make_batches_fn, train
    from eavss.training.params import merge_for_save, select_trainable

    L = model.config.num_hidden_layers
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    method = "full" if variant == "full" else "lora"
    trained = list(range(L)) if variant == "lora_all" else layers
    torch.manual_seed(args.seed)
    wrapped, sel = select_trainable(model, trained, method, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    exs = make_examples(args.batch_size * (args.warmup + args.steps), model.config.vocab_size, args.negatives,
                        args.prompt_len, args.answer_len, args.seed)
    from eavss.training.pairs import collate_contrastive

    batches = make_batches_fn(exs, args.batch_size, lambda xs: collate_contrastive(xs, 0), shuffle=False)
    loss_fn = contrastive_loss_fn(layers)  # InfoNCE at the k layers in every variant (lora_all: as the recipe)
    step_times: list[float] = []
    last = [time.perf_counter()]

    def tick(info):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    last[0] = time.perf_counter()
    res = train(wrapped, batches, loss_fn, steps=args.warmup + args.steps, lr=1e-4 if method == "lora" else 1e-5,
                dtype=args.dtype, progress=False, callback=tick, seed=args.seed)
    timed = step_times[args.warmup:]
    tokens_per_step = args.batch_size * (1 + args.negatives) * (args.prompt_len + args.answer_len)
    merge_for_save(wrapped)
    with torch.no_grad():
        model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype])
        model.load_state_dict(state)
    return {
        "layers": trained, "contrast_layers": layers, "method": method,
        "trainable_parameters": sel["trainable_parameters"], "trainable_fraction": sel["trainable_fraction"],
        "timed_steps": len(timed), "median_step_seconds": statistics.median(timed),
        "tokens_per_step": tokens_per_step, "tokens_per_second": tokens_per_step / statistics.median(timed),
        "peak_memory_bytes": res["peak_memory_bytes"], "peak_memory_kind": res["peak_memory_kind"],
        "final_loss": res["loss_history"][-1],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="alias / folder / .gguf, shape:NAME or tiny:ARCH")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="training dtype")
    ap.add_argument("--layers", default="0,2,4,5,6", help="the k trained layers (default: SmolLM2's EAVSS top-5)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch-size", type=int, default=2, help="examples per step")
    ap.add_argument("--negatives", type=int, default=2, help="hallucinated answers per example")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--answer-len", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                    help="one fresh process per variant (honest CPU peak RSS); auto = yes on CPU")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",") if x.strip()]
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {VARIANTS}")
    isolate = args.isolate == "yes" or (args.isolate == "auto" and args.device == "cpu" and len(variants) > 1)
    results: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                              "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                              "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                     "settings": {k: v for k, v in vars(args).items() if k != "out"}, "variants": {}}
    if isolate:
        for v in variants:
            with tempfile.TemporaryDirectory() as d:
                sub = [sys.executable, __file__, *[a for a in (argv if argv is not None else sys.argv[1:])],
                       "--variants", v, "--isolate", "no", "--out", str(Path(d) / "r.json")]
                r = subprocess.run(sub, capture_output=True, text=True, check=False)
                if r.returncode != 0:
                    print(r.stderr, file=sys.stderr)
                    return r.returncode
                one = json.loads((Path(d) / "r.json").read_text())
            results["model"] = one["model"]
            results["variants"][v] = one["variants"][v]
    else:
        model, desc = build_model(args.model, args.dtype, args.device, args.seed)
        results["model"] = desc
        for v in variants:
            results["variants"][v] = run_variant(model, v, layers, args)
    print(f"{results['model']['model']} ({results['model']['num_parameters']:,} parameters, {args.dtype}, {args.device}); "
          f"{args.batch_size} examples x (1 + {args.negatives}) x {args.prompt_len + args.answer_len} tokens per step")
    print(f"{'variant':<9} {'layers':<18} {'trainable':>12} {'tokens/s':>10} {'peak memory':>22}")
    for v, r in results["variants"].items():
        lay = str(r["layers"]) if len(r["layers"]) <= 6 else f"all {len(r['layers'])}"
        peak = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB {r['peak_memory_kind']}" if r["peak_memory_bytes"] else "–"
        print(f"{v:<9} {lay:<18} {r['trainable_parameters']:>12,} {r['tokens_per_second']:>10.1f} {peak:>22}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
