"""Which parameters train: whole decoder layers ("full") or LoRA adapters on them ("lora").

Targeted training changes only the layers a score selected (EAVSS's hallucination-prone layers,
or the neighbours of removed layers when healing a pruned model); everything else is frozen
(``requires_grad = False``) and stays bit-identical.

* ``method="full"``: every parameter of the selected decoder layers trains (attention, MLP, norms).
* ``method="lora"``: LoRA (Hu et al. 2021, arXiv 2106.09685) through ``peft``: each targeted
  linear map ``W x`` becomes ``W x + (alpha / r) * B A x`` with ``A`` (r x in) random, ``B``
  (out x r) zero, so training starts from the unchanged model. Only ``A`` and ``B`` train; the
  adapters are put on the selected layers only, with peft's ``layers_to_transform`` (the layer
  indices) and ``layers_pattern`` (the escaped dotted path of the layer list found by
  :func:`eavss.models.layers.find_decoder_layers`, e.g. ``model\\.layers``; peft matches module
  names against ``(?:^|.*?\\.){pattern}\\.(?P<idx>\\d+)\\.``, tuners_utils.check_target_module_exists,
  peft 0.21). ``target_modules`` must be a list of names: peft ignores the layer restriction for a
  regex string (it refuses the combination). After wrapping, the adapters actually created are
  checked: every one must sit in a selected layer and every selected layer must have one.

:func:`merge_for_save` folds the adapters into the weights (``W + (alpha/r) B A``) and returns the
plain transformers model, which :func:`eavss.models.surgery.save_model` saves as a folder that
``AutoModelForCausalLM.from_pretrained`` loads without peft.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from torch import nn

from eavss.errors import EavssError
from eavss.models.layers import check_layer_indices, find_decoder_layers

METHODS = ("full", "lora")
"""Accepted ``method`` values of :func:`select_trainable`."""


def validate_layers(layers: Sequence[int], n: int) -> list[int]:
    """The layer indices sorted, after checking them against a model with ``n`` decoder layers.

    Args:
        layers: 0-based decoder-layer indices (any order). n: number of decoder layers.

    Returns:
        Sorted list of ints.

    Raises:
        EavssError: not a list of integers, empty, an index outside 0..n-1, or an index repeated.
    """
    out = check_layer_indices(layers, n, noun="layers", verb="train")
    if not out:
        raise EavssError("no layers to train were given; pass at least one 0-based decoder-layer index")
    return out


def _is_linear(mod: nn.Module) -> bool:
    """nn.Linear, or transformers' GPT-2 ``Conv1D`` (a linear map with transposed weight)."""
    if isinstance(mod, nn.Linear):
        return True
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "weight") and getattr(mod.weight, "ndim", 0) == 2


def default_target_modules(model: nn.Module) -> list[str]:
    """Names (relative to a decoder layer) of the linear maps inside a decoder layer: the LoRA default.

    Every ``nn.Linear`` (or GPT-2 ``Conv1D``) found in decoder layer 0, as its dotted path inside
    the layer, e.g. Llama/Qwen2/Mistral/Gemma3: ``self_attn.{q,k,v,o}_proj``,
    ``mlp.{gate,up,down}_proj``; GPT-2: ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``,
    ``mlp.c_proj``; OPT: ``self_attn.{q,k,v,out}_proj``, ``fc1``, ``fc2``. That is all attention
    and MLP projections (Hu et al. 2021 adapt attention only; later work, e.g. QLoRA, Dettmers et
    al. 2023, arXiv 2305.14314, finds adapting every linear layer needed to match full fine-tuning).
    peft matches a name by suffix (``key.endswith("." + name)``), so paths inside the layer are exact.

    Returns:
        list of module paths relative to the layer, in module order.

    Raises:
        EavssError: the layer list cannot be found, or layer 0 has no linear map.
    """
    _, layers = find_decoder_layers(model)
    names = [name for name, mod in layers[0].named_modules() if name and _is_linear(mod)]
    if not names:
        raise EavssError(f"decoder layer 0 of {type(model).__name__} has no linear maps for LoRA; "
                         "pass target_modules=[...] or method='full'")
    return names


