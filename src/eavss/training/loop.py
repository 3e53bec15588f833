"""A small, deterministic, resumable training loop (AdamW over the trainable parameters only).

What makes a run reproducible and resumable bit for bit:

* **Data order** comes only from ``batches_fn(epoch, generator)``, with a ``torch.Generator``
  seeded from ``(seed, epoch)``; the loop never touches the data otherwise. On resume the epoch's
  batch list is rebuilt and the micro-batches already used are skipped.
* **Randomness inside the model** (dropout, LoRA dropout) uses the global torch RNG, which is
  seeded with ``seed`` at the start and saved in every checkpoint (torch CPU and CUDA, Python
  ``random``, NumPy); the caller's RNG states are restored when ``train`` returns.
* **A checkpoint** holds the trainable parameters (float32 master copies), the optimiser and
  scheduler states, the RNG states, the position (step, epoch, micro-batches used in the epoch)
  and the history, written atomically (temporary file + ``os.replace``) at step boundaries only.
  Resuming from it continues exactly where the uninterrupted run was (tested with ``torch.equal``).

``dtype="bfloat16"``: the model's parameters are stored and computed in bfloat16 (frozen ones are
rounded once, at the start), while the optimiser works on float32 master copies of the trainable
parameters (Micikevicius et al. 2018, "Mixed precision training", arXiv 1710.03740): each
micro-batch's bf16 gradients are added into float32 gradient buffers, AdamW's moments are float32,
and after each step the bf16 weights are set to the rounded masters. The masters are what the
checkpoint stores.

A *step* is one optimiser update over ``grad_accum`` micro-batches (the loss of each is divided by
the number of micro-batches in the window, so the update is the mean gradient). Accumulation
windows do not cross epochs: the last window of an epoch may be shorter.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from eavss.errors import EavssError
from eavss.io import write_json_atomic

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Accepted ``dtype`` values of :func:`train`."""
SCHEDULES = ("linear", "cosine", "constant")
"""Learning-rate schedules after warm-up: linear decay to 0, cosine decay to 0, constant."""
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_SUMMARY = "checkpoint.json"
CHECKPOINT_FORMAT = 1

BatchesFn = Callable[[int, torch.Generator], Iterable[Any]]
LossFn = Callable[[nn.Module, Any], Any]


# ---------------------------------------------------------------------------------------------
# helpers


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data generator: a 63-bit value mixed from (seed, epoch) by NumPy's SeedSequence."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`epoch_seed`."""
    g = torch.Generator()
    g.manual_seed(epoch_seed(seed, epoch))
    return g


def make_batches_fn(
    examples: Sequence[Any],
    batch_size: int,
    collate: Callable[[list[Any]], Any],
    *,
    shuffle: bool = True,
    drop_last: bool = False,
) -> BatchesFn:
    """A ``batches_fn`` for :func:`train`: each epoch, a seeded permutation of ``examples`` in batches.

    Args:
        examples: the training examples (any objects). batch_size: examples per micro-batch (>= 1).
        collate: turns a list of examples into a batch (e.g. ``lambda xs: collate_contrastive(xs, pad_id)``).
        shuffle: permute with ``torch.randperm(n, generator=generator)`` each epoch (else file order).
        drop_last: drop a last batch shorter than ``batch_size``.

    Returns:
        ``batches_fn(epoch, generator) -> list of batches`` (ceil or floor of n / batch_size).

    Raises:
        EavssError: no examples, ``batch_size`` < 1, or (drop_last) fewer examples than one batch.
    """
    examples = list(examples)
    if not examples:
        raise EavssError("no training examples; check the data passed to make_batches_fn")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EavssError(f"batch_size={batch_size!r} must be an integer >= 1")
    if drop_last and len(examples) < batch_size:
        raise EavssError(f"{len(examples)} examples are fewer than one batch of {batch_size} with drop_last; lower batch_size")

    def batches_fn(epoch: int, generator: torch.Generator) -> list[Any]:
        n = len(examples)
        order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
        stop = n - n % batch_size if drop_last else n
        return [collate([examples[i] for i in order[s:s + batch_size]]) for s in range(0, stop, batch_size)]

    return batches_fn


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the base lr at step ``s`` (0-based, the step about to be taken)."""

    def f(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        span = max(1, total - warmup)
        progress = min(1.0, (s - warmup) / span)
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` atomically (:func:`eavss.io.atomic_file`: a reader sees the old or the new file)."""
    from eavss.io import atomic_file

    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


