"""Removing decoder layers from a model in place, and saving the result as a plain HF folder.

After :func:`remove_layers` the model is self-consistent: the kept layers are renumbered (every
``layer_idx`` is the new position, so the KV cache has one slot per kept layer), the config counts
the kept layers and per-layer config lists (Gemma-3 ``layer_types`` ...) are shortened, so greedy
generation with and without the cache agree and a saved copy reloads with plain
``AutoModelForCausalLM.from_pretrained`` to the same logits.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from torch import nn

from eavss.errors import EavssError
from eavss.io import atomic_dir
from eavss.models.layers import check_layer_indices, find_decoder_layers

LAYER_INDEX_ATTRS: tuple[str, ...] = ("layer_idx", "layer_id", "layer_index", "layer_number")
"""Attributes holding a module's own layer position (0- or 1-based), renumbered after removal."""

INDEX_LIST_ATTRS: tuple[str, ...] = ("mlp_only_layers",)
"""Config lists that hold layer *indices* (remapped, not sliced)."""

THRESHOLD_ATTRS: tuple[str, ...] = ("max_window_layers", "first_k_dense_replace")
"""Config ints meaning "layers with index below this"; set to how many kept layers were below it."""


def _validate_indices(indices: Sequence[int], n: int) -> list[int]:
    """Sorted unique 0-based indices to remove (at least one layer kept), or EavssError."""
    out = check_layer_indices(indices, n, noun="layer indices", verb="remove")
    if len(out) >= n:
        raise EavssError(f"cannot remove all {n} layers; keep at least one layer")
    return out


def _renumber_layer(layer: nn.Module, old: int, new: int) -> None:
    """Set every ``layer_idx``-like int attribute in ``layer`` (0- or 1-based) to the new position."""
    for mod in layer.modules():
        for name in LAYER_INDEX_ATTRS:
            val = getattr(mod, name, None)
            if isinstance(val, int) and not isinstance(val, bool) and val - old in (0, 1):
                setattr(mod, name, new + (val - old))


def _decoder_configs(model: nn.Module) -> list[Any]:
    """The config objects that describe the decoder stack (text config, and the top one if the same)."""
    top = model.config
    try:
        text = top.get_text_config(decoder=True)
    except Exception:  # noqa: BLE001
        text = top
    return [text] if text is top else [text, top]


def _update_config(cfg: Any, n_old: int, kept: list[int]) -> list[str]:
    """Shorten per-layer lists and counts of one config; return the names of the attributes changed."""
    changed: list[str] = []
    kept_set = set(kept)
    for name, val in list(vars(cfg).items()):
        if name in INDEX_LIST_ATTRS and isinstance(val, (list, tuple)):
            new_pos = {old: pos for pos, old in enumerate(kept)}
            setattr(cfg, name, type(val)(new_pos[i] for i in val if i in kept_set))
            changed.append(name)
        elif isinstance(val, (list, tuple)) and len(val) == n_old and "layer" in name.lower():
            setattr(cfg, name, type(val)(val[i] for i in kept))
            changed.append(name)
        elif name in THRESHOLD_ATTRS and isinstance(val, int) and not isinstance(val, bool):
            setattr(cfg, name, sum(1 for i in kept if i < val))
            changed.append(name)
    if getattr(cfg, "num_hidden_layers", None) == n_old:
        cfg.num_hidden_layers = len(kept)  # GPT-2: attribute_map sends it to n_layer
        changed.append("num_hidden_layers")
    return changed


