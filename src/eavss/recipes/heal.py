"""``eavss heal``: a short language-modelling fine-tune of a (pruned) model folder -> a healed HF folder.

Steps: :func:`check_heal_text` (the healing text is WikiText-2 *validation*, or a user file outside
the data folder: never a text any evaluation reads) -> load the model -> :func:`heal_batches`
(training sequences, and held-out ones that are never trained on) ->
:func:`eavss.training.heal.heal` (LoRA on every layer by default, or full fine-tuning of chosen
layers) -> the merged model saved with :func:`eavss.models.surgery.save_model_files` (plain
transformers folder, ``from_pretrained`` loads it with no custom code) beside
``eavss_healing.json`` (report kind ``heal``) and ``eavss_healing.md``.

:class:`HealSection` is shared with ``eavss compare --heal`` (:mod:`eavss.recipes.compare`).
``docs/method.md`` ("Comparing pruning metrics and healing") explains every default.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from eavss.config import ModelSection, RunOptions, option, section, to_dict, validate
from eavss.errors import EavssError
from eavss.recipes.common import load, model_section, start, timed

HEAL_SETS = ("wikitext2",)
"""Built-in healing texts: WikiText-2 validation paragraphs (never the test split)."""

# ---------------------------------------------------------------------------------------------
# config


@dataclass
class HealSection:
    """Healing: a short LM fine-tune on text disjoint from every evaluation text (:mod:`eavss.training.heal`)."""

    dataset: str = option("wikitext2", "healing text: wikitext2 (WikiText-2 validation paragraphs, never test) or "
                          "text:PATH / jsonl:PATH:FIELD (a file outside the data folder)", flag="--heal-data")
    num_samples: int = option(256, "training sequences (packed: chunks of max_length tokens)", min=1)
    held_out: int = option(16, "held-out sequences of the healing text, never trained on; their loss is measured "
                           "before and after (0 = none)", min=0)
    max_length: int = option(256, "tokens per training sequence", min=2)
    packing: str = option("packed", "packed (texts joined with EOS, cut into full chunks) | documents (one text per "
                          "sequence, padded)", choices=("documents", "packed"))
    batch_size: int = option(4, "sequences per micro-batch", min=1)
    steps: int = option(50, "optimiser steps (the budget; the same for every model healed)", flag="--heal-steps",
                        min=1)
    grad_accum: int = option(1, "micro-batches per optimiser step", min=1)
    lr: float = option(1e-4, "peak learning rate, linear decay to 0 (1e-4 for LoRA; ~1e-5 for full)",
                       flag="--heal-lr", min=1e-12)
    warmup_steps: int = option(0, "linear warm-up steps", min=0)
    method: str = option("lora", "lora (adapters on every linear map of the trained layers, merged after) | full "
                         "(every parameter of the trained layers)", flag="--heal-method", choices=("lora", "full"))
    layers: list[int] | None = option(None, "decoder layers to train, 0-based indices of the model being healed "
                                      "(null = all layers)")
    lora_r: int = option(8, "LoRA rank", min=1)
    lora_alpha: float = option(16.0, "LoRA alpha (scale alpha / r)", min=1e-12)
    lora_dropout: float = option(0.0, "LoRA dropout (0 keeps the run a function of the seed and data order)", min=0,
                                 max=0.99)
    dtype: str = option("float32", "training precision: float32 | bfloat16 (bf16 weights and compute, float32 master "
                        "weights and optimiser state; every model healed gets the same rounding)", flag="--heal-dtype",
                        choices=("float32", "bfloat16"))

    def check(self) -> None:
        check_heal_dataset_name(self.dataset)
        if self.warmup_steps > self.steps:
            raise EavssError(f"heal.warmup_steps ({self.warmup_steps}) is more than heal.steps ({self.steps}): the "
                             "learning rate would never reach heal.lr; lower heal.warmup_steps or raise --heal-steps")


@dataclass
class HealModelSection(ModelSection):
    """The model to heal (a pruned model folder from `eavss prune`, or any model)."""

    name: str | None = option(None, "the model to heal: a pruned HF folder (eavss prune / compare), or any model "
                              "eavss loads", flag="--model")


@dataclass
class HealConfig(RunOptions):
    """``eavss heal``: short LM fine-tune of a (pruned) model; writes the healed HF folder."""

    out: str = option("runs/healed", "output folder: the healed HF model + eavss_healing.json/.md (refused if it "
                      "exists and is not empty, unless --overwrite)", flag="--out")
    model: HealModelSection = section(HealModelSection)
    heal: HealSection = section(HealSection)


# ---------------------------------------------------------------------------------------------
# steps


def check_heal_dataset_name(name: str) -> None:
    """Refuse healing texts that an evaluation reads (one line).

    Raises:
        EavssError: a built-in set other than ``wikitext2`` (``ptb`` and ``sst2`` are evaluation
            domains / sets), or an unknown name.
    """
    if name in HEAL_SETS or name.startswith(("text:", "jsonl:")):
        return
    raise EavssError(f"heal.dataset={name!r} is not a healing text: use wikitext2 (WikiText-2 validation; never the "
                     "test split) or text:PATH / jsonl:PATH:FIELD; ptb and sst2 are evaluation domains, so healing on "
                     "them would make the out-of-domain controls in-domain")


def check_heal_text(h: HealSection, data_dir: str | None) -> tuple[list[str], dict]:
    """Read the healing texts before any model is loaded, and say why they are disjoint from every
    evaluation text.

    Returns:
        ``(texts, info)``, info = ``{"dataset", "source", "disjoint_from_evaluation": bool | None,
        "why"}``.

    Raises:
        EavssError: a name :func:`check_heal_dataset_name` refuses, a user file inside the data
            folder (pass the built-in name instead), a missing or empty file.
    """
    from eavss.data.calibration import load_calibration_texts
    from eavss.data.paths import resolve_data_dir

    check_heal_dataset_name(h.dataset)
    if h.dataset == "wikitext2":
        info = {"dataset": "wikitext2", "source": "WikiText-2 validation (wikitext2/github_pytorch-examples/valid.txt)",
                "disjoint_from_evaluation": True,
                "why": "validation split only, never test: ppl and wikitext2 score WikiText-2 test; ptb, squad, sst2 "
                       "and sciq are other datasets"}
    else:
        raw = h.dataset.split(":", 1)[1]
        path = Path(raw.rpartition(":")[0] if h.dataset.startswith("jsonl:") else raw).expanduser().resolve()
        try:
            root = resolve_data_dir(data_dir).resolve()
        except EavssError:
            root = None
        if root is not None and path.is_relative_to(root):
            raise EavssError(f"heal.dataset {path} is inside the data folder {root}, which holds the evaluation texts; "
                             "heal on heal.dataset=wikitext2 (its validation split) or a file of your own")
        info = {"dataset": h.dataset, "source": str(path), "disjoint_from_evaluation": None,
                "why": "a user file outside the data folder; not checked against the evaluation texts"}
    return load_calibration_texts(h.dataset, data_dir, key="heal.dataset"), info


def heal_batches(tokenizer, texts: list[str], h: HealSection, seed: int) -> tuple[list[dict], list[dict], dict]:
    """Training and held-out batches from the healing texts.

    The texts are shuffled with ``seed``; the first ``h.held_out`` are held out (one sequence each,
    never trained on), the training sequences come from the rest
    (:func:`eavss.data.calibration.calibration_batches`, ``h.packing``).

    Returns:
        ``(train_batches, held_out_batches, info)``.

    Raises:
        EavssError: too few texts to hold some out and train on the rest, or no tokens.
    """
    from eavss.data.calibration import calibration_batches

    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_held = h.held_out if len(texts) > h.held_out else 0
    if h.held_out and not n_held:
        raise EavssError(f"the healing text has {len(texts)} texts, too few to hold out heal.held_out={h.held_out}; "
                         "lower heal.held_out or give more text")
    held_texts = [texts[i] for i in order[:n_held]]
    train_texts = [texts[i] for i in order[n_held:]]
    train, tinfo = calibration_batches(tokenizer, "heal", h.num_samples, h.max_length, h.batch_size, h.packing, seed,
                                       texts=train_texts)
    held, hinfo = (calibration_batches(tokenizer, "heal", n_held, h.max_length, h.batch_size, "documents", seed,
                                       texts=held_texts) if n_held else ([], {"num_samples": 0, "num_tokens": 0}))
    info = {"train_sequences": tinfo["num_samples"], "train_tokens": tinfo["num_tokens"],
            "train_micro_batches": len(train), "held_out_sequences": hinfo["num_samples"],
            "held_out_tokens": hinfo["num_tokens"], "packing": h.packing, "max_length": h.max_length,
            "batch_size": h.batch_size, "texts_available": len(texts)}
    return train, held, info


def heal_model(model, train: list[dict], held: list[dict], h: HealSection, seed: int, progress: bool):
    """:func:`eavss.training.heal.heal` with the section's settings. Returns ``(model, summary)``."""
    from eavss.training.heal import heal

    return heal(model, train, steps=h.steps, lr=h.lr, method=h.method, layers=h.layers, seed=seed,
                grad_accum=h.grad_accum, dtype=h.dtype, lora_r=h.lora_r, lora_alpha=h.lora_alpha,
                lora_dropout=h.lora_dropout, warmup_steps=h.warmup_steps, eval_batches=held or None,
                progress=progress)


