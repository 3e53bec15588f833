"""Finding the decoder layers (and hook sites inside them) of any decoder-only LM.

The layer stack is found by trying the known attribute paths of the common architectures, then by
a generic fallback (the largest ``nn.ModuleList`` of same-class modules whose length equals
``config.num_hidden_layers``). Nothing here changes the model.
"""

from __future__ import annotations

from torch import nn

from eavss.errors import EavssError

KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Mixtral, Gemma/Gemma2/Gemma3 (text), Phi3, SmolLM, OLMo ...
    "model.language_model.layers",  # Gemma3ForConditionalGeneration, Llava-style composites (5.x)
    "language_model.model.layers",  # older composite layout
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon, CodeGen
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "transformer.blocks",  # MPT
    "transformer.layers",
    "transformer.encoder.layers",  # ChatGLM
    "backbone.layers",  # Mamba-style
    "decoder.layers",  # base OPT model
    "layers",  # base models (LlamaModel ...)
    "h",  # base GPT-2 model
    "blocks",
)
"""Dotted paths tried, in order, by :func:`find_decoder_layers`."""

MLP_NAMES: tuple[str, ...] = ("mlp", "feed_forward", "ffn", "ff", "block_sparse_moe", "moe")
ACT_NAMES: tuple[str, ...] = ("act_fn", "act", "activation_fn", "activation", "act_func", "activation_function")


def expected_num_layers(model: nn.Module) -> int | None:
    """``num_hidden_layers`` of the model's (text, decoder) config, or None if it has none.

    Works for composite configs (``text_config``) and GPT-2 (``n_layer`` through ``attribute_map``).
    """
    config = getattr(model, "config", None)
    if config is None:
        return None
    try:
        config = config.get_text_config(decoder=True)
    except Exception:  # noqa: BLE001 - non-HF config objects
        pass
    n = getattr(config, "num_hidden_layers", None)
    return int(n) if isinstance(n, int) else None


def _get_path(model: nn.Module, path: str) -> nn.Module | None:
    obj: object = model
    for part in path.split("."):
        obj = getattr(obj, part, None) if not part.isdigit() else _index(obj, int(part))
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def _index(obj: object, i: int) -> object | None:
    try:
        return obj[i]  # type: ignore[index]
    except Exception:  # noqa: BLE001
        return None


