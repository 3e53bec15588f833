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

from typing import Callable

import torch

from eavss.errors import EavssError

SiteResolver = Callable[[torch.nn.Module, int, torch.nn.Module], torch.nn.Module]
SITES: dict[str, SiteResolver] = {}
SITE_DOCS: dict[str, str] = {}


def register_site(name: str, doc: str = ""):
    """Decorator registering ``fn(model, layer_index, layer_module) -> module_to_hook``."""

    def deco(fn: SiteResolver) -> SiteResolver:
        SITES[name] = fn
        SITE_DOCS[name] = doc or (fn.__doc__ or "").strip().splitlines()[0]
        return fn

    return deco


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
    try:
        return SITES[name]
    except KeyError:
        raise EavssError(f"unknown capture site {name!r}; choose one of {sorted(SITES)}") from None


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


def input_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The hidden-state input of a decoder layer's forward call (positional or ``hidden_states=``)."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    t = kwargs.get("hidden_states")
    return t if isinstance(t, torch.Tensor) else None