def check_heal_model(h: HealSection, model) -> None:
    """Right after loading: the healing lengths fit the model, the dtype can train, the layers exist.

    Raises:
        EavssError: heal.max_length beyond the model's context; float32 training of a model not
            loaded in float32; a layer index out of range.
    """
    import torch

    from eavss.models.layers import check_lengths, find_decoder_layers
    from eavss.training.params import validate_layers

    check_lengths(model, {"heal.max_length": h.max_length})
    dt = next(model.parameters()).dtype
    if h.dtype == "float32" and dt != torch.float32:
        raise EavssError(f"heal.dtype=float32 needs a float32 model, this one is {dt}; pass --dtype float32 or "
                         "--heal-dtype bfloat16")
    if h.layers is not None:
        validate_layers(h.layers, len(find_decoder_layers(model)[1]))


# ---------------------------------------------------------------------------------------------
# command


def run(cfg: HealConfig) -> dict:
    """``eavss heal``: heal ``cfg.model.name`` and save the merged model into ``cfg.out``."""
    import time

    from eavss.io import atomic_dir, write_json_atomic, write_text_atomic
    from eavss.models.surgery import save_model_files
    from eavss.report.heal import render_markdown
    from eavss.report.schema import jsonable, new_report

    validate(cfg)
    if not cfg.model.name:
        raise EavssError("eavss heal needs the model to heal: --model PRUNED_FOLDER (e.g. the --out of eavss prune)")
    threads = start(cfg, cfg.model.name)
    texts, text_info = check_heal_text(cfg.heal, cfg.data_dir)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    with timed(timings, "load"):
        loaded = load(cfg.model, cfg.progress)
    check_heal_model(cfg.heal, loaded.model)
    model_sec = model_section(loaded)
    train, held, data_info = heal_batches(loaded.tokenizer, texts, cfg.heal, cfg.seed)
    cfg_model = loaded.model.config
    pruning = {"removed_layers": list(getattr(cfg_model, "eavss_removed_layers", None) or []),
               "original_num_layers": getattr(cfg_model, "eavss_original_num_layers", None),
               "source_model": getattr(cfg_model, "eavss_source_model", None)}
    with timed(timings, "heal"):
        healed, summary = heal_model(loaded.model, train, held, cfg.heal, cfg.seed, cfg.progress)
    report = new_report("heal", to_dict(cfg), cfg.seed, loaded.tokenizer)
    report.update({"model": model_sec, "pruning": pruning,
                   "healing": {"text": {**text_info, **data_info}, **jsonable(summary)},
                   "timings": timings, "threads": threads})
    with atomic_dir(cfg.out, cfg.overwrite) as tmp:
        with timed(timings, "save"):
            save_model_files(healed, loaded.tokenizer, tmp)
        timings["total"] = time.perf_counter() - t_all
        write_json_atomic(tmp / "eavss_healing.json", jsonable(report))
        write_text_atomic(tmp / "eavss_healing.md", render_markdown(report))
    return report


def summary(report: dict, cfg) -> list[str]:
    """Loss before/after and where the model is."""
    h = report["healing"]
    tr = h["train"]
    loss = tr.get("loss_history") or []
    held = (f"; held-out loss {h['loss_before']:.4f} -> {h['loss_after']:.4f} nats/token"
            if h.get("loss_before") is not None else "")
    first = f"{loss[0]:.4f} -> {loss[-1]:.4f}" if loss else "n/a"
    return [f"healed ({h['method']}, {h['trainable_parameters']:,} trainable parameters, {tr['steps']} steps): "
            f"training loss {first}{held}",
            f"model saved to {cfg.out} (from_pretrained loads it); report: {cfg.out}/eavss_healing.md"]