def load_checkpoint(checkpoint_dir: str | os.PathLike) -> dict | None:
    """The checkpoint saved by :func:`train` in ``checkpoint_dir`` (a dict), or None when there is none.

    Keys: ``format``, ``settings`` (what must match to resume), ``params`` (name -> float32
    tensor, the trainable parameters), ``optimizer``, ``scheduler``, ``rng``, ``step``, ``epoch``,
    ``micro_pos`` (micro-batches of ``epoch`` already used), ``history``.

    Raises:
        EavssError: the file exists but cannot be read (corrupt or from another format).
    """
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise EavssError(f"cannot read checkpoint {path} ({type(exc).__name__}); delete it or pass resume=False") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise EavssError(f"{path} is not an eavss training checkpoint of format {CHECKPOINT_FORMAT}; "
                         "delete it or pass another checkpoint_dir")
    return ckpt


def _positive_int(name: str, v: Any, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise EavssError(f"{name}={v!r} must be an integer >= 1")


def _loss_parts(out: Any) -> tuple[torch.Tensor, dict[str, float], int | None]:
    if isinstance(out, torch.Tensor):
        return out, {}, None
    if isinstance(out, Mapping) and isinstance(out.get("loss"), torch.Tensor):
        extra = {k: float(v) for k, v in out.items() if k not in ("loss", "tokens") and isinstance(v, (int, float))}
        tokens = out.get("tokens")
        return out["loss"], extra, int(tokens) if tokens is not None else None
    raise EavssError("loss_fn must return a scalar tensor or a dict with a 'loss' tensor; see eavss.training.contrastive")


# ---------------------------------------------------------------------------------------------
# the loop


def train(
    model: nn.Module,
    batches_fn: BatchesFn,
    loss_fn: LossFn,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    grad_accum: int = 1,
    max_grad_norm: float | None = 1.0,
    warmup_steps: int = 0,
    schedule: str = "linear",
    seed: int = 0,
    dtype: str = "float32",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every_epoch: bool = True,
    checkpoint_every_steps: int | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
) -> dict:
    """Train the parameters of ``model`` that have ``requires_grad`` with AdamW; deterministic and resumable.

    Exactly one of ``steps`` (optimiser updates) and ``epochs`` (passes over ``batches_fn``'s
    batches) is given. Per step: ``grad_accum`` micro-batches, each ``loss_fn(model, batch) /
    window`` back-propagated; gradient clipping to ``max_grad_norm`` (global L2 norm over the
    trainable parameters, float32); AdamW (Loshchilov & Hutter 2019, arXiv 1711.05101;
    betas 0.9/0.999, eps 1e-8) with ``weight_decay`` on matrices only (ndim >= 2; norms and biases
    are not decayed, as in GPT-2/minGPT); lr schedule: linear warm-up over ``warmup_steps``, then
    ``schedule`` down to 0 at the last step ("linear", "cosine") or "constant". The model is in
    train mode during the loop and put back in its previous mode afterwards. Batches (tensors, or
    dicts of tensors) are moved to the model's device.

    Args:
        model: the model (from :func:`eavss.training.params.select_trainable`); trained in place.
        batches_fn: ``batches_fn(epoch, generator) -> sequence of micro-batches`` for that epoch; it
            must draw any randomness from ``generator`` only (see :func:`make_batches_fn`). With
            ``epochs``, every epoch must have the same number of micro-batches.
        loss_fn: ``loss_fn(model, batch) ->`` scalar tensor, or dict with ``"loss"`` (tensor),
            optional ``"tokens"`` (int, for tokens/s; default ``batch["attention_mask"].sum()``) and
            other floats (logged per step, e.g. ``"info_nce"``).
        steps, epochs: length of training (exactly one; >= 1).
        lr: peak learning rate (default 1e-4, the usual LoRA rate; use ~1e-5 for full layers).
        weight_decay: AdamW decoupled decay (default 0: decay pulls pretrained weights towards zero,
            not towards their pretrained values, which a short targeted fine-tune has no reason to do).
        grad_accum: micro-batches per step (>= 1). max_grad_norm: clip threshold, None = no clipping
            (default 1.0, the Hugging Face Trainer default). warmup_steps: >= 0 (default 0).
        schedule: "linear" (default, Hugging Face Trainer's), "cosine" or "constant".
        seed: seeds the global torch / Python / NumPy RNGs and the data order (default 0).
        dtype: "float32" (default) or "bfloat16" (bf16 weights and compute, float32 masters and
            optimiser state; see the module docstring).
        checkpoint_dir: folder for ``checkpoint.pt`` (+ ``checkpoint.json``, a readable summary);
            None = no checkpoints. A checkpoint is also written when training ends.
        checkpoint_every_epoch: checkpoint at the end of every epoch (default True).
        checkpoint_every_steps: also checkpoint every N steps (None = only per epoch / at the end).
        resume: continue from ``checkpoint_dir``'s checkpoint when there is one (default True); its
            settings (lr, seed, steps, trainable parameter names and shapes, ...) must match.
        progress: show a tqdm bar with the loss (default True).
        callback: called after every step (and after that step's checkpoint) with a dict ``step``,
            ``epoch``, ``loss``, ``lr``, ``metrics``; an exception it raises stops training (the
            last checkpoint stays; resume continues from it).

    Returns:
        dict: ``steps`` (done in total), ``total_steps``, ``epochs_completed``, ``loss_history``
        (mean micro-batch loss per step, from step 1, including steps before a resume),
        ``lr_history``, ``metrics_history`` (per extra loss_fn key, one value per step),
        ``tokens`` (this call), ``seconds`` (this call, wall time of the steps), ``tokens_per_second``
        (None when no token count), ``peak_memory_bytes`` and ``peak_memory_kind``
        ("cuda_max_allocated" on GPU; "process_max_rss" on CPU — the process's peak resident
        memory since it started, an upper bound), ``resumed_from_step`` (None for a fresh start),
        ``checkpoint`` (path or None), ``dtype``, ``master_dtype`` ("float32"),
        ``trainable_parameters`` (count).

    Raises:
        EavssError: no trainable parameter; both or neither of steps/epochs; bad hyper-parameters;
            an empty epoch, or epochs of different lengths; a non-finite loss (lower lr); a
            checkpoint written with other settings (pass resume=False or another checkpoint_dir).
    """
    # ---- validate
    if (steps is None) == (epochs is None):
        raise EavssError("pass exactly one of steps=N or epochs=N")
    _positive_int("steps", steps, allow_none=True)
    _positive_int("epochs", epochs, allow_none=True)
    _positive_int("grad_accum", grad_accum)
    _positive_int("checkpoint_every_steps", checkpoint_every_steps, allow_none=True)
    if not float(lr) > 0:
        raise EavssError(f"lr={lr!r} must be > 0; pass e.g. lr=1e-4")
    if not float(weight_decay) >= 0:
        raise EavssError(f"weight_decay={weight_decay!r} must be >= 0")
    if max_grad_norm is not None and not float(max_grad_norm) > 0:
        raise EavssError(f"max_grad_norm={max_grad_norm!r} must be > 0 or None (no clipping)")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise EavssError(f"warmup_steps={warmup_steps!r} must be an integer >= 0")
    if schedule not in SCHEDULES:
        raise EavssError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if dtype not in DTYPES:
        raise EavssError(f"unknown training dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise EavssError("the model has no trainable parameter; call eavss.training.params.select_trainable first")
    names = [n for n, _ in named]
    params = [p for _, p in named]
    device = params[0].device
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    caller_py, caller_np = random.getstate(), np.random.get_state()
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            return _train(model, names, params, device, batches_fn, loss_fn, steps, epochs, float(lr),
                          float(weight_decay), grad_accum, max_grad_norm, warmup_steps, schedule, int(seed), dtype,
                          ckpt_dir, checkpoint_every_epoch, checkpoint_every_steps, resume, progress, callback)
    finally:
        random.setstate(caller_py)
        np.random.set_state(caller_np)
        model.train(was_training)


def _train(model, names, params, device, batches_fn, loss_fn, steps, epochs, lr, weight_decay, grad_accum,
           max_grad_norm, warmup_steps, schedule, seed, dtype, ckpt_dir, checkpoint_every_epoch,
           checkpoint_every_steps, resume, progress, callback) -> dict:
    from tqdm.auto import tqdm

    low = dtype == "bfloat16"
    if low:
        masters = [p.detach().to(torch.float32).clone() for p in params]
        for p in model.parameters():  # parameters only: float buffers (RoPE inv_freq ...) stay as they are
            if p.is_floating_point() and p.dtype != torch.bfloat16:
                p.data = p.data.to(torch.bfloat16)
        for m in masters:
            m.requires_grad_(True)
    else:
        for n, p in zip(names, params):
            if p.dtype != torch.float32:
                raise EavssError(f"parameter {n} is {p.dtype} but dtype='float32'; pass dtype='bfloat16' or load the model in float32")
        masters = params

    decay = [m for m in masters if m.ndim >= 2]
    no_decay = [m for m in masters if m.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)

    # ---- epoch 0 tells the length of an epoch
    def epoch_batches(epoch: int) -> list:
        batches = list(batches_fn(epoch, epoch_generator(seed, epoch)))
        if not batches:
            raise EavssError(f"batches_fn gave no batch for epoch {epoch}; check the training data")
        return batches

    first = epoch_batches(0)
    per_epoch = math.ceil(len(first) / grad_accum)
    total = steps if steps is not None else epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(schedule, warmup_steps, total))

    settings = {
        "seed": seed, "lr": lr, "weight_decay": weight_decay, "grad_accum": grad_accum,
        "max_grad_norm": None if max_grad_norm is None else float(max_grad_norm), "warmup_steps": warmup_steps,
        "schedule": schedule, "dtype": dtype, "steps": steps, "epochs": epochs, "total_steps": total,
        "micro_batches_per_epoch": len(first),
        "trainable": [[n, list(p.shape)] for n, p in zip(names, masters)],
    }
    step, epoch, micro_pos = 0, 0, 0
    history: dict[str, Any] = {"loss": [], "lr": [], "metrics": {}}
    resumed_from = None
    ckpt = load_checkpoint(ckpt_dir) if (ckpt_dir is not None and resume) else None
    if ckpt is not None:
        diff = [k for k in settings if ckpt["settings"].get(k) != settings[k]]
        if diff:
            k = diff[0]
            raise EavssError(f"checkpoint {ckpt_dir / CHECKPOINT_FILE} was written with other settings "
                             f"({k}: {ckpt['settings'].get(k)!r} there, {settings[k]!r} now); "
                             "pass the same settings, resume=False, or another checkpoint_dir")
        with torch.no_grad():
            for n, m in zip(names, masters):
                m.copy_(ckpt["params"][n].to(m.dtype))
            if low:
                for p, m in zip(params, masters):
                    p.copy_(m)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        step, epoch, micro_pos = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["micro_pos"])
        history = ckpt["history"]
        resumed_from = step
    else:
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)

    def save() -> None:
        if ckpt_dir is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT, "settings": settings,
            "params": {n: m.detach().to("cpu", torch.float32).clone() for n, m in zip(names, masters)},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
            "step": step, "epoch": epoch, "micro_pos": micro_pos, "history": history,
        }
        _save_atomic(state, ckpt_dir / CHECKPOINT_FILE)
        write_json_atomic(ckpt_dir / CHECKPOINT_SUMMARY, {
            "step": step, "total_steps": total, "epoch": epoch, "micro_pos": micro_pos,
            "last_loss": history["loss"][-1] if history["loss"] else None, "settings": settings,
        })

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    tokens_seen, tokens_known, seconds = 0, True, 0.0
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    try:
        batches = first if epoch == 0 else None
        while step < total:
            if batches is None:
                batches = epoch_batches(epoch)
                if epochs is not None and len(batches) != len(first):
                    raise EavssError(f"epoch {epoch} has {len(batches)} micro-batches, epoch 0 had {len(first)}; "
                                     "batches_fn must give the same number every epoch")
            while micro_pos < len(batches) and step < total:
                t0 = time.perf_counter()
                window = batches[micro_pos:micro_pos + grad_accum]
                losses: list[float] = []
                extras: dict[str, float] = {}
                for batch in window:
                    batch = _to_device(batch, device)
                    loss, extra, tokens = _loss_parts(loss_fn(model, batch))
                    if loss.ndim != 0:
                        raise EavssError(f"loss_fn returned a tensor of shape {tuple(loss.shape)}; return a scalar")
                    if not torch.isfinite(loss.detach()):
                        raise EavssError(f"loss is {float(loss.detach())} at step {step + 1}; lower lr or check the batch")
                    (loss / len(window)).backward()
                    if low:
                        with torch.no_grad():
                            for p, m in zip(params, masters):
                                if p.grad is not None:
                                    g = p.grad.to(torch.float32)
                                    m.grad = g if m.grad is None else m.grad.add_(g)
                                    p.grad = None
                    losses.append(float(loss.detach()))
                    for k, v in extra.items():
                        extras[k] = extras.get(k, 0.0) + v / len(window)
                    if tokens is None and isinstance(batch, Mapping) and isinstance(batch.get("attention_mask"), torch.Tensor):
                        tokens = int(batch["attention_mask"].sum())
                    if tokens is None:
                        tokens_known = False
                    else:
                        tokens_seen += tokens
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(masters, float(max_grad_norm))
                current_lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if low:
                    with torch.no_grad():
                        for p, m in zip(params, masters):
                            p.copy_(m)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds += time.perf_counter() - t0
                micro_pos += len(window)
                step += 1
                mean_loss = sum(losses) / len(losses)
                history["loss"].append(mean_loss)
                history["lr"].append(current_lr)
                for k, v in extras.items():
                    history["metrics"].setdefault(k, []).append(v)
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                bar.update(1)
                if checkpoint_every_steps is not None and step % checkpoint_every_steps == 0 and step < total:
                    save()
                if callback is not None:
                    callback({"step": step, "epoch": epoch, "loss": mean_loss, "lr": current_lr, "metrics": extras})
            if micro_pos >= len(batches):
                epoch, micro_pos, batches = epoch + 1, 0, None
                if checkpoint_every_epoch and step < total:
                    save()
        save()
    finally:
        bar.close()

    if device.type == "cuda":
        peak, kind = int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    else:
        try:
            import resource

            peak, kind = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_max_rss"
        except (ImportError, OSError):  # pragma: no cover - non-POSIX
            peak, kind = None, None
    return {
        "steps": step,
        "total_steps": total,
        "epochs_completed": epoch,
        "loss_history": list(history["loss"]),
        "lr_history": list(history["lr"]),
        "metrics_history": {k: list(v) for k, v in history["metrics"].items()},
        "tokens": tokens_seen if tokens_known else None,
        "seconds": seconds,
        "tokens_per_second": (tokens_seen / seconds) if tokens_known and seconds > 0 else None,
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
        "resumed_from_step": resumed_from,
        "checkpoint": str(ckpt_dir / CHECKPOINT_FILE) if ckpt_dir is not None else None,
        "dtype": dtype,
        "master_dtype": "float32",
        "trainable_parameters": sum(m.numel() for m in masters),
    }
