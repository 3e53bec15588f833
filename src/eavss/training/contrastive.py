"""Contrastive hallucination mitigation: InfoNCE over question/answer representations, LM loss on answers.

For one question ``q`` with truthful answer ``a+`` and hallucinated answers ``a-_1 .. a-_K``, each
answer is read by the model after the prompt (``prompt + answer`` as one sequence, teacher
forcing). At the selected decoder layers ``S`` (EAVSS's hallucination-prone layers):

* **anchor** ``z_q`` = the representation of the question: the residual stream at the prompt's
  last token (``anchor_pooling="last"``), averaged over the layers in ``S``. With causal attention
  the prompt positions do not depend on the answer that follows, so ``z_q`` is the same in every
  sequence of the question; it is taken from the truthful sequence.
* **positive** ``z+`` = representation of ``a+``: the residual stream (``site="resid_post"``,
  the decoder layer's output) averaged over the answer's tokens (``answer_pooling="mean"``), then
  over the layers in ``S`` (``layer_reduction="mean"``).
* **negatives** ``z-_k`` = the same for each hallucinated answer.

Loss (InfoNCE, van den Oord et al. 2018, arXiv 1807.03748, eq. 4; cosine similarity with a
temperature as in SimCLR, Chen et al. 2020, arXiv 2002.05709)::

    s(u, v) = u.v / (|u| |v|)
    L = -log( exp(s(z_q, z+)/tau) / (exp(s(z_q, z+)/tau) + sum_k exp(s(z_q, z-_k)/tau)) )

It pulls the truthful answer's representation towards the question's and pushes the hallucinated
ones away, in the layers where EAVSS says the two classes differ. Ragged negatives (questions with
different numbers of hallucinated answers) are handled with a mask.

Options and why the defaults:

* ``site``: "resid_post" (default) is the tensor EAVSS scores and the decoder layer's whole output,
  so the loss acts on what later layers read; "resid_delta" (output minus input) isolates what the
  layer itself adds (the residual stream is dominated by earlier layers' contributions).
* ``answer_pooling``: "mean" (default) uses every answer token (answers are several tokens; EAVSS
  statistics are over all answer tokens too); "last" uses the final answer token, which has read
  the whole answer (cheaper signal, but one position).
* ``anchor_pooling``: "last" (default) is the prompt's last token, the only prompt position that
  has read the whole question under causal attention and the one that predicts the answer's first
  token; "mean" averages all prompt tokens (template and few-shot text included, which are the same
  for every question and dilute it).
* ``layer_reduction``: "mean" (default) averages the pooled vectors of the layers in ``S`` (one
  D-dim vector per answer); "normalized_mean" L2-normalises each layer's vector first so every layer
  weighs the same in the cosine — use it when ``S`` spans layers of very different activation scale
  (the residual stream grows ~250x with depth in SmolLM2, so a plain mean is dominated by the
  deepest selected layer); "concat" keeps layers apart (``len(S) * D`` dims).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from eavss.errors import EavssError
from eavss.models.layers import find_decoder_layers
from eavss.stats.sites import input_tensor, output_tensor

SITES = ("resid_post", "resid_delta")
"""Where the representation is read: the decoder layer's output, or output minus input."""
ANSWER_POOLINGS = ("mean", "last")
"""How answer tokens are pooled into one vector."""
ANCHOR_POOLINGS = ("last", "mean")
"""How prompt tokens are pooled into the anchor."""
LAYER_REDUCTIONS = ("mean", "normalized_mean", "concat")
"""How the selected layers' pooled vectors are combined."""