def _layer_of(name: str, layers_path: str) -> int | None:
    """Decoder-layer index of a parameter/module name under ``layers_path`` (None when outside the stack)."""
    m = re.match(rf"(?:^|.*?\.){re.escape(layers_path)}\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else None


def _summary(model: nn.Module, layers_path: str, method: str, layers: list[int], extra: dict) -> dict:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for _, p in trainable)
    return {
        "method": method,
        "layers": layers,
        "layers_path": layers_path,
        "trainable_parameters": count,
        "total_parameters": total,
        "trainable_fraction": count / total if total else 0.0,
        "trainable_names": [n for n, _ in trainable],
        **extra,
    }


def select_trainable(
    model: nn.Module,
    layers: Sequence[int],
    method: str = "full",
    lora_r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
) -> tuple[nn.Module, dict]:
    """Freeze everything except the given decoder layers (all their weights, or LoRA adapters on them).

    ``method="full"``: ``requires_grad`` is True exactly for the parameters under
    ``<layers_path>.<i>.`` for ``i`` in ``layers`` (embeddings, final norm, LM head and the other
    layers are frozen). The model is modified in place and returned.

    ``method="lora"``: all base weights are frozen and peft LoRA adapters (rank ``lora_r``, scale
    ``lora_alpha / lora_r``, dropout ``lora_dropout`` on the adapter input) are added to the
    ``target_modules`` of the selected layers only (``layers_to_transform=layers``,
    ``layers_pattern`` = the escaped path of the layer list). Returns the
    ``peft.PeftModelForCausalLM`` wrapping ``model``; peft injects the adapters into ``model``
    itself, so keep using the returned object. Defaults r=8, alpha=16 (scale 2) are peft's and
    the LoRA paper's common setting; dropout 0 keeps training deterministic given the seed.

    Args:
        model: a causal LM (``transformers.PreTrainedModel``; see
            :func:`eavss.models.layers.find_decoder_layers`), not already peft-wrapped.
        layers: 0-based indices of the decoder layers to train (any order, each once).
        method: "full" or "lora".
        lora_r: LoRA rank (>= 1). lora_alpha: LoRA scale numerator (> 0). lora_dropout: in [0, 1).
        target_modules: LoRA only; module names (suffixes of module paths, e.g. ``["q_proj",
            "v_proj"]`` or ``["self_attn.q_proj"]``); default :func:`default_target_modules`
            (every attention and MLP linear map of the architecture). A regex string is refused.

    Returns:
        (model, summary): the model to train (the same object for "full", the peft wrapper for
        "lora") and a dict with ``method``, ``layers`` (sorted), ``layers_path``,
        ``trainable_parameters`` (count), ``total_parameters`` (count, adapters included),
        ``trainable_fraction``, ``trainable_names`` (parameter names, in module order), and for
        LoRA ``target_modules``, ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``adapted_modules``
        (full module paths that got an adapter), ``peft_version``.

    Raises:
        EavssError: ``layers`` empty, not integers, out of range or repeated; unknown ``method``;
            bad LoRA hyper-parameters; ``target_modules`` a string or matching nothing in a selected
            layer; the model is already peft-wrapped; peft not installed (LoRA).
    """
    if method not in METHODS:
        raise EavssError(f"unknown training method {method!r}; choose one of {', '.join(METHODS)}")
    if type(model).__module__.startswith("peft."):
        raise EavssError("the model is already peft-wrapped; pass the plain transformers model "
                         "(merge_for_save(model) returns it)")
    layers_path, stack = find_decoder_layers(model)
    chosen = validate_layers(layers, len(stack))
    chosen_set = set(chosen)

    if method == "full":
        for name, p in model.named_parameters():
            p.requires_grad_(_layer_of(name, layers_path) in chosen_set)
        return model, _summary(model, layers_path, method, chosen, {})

    # ---- LoRA
    if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r < 1:
        raise EavssError(f"lora_r={lora_r!r} must be an integer >= 1; pass e.g. lora_r=8")
    if not float(lora_alpha) > 0:
        raise EavssError(f"lora_alpha={lora_alpha!r} must be > 0; pass e.g. lora_alpha=16")
    if not 0.0 <= float(lora_dropout) < 1.0:
        raise EavssError(f"lora_dropout={lora_dropout!r} must be in [0, 1); pass e.g. 0.0")
    if isinstance(target_modules, (str, bytes)):
        raise EavssError(f"target_modules={target_modules!r} is a string, which peft treats as a regex and "
                         "then ignores the layer restriction; pass a list of module names, e.g. ['q_proj', 'v_proj']")
    targets = list(target_modules) if target_modules is not None else default_target_modules(model)
    if not targets:
        raise EavssError("target_modules is empty; pass module names such as ['q_proj', 'v_proj'] or leave it None")
    try:
        import peft
        from peft import LoraConfig, get_peft_model
    except ImportError:  # pragma: no cover - peft is a dependency
        raise EavssError("method='lora' needs peft; install it: pip install 'peft>=0.13'") from None

    # Conv1D (GPT-2) stores weights transposed: peft needs fan_in_fan_out=True for it.
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for m in stack[chosen[0]].modules())
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=lora_r,
        lora_alpha=float(lora_alpha),
        lora_dropout=float(lora_dropout),
        target_modules=targets,
        layers_to_transform=chosen,
        layers_pattern=re.escape(layers_path),
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM",
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise EavssError(f"LoRA target_modules {targets} match no linear map in layers {chosen}; "
                         f"pass names from default_target_modules(model) ({exc.__class__.__name__})") from None

    adapted = [name for name, mod in wrapped.get_base_model().named_modules() if hasattr(mod, "lora_A")
               and isinstance(mod.lora_A, nn.ModuleDict) and len(mod.lora_A) > 0]
    where = {_layer_of(name, layers_path) for name in adapted}
    stray = sorted(name for name in adapted if _layer_of(name, layers_path) not in chosen_set)
    if stray:  # pragma: no cover - guards a peft change in layer matching
        raise EavssError(f"peft put LoRA adapters outside the selected layers ({stray[:3]}); "
                         "pin peft to a version where layers_to_transform works, e.g. peft==0.21.2")
    missing = sorted(chosen_set - where)
    if missing:
        raise EavssError(f"LoRA target_modules {targets} match nothing in layers {missing}; "
                         f"pass names from default_target_modules(model)")
    extra = {
        "target_modules": targets,
        "lora_r": lora_r,
        "lora_alpha": float(lora_alpha),
        "lora_dropout": float(lora_dropout),
        "adapted_modules": adapted,
        "peft_version": peft.__version__,
    }
    return wrapped, _summary(wrapped, layers_path, method, chosen, extra)


def merge_for_save(model: nn.Module) -> Any:
    """The plain transformers model, with LoRA adapters folded into the weights.

    For a peft model: ``merge_and_unload()`` (each adapted weight becomes ``W + (alpha/r) B A``,
    adapters removed) and the underlying ``transformers`` model is returned. A plain model is
    returned as it is. In both cases every parameter gets ``requires_grad = True`` again (undoing
    :func:`select_trainable`'s freezing) and the model is put in eval mode, so the result is
    what ``from_pretrained`` would give. Save it with :func:`eavss.models.surgery.save_model`.

    Args:
        model: what :func:`select_trainable` returned (peft-wrapped or not).

    Returns:
        transformers.PreTrainedModel without any peft module.

    Raises:
        EavssError: the peft model holds an adapter type that cannot be merged.
    """
    if type(model).__module__.startswith("peft."):
        try:
            model = model.merge_and_unload()
        except (AttributeError, ValueError) as exc:
            raise EavssError(f"cannot merge the adapters of this peft model ({exc}); use method='lora' or 'full'") from None
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return model
