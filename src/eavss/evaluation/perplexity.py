"""Token-level perplexity of a concatenated test set (the number papers quote): WikiText-2, PTB.

Convention (GPTQ, SparseGPT, Wanda, ShortGPT, SliceGPT ... all tokenise the same string): the
Hugging Face ``wikitext-2-raw-v1`` test rows joined with ``"\\n\\n"``
(:func:`load_wikitext2_test_text`), or the ``ptb_text_only`` test sentences joined with ``" "``
(GPTQ's ``ptb-new``; :func:`load_ptb_test_text`), tokenised once with the model's tokenizer and
its default special tokens, then cut into windows of ``context_length`` tokens.

* ``stride == context_length`` (default): non-overlapping windows ``[0, L), [L, 2L), ...``. Every
  token except the first of each window is scored with the tokens before it in its window, as
  in GPTQ's ``eval_ppl``. GPTQ drops the final partial window; so does ``drop_last=True``
  (default False keeps it, as the Hugging Face perplexity guide does).
* ``stride < context_length``: sliding windows starting at ``0, S, 2S, ...`` (Hugging Face
  "Perplexity of fixed-length models" guide); each window scores only the tokens not scored by an
  earlier window (the last ``S`` targets, all of them in the first window), so every scored
  token sees at least ``L - S`` tokens of context.

The window plan always covers the whole text. ``num_windows`` scores a seeded random sample of
its windows (:func:`eavss.evaluation.intervals.sample_item_ids`; the same seed and tokenizer give
the same windows for an original and a pruned model) instead of the whole plan.

PPL = exp(sum NLL / N) over the scored windows, with the per-token NLL taken from a float32
log-softmax of the logits and summed in float64; each window's NLL sum and token count are
returned too (per-window values for bootstrap intervals).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from eavss.errors import EavssError


def load_wikitext2_test_text(data_dir: str | os.PathLike | None = None) -> str:
    """WikiText-2 raw test as papers tokenise it: ``"\\n\\n".join(rows)`` of HF wikitext-2-raw-v1 test.

    The 4,358 rows are rebuilt from the local files (see
    :func:`eavss.evaluation.tasks.utils.wikitext2_raw_lines`): a text line becomes
    ``line + "\\n"``, a blank line ``""``. The result has 1,294,336 characters when the blank-line
    layout is restored.

    Raises:
        EavssError: the data root or ``wikitext2/github_tyloquant_raw/wiki.test.raw`` is missing.
    """
    from eavss.evaluation.tasks.utils import wikitext2_hf_rows

    return "\n\n".join(wikitext2_hf_rows(data_dir))


def load_ptb_test_text(data_dir: str | os.PathLike | None = None) -> str:
    """Penn Treebank test as GPTQ's ``ptb-new`` tokenises it: ``" ".join(sentences)``.

    Sentences are the 3,761 stripped lines of Mikolov's ``ptb.test.txt`` (the rows of Hugging
    Face ``ptb_text_only`` test: its builder strips every line), lower-cased, with ``<unk>`` and
    ``N`` tokens as in the file (see :func:`eavss.evaluation.tasks.utils.ptb_test_sentences`).

    Raises:
        EavssError: the data root or ``ptb/github_wojzaremba-lstm/ptb.test.txt`` is missing.
    """
    from eavss.evaluation.tasks.utils import ptb_test_sentences

    return " ".join(ptb_test_sentences(data_dir))


def _window_plan(n_tokens: int, context_length: int, stride: int, drop_last: bool) -> list[tuple[int, int, int]]:
    """Windows as ``(begin, end, first_scored)``: positions ``first_scored..end-1`` are targets."""
    plan: list[tuple[int, int, int]] = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context_length, n_tokens)
        if drop_last and end - begin < context_length:
            break
        first = max(prev_end, begin + 1)  # the window's first token has no context
        if end > first:
            plan.append((begin, end, first))
        prev_end = end
        if end == n_tokens:
            break
    return plan


def token_perplexity(
    model,
    tokenizer,
    text: str,
    context_length: int = 1024,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 4,
    device=None,
    drop_last: bool = False,
    num_windows: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Token-level perplexity of ``text`` under a causal LM with fixed-length windows.

    Args:
        model: a Hugging Face causal LM (``model(input_ids).logits`` of shape [B, T, V]).
        tokenizer: its tokenizer; ``tokenizer(text)`` with default special tokens.
        text: the text, e.g. :func:`load_wikitext2_test_text` or :func:`load_ptb_test_text`.
        context_length: window length L in tokens (must not exceed the model's
            ``max_position_embeddings`` when the config has one).
        stride: step S between window starts, 1 <= S <= L; None means S = L (non-overlapping).
        max_tokens: keep only the first ``max_tokens`` tokens of the tokenised text (None: all);
            the window plan covers what is kept.
        batch_size: windows per forward pass (windows of equal length are batched; no padding).
        device: where to run; None uses the device of the model's first parameter.
        drop_last: skip a final window shorter than L (GPTQ does; default keeps it).
        num_windows: score a seeded random sample of this many windows of the plan
            (:func:`eavss.evaluation.intervals.sample_item_ids` with ``seed``); None scores all.
        seed: seed of that sample.

    Returns:
        ``{"token_perplexity": exp(nll_per_token), "nll_per_token": mean NLL in nats over the
        scored tokens, "num_tokens_scored": N, "num_tokens": tokens after truncation,
        "num_windows": windows scored, "num_windows_total": windows in the plan, "window_ids":
        [ids into the plan, ascending], "window_nll": [float64 NLL sum per scored window, nats],
        "window_tokens": [scored tokens per window], "context_length", "stride", "max_tokens",
        "drop_last", "seconds"}``.

    Raises:
        EavssError: bad ``context_length``/``stride``/``max_tokens``/``batch_size``/
            ``num_windows``, or a text too short to score any token.
    """
    from eavss.evaluation.intervals import sample_item_ids

    if context_length < 2:
        raise EavssError(f"context_length={context_length} is too small; pass at least 2 (papers use 1024-4096)")
    stride = context_length if stride is None else int(stride)
    if not 1 <= stride <= context_length:
        raise EavssError(f"stride={stride} must be between 1 and context_length={context_length}; pass a smaller stride")
    if max_tokens is not None and max_tokens < 2:
        raise EavssError(f"max_tokens={max_tokens} is too small; pass at least 2 or None for the whole text")
    if batch_size < 1:
        raise EavssError(f"batch_size={batch_size} must be at least 1")
    if num_windows is not None and num_windows < 1:
        raise EavssError(f"num_windows={num_windows} must be at least 1 or None (every window)")
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(max_pos, int) and context_length > max_pos:
        raise EavssError(
            f"context_length={context_length} exceeds the model's max_position_embeddings={max_pos}; pass a smaller context length"
        )

    t0 = time.perf_counter()
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]  # long on purpose: windows follow
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_tokens = int(ids.numel())
    full_plan = _window_plan(n_tokens, context_length, stride, drop_last)
    if not full_plan:
        raise EavssError(
            f"text has {n_tokens} tokens, too few to score with context_length={context_length}"
            f"{' and drop_last=True' if drop_last else ''}; pass more text, a larger max_tokens or a smaller context length"
        )
    window_ids = sample_item_ids(len(full_plan), num_windows, seed)
    plan = [full_plan[i] for i in window_ids]
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)

    was_training = model.training
    model.eval()
    window_nll: list[float] = []
    window_tokens: list[int] = []
    try:
        with torch.inference_mode():
            i = 0
            while i < len(plan):
                length = plan[i][1] - plan[i][0]
                j = i
                while j < len(plan) and j - i < batch_size and plan[j][1] - plan[j][0] == length:
                    j += 1
                group = plan[i:j]
                batch = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
                logits = model(input_ids=batch).logits
                for row, (b, e, first) in enumerate(group):
                    # logits at position p predict token p+1; targets are positions first..e-1
                    pred = logits[row, first - b - 1 : e - b - 1].float()
                    target = batch[row, first - b : e - b]
                    nll = torch.nn.functional.cross_entropy(pred, target, reduction="none")
                    window_nll.append(float(nll.to(torch.float64).sum().cpu()))
                    window_tokens.append(int(target.numel()))
                del logits
                i = j
    finally:
        if was_training:
            model.train()

    total_nll = math.fsum(window_nll)
    n_scored = sum(window_tokens)
    nll_per_token = total_nll / n_scored
    return {
        "token_perplexity": math.exp(nll_per_token),
        "nll_per_token": nll_per_token,
        "num_tokens_scored": n_scored,
        "num_tokens": n_tokens,
        "num_windows": len(plan),
        "num_windows_total": len(full_plan),
        "window_ids": window_ids,
        "window_nll": window_nll,
        "window_tokens": window_tokens,
        "context_length": context_length,
        "stride": stride,
        "max_tokens": max_tokens,
        "drop_last": drop_last,
        "seconds": time.perf_counter() - t0,
    }