def remove_layers(model: nn.Module, indices: Sequence[int]) -> dict:
    """Delete decoder layers from ``model`` in place.

    Builds a new ``nn.ModuleList`` of the kept layers (original order), renumbers every
    ``layer_idx`` (and ``layer_id``/``layer_index``/``layer_number``) attribute in each kept layer
    and its submodules to the new position, sets ``num_hidden_layers`` (GPT-2: ``n_layer`` through
    ``attribute_map``), shortens every per-layer config list (any list/tuple attribute of length
    ``num_layers_before`` whose name contains "layer", e.g. Gemma-3 ``layer_types``), remaps
    ``mlp_only_layers`` and the thresholds ``max_window_layers``/``first_k_dense_replace``; for
    composite models the text (decoder) config is the one changed. Records
    ``config.eavss_removed_layers`` (sorted 0-based indices in the *original* model, accumulated
    over repeated calls) and ``config.eavss_original_num_layers``; both are saved with the config.

    Args:
        model: a causal LM (see :func:`eavss.models.layers.find_decoder_layers`).
        indices: 0-based indices of the current layers to remove (any order).

    Returns:
        dict with ``removed`` (sorted current indices removed), ``kept`` (current indices kept, in
        order), ``removed_paths`` (their module paths before removal, e.g. ``"model.layers.7"``),
        ``removed_original`` (the same layers as indices of the original model),
        ``num_layers_before``, ``num_layers_after``.

    Raises:
        EavssError: an index is not an int, out of range or repeated, or all layers would go, or the
            layer list cannot be found.
    """
    path, layers = find_decoder_layers(model)
    n_old = len(layers)
    removed = _validate_indices(indices, n_old)
    removed_set = set(removed)
    kept = [i for i in range(n_old) if i not in removed_set]

    top = model.config
    orig_n = int(getattr(top, "eavss_original_num_layers", None) or n_old)
    prev_removed = list(getattr(top, "eavss_removed_layers", None) or [])
    current_to_orig = [i for i in range(orig_n) if i not in set(prev_removed)]
    if len(current_to_orig) != n_old:  # stale bookkeeping (e.g. layers changed by other code): restart it
        orig_n, prev_removed, current_to_orig = n_old, [], list(range(n_old))
    removed_original = [current_to_orig[i] for i in removed]

    if getattr(top, "scale_attn_by_inverse_layer_idx", False):
        warnings.warn(
            "config.scale_attn_by_inverse_layer_idx is set: the attention scale depends on the layer "
            "index, so a saved copy of the pruned model will not compute what this one computes",
            stacklevel=2,
        )

    new_layers = nn.ModuleList([layers[i] for i in kept])
    for new_pos, old in enumerate(kept):
        _renumber_layer(new_layers[new_pos], old, new_pos)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new_layers)

    _update_config(_decoder_configs(model)[0], n_old, kept)
    for cfg in _decoder_configs(model):
        cfg.eavss_removed_layers = sorted(prev_removed + removed_original)
        cfg.eavss_original_num_layers = orig_n

    return {
        "removed": removed,
        "kept": kept,
        "removed_paths": [f"{path}.{i}" for i in removed],
        "removed_original": removed_original,
        "num_layers_before": n_old,
        "num_layers_after": len(kept),
    }


