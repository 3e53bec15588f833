"""Human-readable output of ``eavss heal``: ``eavss_healing.md``, and the typed section a ``heal``
report holds (beside the header of :mod:`eavss.report.schema`)."""

from __future__ import annotations

from typing import TypedDict

from eavss.report.common import format_number, header_lines, timings_table

_fmt = format_number


class HealingText(TypedDict, total=False):
    """``report["healing"]["text"]``: what the model was healed on, and why it is disjoint from
    every evaluation text."""

    dataset: str
    source: str
    disjoint_from_evaluation: bool | None  # None: a user file, not checked
    why: str
    train_sequences: int
    train_tokens: int
    train_micro_batches: int
    held_out_sequences: int
    held_out_tokens: int
    packing: str
    max_length: int
    batch_size: int
    texts_available: int


class HealingSection(TypedDict, total=False):
    """``report["healing"]``: the healing text and :func:`eavss.training.heal.heal`'s summary."""

    text: HealingText
    method: str
    layers: list[int]
    trainable_parameters: int
    total_parameters: int
    trainable_fraction: float
    steps: int
    lr: float
    grad_accum: int
    dtype: str
    seed: int
    model_dtype: str
    train: dict  # eavss.training.loop.train result: loss_history, lr_history, tokens, seconds, peak memory ...
    loss_before: float | None  # held-out loss of the healing text, nats/token
    loss_after: float | None


class PruningInfo(TypedDict):
    """``report["pruning"]``: what the healed model's config says was removed (empty when nothing)."""

    removed_layers: list[int]
    original_num_layers: int | None
    source_model: str | None


def render_markdown(report: dict) -> str:
    """The ``eavss_healing.md`` text of a ``heal`` report."""
    h, t, p = report["healing"], report["healing"]["text"], report.get("pruning") or {}
    tr = h["train"]
    loss = tr.get("loss_history") or []
    out = ["# eavss heal report\n"]
    out += header_lines(report)
    if p.get("removed_layers"):
        out.append(f"- the model was pruned: layers {p['removed_layers']} of {p.get('original_num_layers')} removed "
                   f"(from {p.get('source_model')})")
    out.append(f"- healing text: {t['source']} — {t['why']}")
    out.append(f"- {t.get('train_sequences')} training sequences ({t.get('train_tokens')} tokens in all, {t.get('packing')}, "
               f"max length {t.get('max_length')}), {t.get('held_out_sequences')} held out (never trained on)")
    out.append(f"- {h['method']} on layers {h['layers']}: {h['trainable_parameters']:,} of {h['total_parameters']:,} "
               f"parameters train ({100 * h['trainable_fraction']:.2f}%)" +
               (f"; LoRA r={h.get('lora_r')}, alpha={h.get('lora_alpha')} on {h.get('target_modules')}"
                if h["method"] == "lora" else ""))
    out.append(f"- {h['steps']} steps × {h['grad_accum']} micro-batches, lr {h['lr']} ({h.get('schedule')}, warm-up "
               f"{h.get('warmup_steps')}), {h['dtype']} (model {h['model_dtype']}), seed {h['seed']}")
    if loss:
        out.append(f"- training loss {loss[0]:.4f} (step 1) -> {loss[-1]:.4f} (step {len(loss)}); "
                   f"{_fmt(tr.get('tokens_per_second'), 1)} tokens/s")
    if h.get("loss_before") is not None:
        out.append(f"- held-out loss {h['loss_before']:.4f} -> {h['loss_after']:.4f} nats/token")
    out.append("")
    out.append("The folder loads with `AutoModelForCausalLM.from_pretrained` (adapters merged; no custom code). "
               "Evaluate it with `eavss eval --model THIS_FOLDER`.\n")
    if report.get("timings"):
        out.append("## Timings (seconds)\n")
        out.append(timings_table(report["timings"]))
    return "\n".join(out) + "\n"