DEFAULT_TEMPERATURE = 0.1
"""InfoNCE temperature (SimCLR's best range for cosine similarity is 0.1-0.5; SimCSE uses 0.05)."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (the model itself when not wrapped)."""
    get_base = getattr(model, "get_base_model", None)
    if type(model).__module__.startswith("peft.") and callable(get_base):
        return get_base()
    return model


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise EavssError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    negative_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE loss of each anchor's positive against its negatives, with cosine similarity.

    ``loss_b = -log softmax_j(l_b)[0]`` where ``l_b = [s(a_b, p_b), s(a_b, n_b1), ..., s(a_b, n_bK)] / tau``,
    ``s`` the cosine similarity and masked-out negatives left out of the softmax (van den Oord et
    al. 2018, arXiv 1807.03748, eq. 4). A row with no valid negative has loss exactly 0 (its softmax
    has one entry). Gradients flow into all three inputs. Computed in the inputs' dtype (float32 or
    float64 recommended; vectors of norm < 1e-12 are treated as having norm 1e-12).

    Args:
        anchor: (B, D). positive: (B, D). negatives: (B, K, D), K >= 0.
        temperature: tau > 0 (dimensionless; cosines are in [-1, 1]). Default 0.1.
        negative_mask: (B, K) bool, True = a real negative (ragged negatives are padded with any
            vector and masked out); None = all real.
        reduction: "mean" (over B, scalar), "sum" (scalar) or "none" ((B,)).

    Returns:
        The loss: a scalar, or (B,) for ``reduction="none"``.

    Raises:
        EavssError: shapes that do not match, temperature <= 0, unknown reduction.
    """
    if not float(temperature) > 0:
        raise EavssError(f"temperature={temperature!r} must be > 0; pass e.g. 0.1")
    _choice("reduction", reduction, ("mean", "sum", "none"))
    if anchor.ndim != 2 or positive.shape != anchor.shape:
        raise EavssError(f"anchor {tuple(anchor.shape)} and positive {tuple(positive.shape)} must both be (B, D)")
    b, d = anchor.shape
    if negatives.ndim != 3 or negatives.shape[0] != b or negatives.shape[2] != d:
        raise EavssError(f"negatives {tuple(negatives.shape)} must be (B, K, D) = ({b}, K, {d})")
    k = negatives.shape[1]
    if negative_mask is not None and tuple(negative_mask.shape) != (b, k):
        raise EavssError(f"negative_mask {tuple(negative_mask.shape)} must be (B, K) = ({b}, {k})")
    a = F.normalize(anchor, dim=-1, eps=1e-12)
    p = F.normalize(positive, dim=-1, eps=1e-12)
    n = F.normalize(negatives, dim=-1, eps=1e-12)
    pos = (a * p).sum(-1, keepdim=True)  # (B, 1)
    neg = torch.einsum("bd,bkd->bk", a, n)  # (B, K)
    if negative_mask is not None:
        neg = neg.masked_fill(~negative_mask.to(torch.bool), float("-inf"))
    logits = torch.cat([pos, neg], dim=1) / float(temperature)
    loss = -torch.log_softmax(logits, dim=1)[:, 0]
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def lm_loss_on_answers(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood over answer tokens only (nats per answer token).

    Token ``t`` (``answer_mask[b, t]`` true) is predicted by ``logits[b, t - 1]``; the loss is
    ``sum -log softmax(logits[b, t-1])[input_ids[b, t]] / (number of such tokens)`` over the whole
    batch (a token-weighted mean, as Hugging Face's causal-LM loss). Position 0 is never a target.
    For LM healing on plain text pass ``answer_mask = attention_mask`` (every real token after the
    first). Computed in float32 whatever the logits' dtype.

    Args:
        logits: (B, T, V). input_ids: (B, T) token ids. answer_mask: (B, T) bool/0-1.

    Returns:
        Scalar tensor (nats), differentiable w.r.t. ``logits``.

    Raises:
        EavssError: shapes that do not match, or no target token in the batch.
    """
    if logits.ndim != 3 or tuple(input_ids.shape) != tuple(logits.shape[:2]) or input_ids.shape != answer_mask.shape:
        raise EavssError(f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and answer_mask "
                         f"{tuple(answer_mask.shape)} must be (B, T, V), (B, T), (B, T)")
    target_mask = answer_mask[:, 1:].to(torch.bool)
    count = int(target_mask.sum())
    if count == 0:
        raise EavssError("the batch has no answer token to predict; check answer_mask (answers must follow a prompt)")
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1),
                          reduction="none")
    return (nll * target_mask.reshape(-1).float()).sum() / count


