"""Canonical capture sites ("hook points") inside a decoder layer.

==============  =====================================================================  ============
site            tensor captured (per decoder layer ``l``)                              width ``D``
==============  =====================================================================  ============
``resid_post``  the layer's output hidden state, i.e. the residual stream after block  hidden size
                ``l`` (the tensor the official AVSS code hooks; default)
``resid_delta`` the block's update to the residual stream, output minus input        hidden size
                (what layer ``l`` adds: attention + MLP contributions)
``mlp_act``     the output of the MLP's activation function (for gated MLPs:           intermediate
                ``act(gate_proj(x))``, before the multiplication by ``up_proj(x)``)     size
==============  =====================================================================  ============

A site resolves to ``(module_to_hook, wants_layer_input)``; the forward hook's output is the
captured tensor (a plain tensor in transformers 5.x; the first element when a layer returns a
tuple). New sites plug in with :func:`register_site`.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from eavss.errors import EavssError
from eavss.registry import Registry

SiteResolver = Callable[[torch.nn.Module, int, torch.nn.Module], torch.nn.Module]
SITES: Registry[SiteResolver] = Registry("capture site", key="stats.site")
"""Capture sites: ``fn(model, layer_index, layer_module) -> module_to_hook``, with ``help``."""


def register_site(name: str, doc: str = ""):
    """Decorator registering ``fn(model, layer_index, layer_module) -> module_to_hook`` as site ``name``."""
    return SITES.register(name, help=doc)


@register_site("resid_post", "decoder layer output: the residual stream after the block")
def _resid_post(model: torch.nn.Module, index: int, layer: torch.nn.Module) -> torch.nn.Module:
    return layer


@register_site("resid_delta", "decoder layer output minus its input: the block's update to the residual stream")
def _resid_delta(model: torch.nn.Module, index: int, layer: torch.nn.Module) -> torch.nn.Module:
    return layer


DELTA_SITES = frozenset({"resid_delta"})
"""Sites whose captured tensor is the hooked module's output minus its hidden-state input."""


@register_site("mlp_act", "output of the MLP activation function inside the decoder layer")
def _mlp_act(model: torch.nn.Module, index: int, layer: torch.nn.Module) -> torch.nn.Module:
    from eavss.models.layers import find_mlp_activation

    mod = find_mlp_activation(layer)
    if mod is None:
        raise EavssError(f"site 'mlp_act': no activation-function module found in decoder layer {index} "
                         f"({type(layer).__name__}); use stats.site=resid_post")
    return mod


def resolve_site(name: str) -> SiteResolver:
    """The resolver for site ``name``.

    Raises:
        EavssError: unknown site name.
    """
    return SITES[name]


def output_tensor(output) -> torch.Tensor:
    """The hidden-state tensor of a module output: the tensor itself, or element 0 of a tuple/list,
    or ``.last_hidden_state``/``.hidden_states`` of a ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    for name in ("last_hidden_state", "hidden_states"):
        t = getattr(output, name, None)
        if isinstance(t, torch.Tensor):
            return t
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(output).__name__}")


def token_view(act: torch.Tensor, tokens: tuple, index: int, hint: str = "") -> torch.Tensor:
    """The ``(B, T, D)`` view of layer ``index``'s site tensor for a batch of ``tokens = (B, T)``:
    ``act`` itself, or unflattened from ``(B*T, D)`` (MLPs that flatten tokens: OPT).

    Raises:
        EavssError: ``act`` is neither shape (``hint`` is appended to the message).
    """
    B, T = (int(v) for v in tokens)
    if act.dim() == 2 and act.shape[0] == B * T:
        act = act.view(B, T, act.shape[-1])
    if tuple(act.shape[:2]) != (B, T):
        raise EavssError(f"layer {index}: activation shape {tuple(act.shape)} does not match the token mask "
                         f"{(B, T)}{hint}")
    return act


def delta_input(site: str, index: int, out: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden-state input of decoder layer ``index`` whose output is ``out``, for a site that
    subtracts it (``resid_delta``).

    Raises:
        EavssError: the layer has no hidden-state input of ``out``'s shape.
    """
    x = input_tensor(args, kwargs)
    if x is None or x.shape != out.shape:
        raise EavssError(f"site {site}: decoder layer {index} has no hidden-state input of the output's shape; "
                         "use stats.site=resid_post")
    return x


def input_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The hidden-state input of a decoder layer's forward call (positional or ``hidden_states=``)."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    t = kwargs.get("hidden_states")
    return t if isinstance(t, torch.Tensor) else None


class SiteHooks:
    """Forward hooks on one capture site of every decoder layer: the one place hooks are attached
    and removed (the statistics collector and the probe features both use it).

    For each decoder layer ``l`` the hook calls ``fn(l, act, args, kwargs)`` where ``act`` is the
    site's tensor ``(B, T, D)`` -- for ``resid_delta`` already the layer's output minus its input
    -- and ``args``/``kwargs`` are the hooked module's call arguments (for the layer input).
    ``fn`` returns nothing; the model's output is never changed. With ``materialize_delta=False``
    a ``resid_delta`` hook passes the layer *output* instead and ``fn`` forms the difference itself
    (the statistics collector does it in its reduction kernel, with no temporary).

    Args:
        model: a transformers causal LM (or base model).
        site: a name in :data:`SITES`.
        fn: the callback above.
        layers: the decoder ``ModuleList`` (found with
            :func:`eavss.models.layers.find_decoder_layers` when None).
        materialize_delta: for ``resid_delta``, pass ``output - input`` (default) or the output
            itself (the callback subtracts).

    Raises:
        EavssError: unknown site, no decoder layers, a site module missing in a layer; at run
            time, a ``resid_delta`` layer without a hidden-state input of the output's shape.

    Usage: ``with SiteHooks(model, "resid_post", fn): model(**batch)``; or ``attach()`` /
    ``detach()`` (both idempotent).
    """

    def __init__(self, model: torch.nn.Module, site: str, fn: Callable, layers: torch.nn.ModuleList | None = None,
                 materialize_delta: bool = True):
        if layers is None:
            from eavss.models.layers import find_decoder_layers

            _, layers = find_decoder_layers(model)
        self.site = site
        self.delta = site in DELTA_SITES
        self.materialize_delta = materialize_delta
        resolver = resolve_site(site)
        self.modules = [resolver(model, i, layer) for i, layer in enumerate(layers)]
        self._fn = fn
        self._handles: list = []

    def _hook(self, index: int):
        def hook(module, args, kwargs, output):
            act = output_tensor(output)
            if self.delta and self.materialize_delta:  # the block's update to the residual stream: output - input
                act = act - delta_input(self.site, index, act, args, kwargs)
            self._fn(index, act, args, kwargs)
            return None

        return hook

    @property
    def attached(self) -> bool:
        """Whether the hooks are registered."""
        return bool(self._handles)

    def attach(self, skip: Iterable[int] = ()) -> None:
        """Register the hooks (idempotent), except on the layers in ``skip`` (whose callback the
        caller invokes itself: the statistics collector's fused SiLU at ``mlp_act``)."""
        if not self._handles:
            skip = set(skip)
            self._handles = [m.register_forward_hook(self._hook(i), with_kwargs=True)
                             for i, m in enumerate(self.modules) if i not in skip]

    def detach(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "SiteHooks":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()