def _homogeneous(mods: nn.ModuleList) -> bool:
    return len(mods) > 0 and len({type(m) for m in mods}) == 1


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Locate the list of decoder layers of ``model``.

    Tries :data:`KNOWN_LAYER_PATHS` in order, accepting the first non-empty ``nn.ModuleList`` whose
    length equals ``config.num_hidden_layers`` (any length when the config has none); then falls
    back to the largest ``nn.ModuleList`` whose elements all share one class and whose length
    equals ``config.num_hidden_layers``.

    Args:
        model: a causal LM (e.g. ``LlamaForCausalLM``) or base model.

    Returns:
        (path, layers): the dotted module path (e.g. ``"model.layers"``, ``"transformer.h"``) and
        the ``nn.ModuleList`` itself (the live object, not a copy); layer ``i`` is at ``f"{path}.{i}"``.

    Raises:
        EavssError: no such list was found (the message lists the paths looked for).
    """
    n = expected_num_layers(model)
    for path in KNOWN_LAYER_PATHS:
        mods = _get_path(model, path)
        if isinstance(mods, nn.ModuleList) and len(mods) > 0 and (n is None or len(mods) == n):
            return path, mods
    if n is not None:
        best: tuple[str, nn.ModuleList] | None = None
        for name, mod in model.named_modules():
            if isinstance(mod, nn.ModuleList) and len(mod) == n and _homogeneous(mod):
                # Prefer the shortest path among equal candidates (the outermost stack).
                if best is None or name.count(".") < best[0].count("."):
                    best = (name, mod)
        if best is not None:
            return best
    raise EavssError(
        f"could not find the decoder layers of {type(model).__name__} (num_hidden_layers={n}); looked at "
        f"{', '.join(KNOWN_LAYER_PATHS)} and for an nn.ModuleList of {n} same-class modules; "
        "this architecture is not supported, pass a standard decoder-only causal LM"
    )


def layer_module_paths(model: nn.Module) -> list[str]:
    """Dotted module paths of every decoder layer, in order (e.g. ``["model.layers.0", ...]``).

    Each path can be passed to ``model.get_submodule``.

    Raises:
        EavssError: see :func:`find_decoder_layers`.
    """
    path, layers = find_decoder_layers(model)
    return [f"{path}.{i}" for i in range(len(layers))]


def find_mlp_activation(layer: nn.Module) -> nn.Module | None:
    """The activation-function module inside a decoder layer's MLP, or None.

    Looked for as ``<mlp>.<act>`` with ``<mlp>`` in :data:`MLP_NAMES` (``mlp``, ``feed_forward``,
    ...) and ``<act>`` in :data:`ACT_NAMES` (``act_fn`` for Llama/Qwen2/Mistral/Gemma3, ``act`` for
    GPT-2/GPT-NeoX, ``activation_fn`` for Phi3), then directly on the layer (``activation_fn`` for
    OPT, whose MLP lives in the layer itself). Only ``nn.Module`` attributes count (a plain
    function cannot be hooked).

    The module's forward output is the hook site "mlp_act": shape (batch, seq, intermediate_size),
    the activation-function output. For gated MLPs (Llama, Qwen2, Mistral, Gemma3, Phi3:
    ``down(act(gate(x)) * up(x))``) it is ``act(gate(x))`` *before* the multiplication by
    ``up(x)``; for plain MLPs (GPT-2, GPT-NeoX, OPT: ``fc2(act(fc1(x)))``) it is the full hidden
    activation. Mixture-of-experts MLPs usually have no single activation module: None.
    Exception: OPT flattens tokens before its MLP, so there the output is
    (batch * seq, intermediate_size); reshape with the batch and sequence sizes of the input.

    Args:
        layer: one decoder layer (an element of :func:`find_decoder_layers`'s list).

    Returns:
        The activation ``nn.Module`` or None when none was found.
    """
    for mlp_name in MLP_NAMES:
        mlp = getattr(layer, mlp_name, None)
        if isinstance(mlp, nn.Module):
            for act_name in ACT_NAMES:
                act = getattr(mlp, act_name, None)
                if isinstance(act, nn.Module):
                    return act
    for act_name in ACT_NAMES:
        act = getattr(layer, act_name, None)
        if isinstance(act, nn.Module):
            return act
    return None


GATED_MLP_FORWARD = "down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))\nreturn down_proj"
"""The body (stripped lines) of the gated MLP forward that Llama, Qwen2, Qwen3, Mistral, Gemma,
Gemma3, OLMo2, Granite and SmolLM3 share in transformers (checked on 5.x): ``find_gated_mlp``
accepts only modules whose class's forward is exactly this (after its ``def`` line; a decorated
forward, a signature over several lines or a docstring do not match, and the hook is used)."""

_GATED_SOURCE: dict = {}  # class -> whether its forward's body is GATED_MLP_FORWARD


def _gated_forward(cls: type) -> bool:
    if cls not in _GATED_SOURCE:
        import inspect

        try:
            lines = inspect.getsource(cls.forward).splitlines()[1:]  # the body, after "def forward(self, x):"
            _GATED_SOURCE[cls] = "\n".join(ln.strip() for ln in lines if ln.strip()) == GATED_MLP_FORWARD
        except (OSError, TypeError, AttributeError):  # no source (compiled, built at runtime)
            _GATED_SOURCE[cls] = False
    return _GATED_SOURCE[cls]


def find_gated_mlp(layer: nn.Module, act: nn.Module) -> nn.Module | None:
    """The gated MLP module of a decoder layer whose activation module is ``act``, or None.

    Returned only when the MLP (``<mlp>`` in :data:`MLP_NAMES`) computes exactly
    ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``: its ``act_fn`` is ``act``, ``gate_proj``,
    ``up_proj`` and ``down_proj`` are modules, its class's forward is :data:`GATED_MLP_FORWARD`
    and no instance attribute overrides it (accelerate's offloading hooks set one). The statistics
    collector may then compute ``act_fn(gate) * up`` itself, with the ``mlp_act`` statistics, in one
    kernel (:data:`eavss.stats.collector.FUSE_SILU`). Phi3 (``gate_up_proj``) and mixture-of-experts
    MLPs give None.

    Args:
        layer: one decoder layer. act: its activation module (:func:`find_mlp_activation`).
    """
    for mlp_name in MLP_NAMES:
        mlp = getattr(layer, mlp_name, None)
        if isinstance(mlp, nn.Module) and getattr(mlp, "act_fn", None) is act:
            if all(isinstance(getattr(mlp, n, None), nn.Module) for n in ("gate_proj", "up_proj", "down_proj")) \
                    and "forward" not in mlp.__dict__ and _gated_forward(type(mlp)):
                return mlp
            return None
    return None


CONTEXT_ATTRS: tuple[str, ...] = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
"""Config attributes that hold a model's trained context length, in the order they are tried."""


def context_length(model: nn.Module) -> tuple[int | None, str | None]:
    """The trained context length of a model, in tokens, and the config attribute it came from.

    Reads the text config (``get_text_config()`` for multimodal wrappers). ``(None, None)`` when
    the config names none. Learned-position models (GPT-2) cannot run past it at all; RoPE models
    run but compute positions they were never trained on.
    """
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None, None
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for attr in CONTEXT_ATTRS:
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v, attr
    return None, None


def check_lengths(model: nn.Module, lengths: dict[str, int | None]) -> int | None:
    """Refuse any length (tokens; keyed by its config key) longer than the model's trained context.

    Returns:
        The context length (None when the config names none; then nothing is checked).

    Raises:
        EavssError: a length exceeds the context; the message names the key and the largest value.
    """
    ctx, attr = context_length(model)
    if ctx is None:
        return None
    for key, n in lengths.items():
        if n is not None and n > ctx:
            raise EavssError(f"{key}={n} is longer than the model's context of {ctx} tokens (config.{attr}); "
                             f"set {key}={ctx} or less")
    return ctx


def sliding_window(model: nn.Module) -> int | None:
    """The attention window of a model with sliding-window layers (Mistral, Gemma-3 ...), in tokens;
    None when no layer slides (``use_sliding_window=False``, or ``layer_types`` all full)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    w = getattr(cfg, "sliding_window", None)
    if not isinstance(w, int) or w <= 0 or getattr(cfg, "use_sliding_window", True) is False:
        return None
    types = getattr(cfg, "layer_types", None)
    if types and not any("sliding" in str(t) for t in types):
        return None
    return w


def check_layer_indices(indices, n: int, noun: str = "layer indices", verb: str = "remove") -> list[int]:
    """``indices`` as a sorted list of 0-based decoder-layer indices of a model with ``n`` layers.

    The one check behind every command that names layers (removal, skipping, training); callers
    add their own rule on the count (removal keeps one layer, training needs one).

    Raises:
        EavssError: not a list of integers, an index outside ``0..n-1``, or an index repeated; the
            message says ``noun`` for the list and ``verb`` for what is done to each layer.
    """
    import operator

    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        raise EavssError(f"{noun} must be a list of integers, got {indices!r}; pass e.g. [3, 7]")
    out: list[int] = []
    for raw in indices:
        if isinstance(raw, bool):
            raise EavssError(f"layer index {raw!r} is not an integer; pass 0-based integer layer indices")
        try:
            i = operator.index(raw)
        except TypeError:
            raise EavssError(f"layer index {raw!r} is not an integer; pass 0-based integer layer indices") from None
        if not 0 <= i < n:
            raise EavssError(f"layer index {i} is out of range for a model with {n} layers; pass indices in 0..{n - 1}")
        out.append(i)
    dups = sorted({i for i in out if out.count(i) > 1})
    if dups:
        raise EavssError(f"layer indices {dups} are given more than once; pass each layer to {verb} once")
    return sorted(out)