@dataclass
class Representations:
    """Pooled representations of one forward pass.

    Attributes:
        answer: (N, D') answer representation per sequence (``D' = D`` or ``len(layers) * D``), float32.
        prompt: (N, D') prompt (anchor) representation per sequence, float32.
        logits: (N, T, V) the model's logits (model dtype), for :func:`lm_loss_on_answers`.
    """

    answer: torch.Tensor
    prompt: torch.Tensor
    logits: torch.Tensor


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids that count real tokens only: ``cumsum(mask) - 1``, 0 on padding.

    With these, a left-padded row computes what it would compute alone (as generation does).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _pool(h: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(N, T, D) x (N, T) -> (N, D): mean over masked positions, or the last masked position."""
    m = mask.to(h.dtype)
    if how == "mean":
        return (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True)
    t = mask.shape[1]
    last = (t - 1) - torch.flip(mask.to(torch.int8), dims=[1]).argmax(dim=1)  # (N,)
    return h[torch.arange(h.shape[0], device=h.device), last]


def forward_representations(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    layers: Sequence[int],
    *,
    site: str = "resid_post",
    answer_pooling: str = "mean",
    anchor_pooling: str = "last",
    layer_reduction: str = "mean",
) -> Representations:
    """One forward pass with hooks on the selected layers; pooled answer and prompt vectors and logits.

    The hooks keep the autograd graph (nothing is detached), so losses on the returned vectors
    train the model. Padding-aware: only positions in ``answer_mask`` / ``prompt_mask`` are pooled,
    and position ids count real tokens (``cumsum(attention_mask) - 1``), so left and right padding
    give the same result. Pooling is done in float32.

    Args:
        model: a causal LM, plain or peft-wrapped.
        batch: ``input_ids`` (N, T) long; ``attention_mask`` (N, T) 0/1; ``answer_mask`` (N, T)
            bool, True on answer tokens; optional ``prompt_mask`` (N, T) bool, True on prompt
            tokens (default: ``attention_mask & ~answer_mask``). Other keys are ignored.
        layers: 0-based decoder-layer indices (non-empty, in range, each once).
        site, answer_pooling, anchor_pooling, layer_reduction: see the module docstring
            (:data:`SITES`, :data:`ANSWER_POOLINGS`, :data:`ANCHOR_POOLINGS`, :data:`LAYER_REDUCTIONS`).

    Returns:
        :class:`Representations` (answer (N, D'), prompt (N, D'), logits (N, T, V)).

    Raises:
        EavssError: unknown option, bad layer list, missing batch key, or a row with no answer
            (or no prompt) token.
    """
    from eavss.training.params import validate_layers

    _choice("site", site, SITES)
    _choice("answer_pooling", answer_pooling, ANSWER_POOLINGS)
    _choice("anchor_pooling", anchor_pooling, ANCHOR_POOLINGS)
    _choice("layer_reduction", layer_reduction, LAYER_REDUCTIONS)
    for key in ("input_ids", "attention_mask", "answer_mask"):
        if key not in batch:
            raise EavssError(f"batch has no {key!r}; build batches with eavss.training.pairs.collate_contrastive")
    _, stack = find_decoder_layers(unwrap_model(model))
    chosen = validate_layers(layers, len(stack))
    attn = batch["attention_mask"]
    answer_mask = batch["answer_mask"].to(torch.bool) & attn.to(torch.bool)
    prompt_mask = batch.get("prompt_mask")
    prompt_mask = (attn.to(torch.bool) & ~answer_mask) if prompt_mask is None else prompt_mask.to(torch.bool)
    for name, m in (("answer", answer_mask), ("prompt", prompt_mask)):
        empty = (m.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise EavssError(f"rows {empty[:5]} of the batch have no {name} token; every sequence needs a prompt and an answer")

    captured: dict[int, torch.Tensor] = {}

    def make_hook(i: int):
        def hook(module, args, kwargs, output):
            out = output_tensor(output)
            if site == "resid_delta":
                inp = input_tensor(args, kwargs)
                if inp is None:  # pragma: no cover - every supported layer gets hidden_states
                    raise EavssError(f"site resid_delta: layer {i} got no hidden-state input; use site='resid_post'")
                out = out - inp
            captured[i] = out
        return hook

    handles = [stack[i].register_forward_hook(make_hook(i), with_kwargs=True) for i in chosen]
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=attn,
                    position_ids=position_ids_from_mask(attn), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    answers, prompts = [], []
    for i in chosen:
        h = captured[i].float()
        a = _pool(h, answer_mask, answer_pooling)
        p = _pool(h, prompt_mask, anchor_pooling)
        if layer_reduction == "normalized_mean":
            a, p = F.normalize(a, dim=-1, eps=1e-12), F.normalize(p, dim=-1, eps=1e-12)
        answers.append(a)
        prompts.append(p)
    if layer_reduction == "concat":
        answer, prompt = torch.cat(answers, dim=-1), torch.cat(prompts, dim=-1)
    else:
        answer, prompt = torch.stack(answers).mean(0), torch.stack(prompts).mean(0)
    return Representations(answer=answer, prompt=prompt, logits=out.logits)


def answer_representations(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    layers: Sequence[int],
    *,
    site: str = "resid_post",
    answer_pooling: str = "mean",
    layer_reduction: str = "mean",
) -> torch.Tensor:
    """(N, D) pooled answer representations (mean over answer tokens of the selected layers' output,
    averaged over the layers), differentiable; see :func:`forward_representations` for the batch
    format, options and errors."""
    return forward_representations(model, batch, layers, site=site, answer_pooling=answer_pooling,
                                   layer_reduction=layer_reduction).answer


def contrastive_loss_fn(
    layers: Sequence[int],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    lm_weight: float = 1.0,
    site: str = "resid_post",
    answer_pooling: str = "mean",
    anchor_pooling: str = "last",
    layer_reduction: str = "mean",
) -> Callable[[nn.Module, Mapping[str, torch.Tensor]], dict[str, Any]]:
    """A ``loss_fn(model, batch)`` for :func:`eavss.training.loop.train`: InfoNCE (+ LM on truthful answers).

    ``loss = info_nce(z_q, z+, z-) + lm_weight * lm_loss_on_answers(truthful sequences)``. The LM
    term (default weight 1) keeps next-token prediction on the truthful answers: InfoNCE alone only
    constrains directions of hidden states and nothing stops it from changing what the LM head reads
    from them; ``lm_weight=0`` gives the pure contrastive objective (an ablation).

    Args:
        layers: decoder layers whose representations are contrasted (usually the trained ones).
        temperature: InfoNCE tau (> 0). lm_weight: >= 0. Other options: see the module docstring.

    Returns:
        ``loss_fn(model, batch) -> {"loss": scalar tensor, "info_nce": float, "lm": float,
        "tokens": int}`` for batches of :func:`eavss.training.pairs.collate_contrastive`
        (``positive_index`` (B,), ``negative_index`` (B, K), ``negative_mask`` (B, K)).

    Raises:
        EavssError: temperature <= 0 or lm_weight < 0 (at once); bad options or batches (when called).
    """
    if not float(temperature) > 0:
        raise EavssError(f"temperature={temperature!r} must be > 0; pass e.g. 0.1")
    if not float(lm_weight) >= 0:
        raise EavssError(f"lm_weight={lm_weight!r} must be >= 0; pass 0 for the pure contrastive loss")
    layers = list(layers)

    def loss_fn(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        for key in ("positive_index", "negative_index", "negative_mask"):
            if key not in batch:
                raise EavssError(f"batch has no {key!r}; build batches with eavss.training.pairs.collate_contrastive")
        reps = forward_representations(model, batch, layers, site=site, answer_pooling=answer_pooling,
                                       anchor_pooling=anchor_pooling, layer_reduction=layer_reduction)
        pos = batch["positive_index"]
        nce = info_nce(reps.prompt[pos], reps.answer[pos], reps.answer[batch["negative_index"]],
                       temperature, negative_mask=batch["negative_mask"])
        loss = nce
        lm_val = 0.0
        if lm_weight > 0:
            lm = lm_loss_on_answers(reps.logits[pos], batch["input_ids"][pos], batch["answer_mask"][pos])
            loss = loss + float(lm_weight) * lm
            lm_val = float(lm.detach())
        return {"loss": loss, "info_nce": float(nce.detach()), "lm": lm_val,
                "tokens": int(batch["attention_mask"].sum())}

    return loss_fn


def lm_loss_fn() -> Callable[[nn.Module, Mapping[str, torch.Tensor]], dict[str, Any]]:
    """A ``loss_fn(model, batch)`` for LM healing: mean NLL of the tokens in ``batch["answer_mask"]``
    (or, when absent, of every real token: ``attention_mask``), position ids from the mask.

    Returns:
        ``loss_fn(model, batch) -> {"loss": scalar tensor, "tokens": int}``.

    Raises:
        EavssError: (when called) a batch without ``input_ids``/``attention_mask`` or without targets.
    """

    def loss_fn(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        for key in ("input_ids", "attention_mask"):
            if key not in batch:
                raise EavssError(f"batch has no {key!r}; pass dicts with input_ids and attention_mask (B, T)")
        attn = batch["attention_mask"]
        out = model(input_ids=batch["input_ids"], attention_mask=attn, position_ids=position_ids_from_mask(attn),
                    use_cache=False)
        mask = batch.get("answer_mask", attn)
        mask = mask.to(torch.bool) & attn.to(torch.bool)
        return {"loss": lm_loss_on_answers(out.logits, batch["input_ids"], mask), "tokens": int(attn.sum())}

    return loss_fn
