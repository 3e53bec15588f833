"""Healing a pruned model: a short language-modelling fine-tune after layers were removed.

Depth-pruning papers recover part of what removal cost with a short fine-tune of the pruned model
(Shortened LLaMA, Kim et al. 2024, arXiv 2402.02834: LoRA; Gromov et al. 2024, arXiv 2403.17887:
QLoRA "healing"; ShortGPT, arXiv 2403.03853, reports results without and with it). :func:`heal`
is that step on plain arguments:

* **what trains** (:func:`eavss.training.params.select_trainable`): ``method="lora"`` (default)
  puts LoRA adapters on every linear map of the chosen decoder layers (default: all layers), or
  ``method="full"`` trains every parameter of the chosen layers; everything else stays
  bit-identical;
* **the loss** (:func:`eavss.training.contrastive.lm_loss_fn`): next-token NLL on every real token
  of the training batches;
* **the loop** (:func:`eavss.training.loop.train`): AdamW for ``steps`` optimiser updates over the
  batches (reshuffled every epoch from the seed), ``grad_accum`` micro-batches a step, linear decay,
  gradient clipping at 1.0; ``dtype="bfloat16"`` computes in bfloat16 with float32 master weights
  and optimiser state;
* **the result**: the adapters merged into the weights (:func:`eavss.training.params.merge_for_save`),
  the parameters cast back to the dtype the model had, so the returned model is a plain
  transformers model that :func:`eavss.models.surgery.save_model` saves as a folder
  ``from_pretrained`` loads with no custom code.

Which text heals is the caller's choice and matters: it must be disjoint from every evaluation
text (the ``heal`` and ``compare`` commands take WikiText-2 *validation* paragraphs; every
evaluation reads test or validation sets of other data).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from eavss.errors import EavssError


def heal(
    model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    steps: int = 50,
    lr: float = 1e-4,
    method: str = "lora",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    grad_accum: int = 1,
    dtype: str = "float32",
    lora_r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    warmup_steps: int = 0,
    schedule: str = "linear",
    max_grad_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    eval_batches: Sequence[Mapping[str, torch.Tensor]] | None = None,
    checkpoint_dir: str | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Fine-tune ``model`` on ``batches`` with the LM loss and return the merged plain model.

    The model is changed in place (copy it first to keep the original); for ``method="lora"``
    the returned object is the same transformers model with the adapters folded in.

    Args:
        model: a causal LM (e.g. the output of :func:`eavss.models.surgery.remove_layers`), float32
            or bfloat16 parameters, not peft-wrapped.
        batches: training batches ``{"input_ids": (B, T), "attention_mask": (B, T)}`` (right
            padding; :func:`eavss.data.calibration.calibration_batches`); each is one micro-batch,
            reshuffled every epoch with a generator seeded from ``seed``.
        steps: optimiser updates (>= 1). lr: peak learning rate (1e-4 suits LoRA; ~1e-5 for full).
        method: "lora" (default) or "full". layers: 0-based decoder layers to train (default: all).
        seed: seeds the LoRA initialisation, the data order and every RNG of the loop (the
            caller's RNG states are left as they were).
        grad_accum: micro-batches per step. dtype: "float32" or "bfloat16" (float32 masters).
        lora_r, lora_alpha, lora_dropout, target_modules: LoRA settings (see
            :func:`~eavss.training.params.select_trainable`; default targets: every linear map in
            a decoder layer).
        warmup_steps, schedule, max_grad_norm, weight_decay: see :func:`eavss.training.loop.train`.
        eval_batches: held-out batches; their calibration loss is measured before and after.
        checkpoint_dir: where the loop checkpoints (None = no checkpoints).
        progress: a progress bar with the loss.

    Returns:
        ``(model, summary)``: the plain transformers model (eval mode, every ``requires_grad`` True)
        and ``{"method", "layers", "trainable_parameters", "total_parameters",
        "trainable_fraction", "adapted_modules" (count, LoRA), "lora_r", "lora_alpha",
        "lora_dropout", "target_modules", "steps", "lr", "grad_accum", "dtype", "seed",
        "model_dtype", "micro_batches", "train" (the loop's result without per-parameter lists:
        loss_history, lr_history, tokens, seconds, tokens_per_second, peak memory),
        "loss_before"/"loss_after" (held-out calibration loss, nats/token, or None)}``.

    Raises:
        EavssError: no batches, bad layers/method/hyper-parameters (from select_trainable / train),
            a model whose parameters are neither float32 nor bfloat16, a non-finite loss.
    """
    from eavss.models.layers import find_decoder_layers
    from eavss.scores.ablation import calibration_loss
    from eavss.training.contrastive import lm_loss_fn, unwrap_model
    from eavss.training.loop import make_batches_fn, train
    from eavss.training.params import merge_for_save, select_trainable

    blist = list(batches)
    if not blist:
        raise EavssError("no healing batches were given; pass calibration batches of the healing text")
    if type(model).__module__.startswith("peft."):
        raise EavssError("the model is peft-wrapped; pass the plain transformers model")
    model_dtype = next(model.parameters()).dtype
    if model_dtype not in (torch.float32, torch.bfloat16):
        raise EavssError(f"healing needs float32 or bfloat16 parameters, the model has {model_dtype}; load it with "
                         "--dtype float32")
    if dtype == "float32" and model_dtype != torch.float32:
        raise EavssError("heal dtype float32 needs a float32 model; load it with --dtype float32 or heal with "
                         "heal.dtype=bfloat16")
    n_layers = len(find_decoder_layers(model)[1])
    chosen = list(range(n_layers)) if layers is None else list(layers)

    loss_before = calibration_loss(model, eval_batches)["loss"] if eval_batches else None
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # LoRA's A matrices are drawn here: a function of the seed, caller's RNG untouched
        wrapped, summ = select_trainable(model, chosen, method=method, lora_r=lora_r, lora_alpha=lora_alpha,
                                         lora_dropout=lora_dropout, target_modules=target_modules)
    result = train(wrapped, make_batches_fn(blist, 1, lambda xs: xs[0]), lm_loss_fn(), steps=steps, lr=lr,
                   weight_decay=weight_decay, grad_accum=grad_accum, max_grad_norm=max_grad_norm,
                   warmup_steps=warmup_steps, schedule=schedule, seed=seed, dtype=dtype,
                   checkpoint_dir=checkpoint_dir, progress=progress)
    if next(wrapped.parameters()).dtype != model_dtype:  # bfloat16 training of a float32 model: back to float32
        wrapped.to(model_dtype)
    healed = merge_for_save(wrapped)
    healed = unwrap_model(healed)
    loss_after = calibration_loss(healed, eval_batches)["loss"] if eval_batches else None

    out: dict[str, Any] = {
        "method": summ["method"], "layers": summ["layers"], "trainable_parameters": summ["trainable_parameters"],
        "total_parameters": summ["total_parameters"], "trainable_fraction": summ["trainable_fraction"],
        "steps": steps, "lr": lr, "grad_accum": grad_accum, "dtype": dtype, "seed": seed,
        "model_dtype": str(model_dtype).removeprefix("torch."), "micro_batches": len(blist),
        "warmup_steps": warmup_steps, "schedule": schedule, "max_grad_norm": max_grad_norm,
        "weight_decay": weight_decay,
        "train": {k: v for k, v in result.items() if k not in ("checkpoint",)},
        "loss_before": loss_before, "loss_after": loss_after,
    }
    if method == "lora":
        out.update({"lora_r": summ["lora_r"], "lora_alpha": summ["lora_alpha"], "lora_dropout": summ["lora_dropout"],
                    "target_modules": summ["target_modules"], "adapted_modules": len(summ["adapted_modules"]),
                    "peft_version": summ["peft_version"]})
    return healed, out