@contextlib.contextmanager
def skip_layers(model: nn.Module, indices: Sequence[int]) -> Iterator[dict]:
    """Context manager: inside it, ``model`` computes exactly what it would with ``indices`` removed.

    On entry it applies :func:`remove_layers` to the live model -- a new ``nn.ModuleList`` that
    holds the *same* kept layer modules (no weight is copied or allocated), renumbered
    ``layer_idx``-like attributes, shortened per-layer config lists and counts -- and on exit
    (also when the body raises) it puts everything back: the original ``ModuleList`` object, every
    ``layer_idx``-like attribute of every layer, and every config attribute that the removal
    changed or added (including the ``eavss_removed_layers`` bookkeeping). Parameters, buffers and
    hooks registered on the layers are untouched throughout. Contexts nest; the indices of an
    inner one refer to the layers that the outer one kept.

    Use it to score a model with layers ablated without a deep copy (layer-skip loss, SLEB). Do
    not remove, add or reorder layers of ``model`` inside the context (the exit would undo it).

    Example::

        with skip_layers(model, [3, 7]) as info:   # info: what remove_layers returned
            logits = model(input_ids).logits        # (B, T, V): as model with layers 3 and 7 removed

    Args:
        model: a causal LM (see :func:`eavss.models.layers.find_decoder_layers`).
        indices: 0-based indices of the current decoder layers to skip (any order); may be empty.

    Yields:
        dict: the :func:`remove_layers` result (``removed``, ``kept``, ``removed_paths``,
        ``removed_original``, ``num_layers_before``, ``num_layers_after``).

    Raises:
        EavssError: as :func:`remove_layers` (an index not an int, out of range or repeated, or all
            layers skipped); raised on entry, with the model unchanged.
    """
    path, layers = find_decoder_layers(model)
    _validate_indices(indices, len(layers))  # fail before touching anything
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    idx_attrs = [
        (mod, name, getattr(mod, name))
        for layer in layers
        for mod in layer.modules()
        for name in LAYER_INDEX_ATTRS
        if name in vars(mod)
    ]
    configs = _decoder_configs(model)
    before = [dict(vars(cfg)) for cfg in configs]
    missing = object()
    changed: list[list[tuple[str, Any]]] = [[] for _ in configs]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scale_attn_by_inverse_layer_idx warning is about saving
            info = remove_layers(model, indices)
        for j, cfg in enumerate(configs):
            after = vars(cfg)
            changed[j] = [(k, before[j].get(k, missing)) for k in after if k not in before[j] or after[k] is not before[j][k]]
        yield info
    finally:
        setattr(parent, attr, layers)
        for mod, name, val in idx_attrs:
            setattr(mod, name, val)
        for j, cfg in enumerate(configs):
            d = vars(cfg)
            if not changed[j]:  # failed inside remove_layers: restore every attribute seen at entry
                changed[j] = [(k, before[j].get(k, missing)) for k in list(d) if k not in before[j] or d[k] is not before[j][k]]
            for k, old in changed[j]:
                if old is missing:
                    d.pop(k, None)
                else:
                    d[k] = old


def save_model(model: nn.Module, tokenizer: Any, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` to the folder ``out``, atomically.

    The folder loads with plain ``AutoModelForCausalLM.from_pretrained(out)`` and
    ``AutoTokenizer.from_pretrained(out)`` (no custom code). A GGUF-derived model's quantisation
    flag is dropped first (its weights are already dense), so saving works.

    Args:
        model: a ``transformers.PreTrainedModel``.
        tokenizer: its tokenizer, or None to save the model only.
        out: destination folder; built in a temporary sibling and renamed when complete.
        overwrite: replace an existing non-empty ``out``.

    Returns:
        The output folder path.

    Raises:
        EavssError: ``out`` exists and is not empty and ``overwrite`` is false, or ``out`` is a file.
    """
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_model_files(model, tokenizer, tmp)
    return Path(out)


def save_model_files(model: nn.Module, tokenizer: Any, folder: str | os.PathLike) -> None:
    """Write ``model`` (safetensors) and ``tokenizer`` into ``folder`` (created if missing), not
    atomically: for use inside an :func:`eavss.io.atomic_dir` that holds other outputs too.
    :func:`save_model` is the atomic form."""
    from eavss.io import follow_umask

    strip_quantization(model)
    Path(folder).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    for f in Path(folder).iterdir():  # safetensors writes 0600; a saved model is shared like any output
        if f.is_file():
            follow_umask(f)


def strip_quantization(model: nn.Module) -> None:
    """Remove a (GGUF) quantisation config from a model whose weights are dense, in place.

    transformers refuses ``save_pretrained``/``.half()``/Trainer on a model flagged as quantised;
    after GGUF dequantisation the flag is all that is left. Uses the quantizer's own
    ``remove_quantization_config`` when present. No-op for a plain model.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
        model.is_quantized = False
