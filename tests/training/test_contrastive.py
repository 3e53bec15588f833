"""eavss.training.contrastive: InfoNCE by hand, LM loss on answers, pooled representations."""

from __future__ import annotations

import math

import pytest
import torch

from eavss.errors import EavssError
from eavss.testing import tiny_loaded
from eavss.training.contrastive import (
    answer_representations,
    contrastive_loss_fn,
    forward_representations,
    info_nce,
    lm_loss_on_answers,
)

D64 = torch.float64


def _hand_rows():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=D64)
    positive = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=D64)
    negatives = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]], [[3.0, 4.0], [7.0, -7.0]]], dtype=D64)
    mask = torch.tensor([[True, True], [True, False]])
    # tau = 0.5. Row 0: cosines 1/sqrt2, 0, -1. Row 1: cosines 1, 0.8, (masked).
    row0 = math.log(math.exp(math.sqrt(2)) + math.exp(0.0) + math.exp(-2.0)) - math.sqrt(2)
    row1 = math.log(math.exp(2.0) + math.exp(1.6)) - 2.0
    return anchor, positive, negatives, mask, row0, row1


def test_info_nce_hand_computed_float64():
    anchor, positive, negatives, mask, row0, row1 = _hand_rows()
    per_row = info_nce(anchor, positive, negatives, 0.5, negative_mask=mask, reduction="none")
    assert per_row.dtype == D64
    torch.testing.assert_close(per_row, torch.tensor([row0, row1], dtype=D64), rtol=0, atol=1e-12)
    mean = info_nce(anchor, positive, negatives, 0.5, negative_mask=mask)
    assert abs(float(mean) - (row0 + row1) / 2) < 1e-12
    assert abs(float(info_nce(anchor, positive, negatives, 0.5, negative_mask=mask, reduction="sum")) - (row0 + row1)) < 1e-12


def test_info_nce_masked_value_is_ignored_and_no_negative_gives_zero():
    anchor, positive, negatives, mask, _, _ = _hand_rows()
    other = negatives.clone()
    other[1, 1] = torch.tensor([-100.0, 3.0], dtype=D64)
    a = info_nce(anchor, positive, negatives, 0.5, negative_mask=mask, reduction="none")
    b = info_nce(anchor, positive, other, 0.5, negative_mask=mask, reduction="none")
    assert torch.equal(a, b)
    none = torch.zeros(2, 2, dtype=torch.bool)
    assert torch.equal(info_nce(anchor, positive, negatives, 0.5, negative_mask=none, reduction="none"),
                       torch.zeros(2, dtype=D64))
    empty = info_nce(anchor, positive, negatives[:, :0], 0.5, reduction="none")
    assert torch.equal(empty, torch.zeros(2, dtype=D64))


def test_info_nce_gradients_and_scale_invariance():
    anchor, positive, negatives, mask, _, _ = _hand_rows()
    a = anchor.clone().requires_grad_(True)
    loss = info_nce(a, positive, negatives, 0.5, negative_mask=mask)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    assert torch.autograd.gradcheck(lambda x: info_nce(x, positive, negatives, 0.5, negative_mask=mask),
                                    (anchor.clone().requires_grad_(True),))
    # cosine similarity: scaling any vector changes nothing
    scaled = info_nce(3 * anchor, 0.2 * positive, 5 * negatives, 0.5, negative_mask=mask)
    assert abs(float(scaled.detach()) - float(loss.detach())) < 1e-12


def test_info_nce_errors():
    anchor, positive, negatives, mask, _, _ = _hand_rows()
    with pytest.raises(EavssError, match="temperature"):
        info_nce(anchor, positive, negatives, 0.0)
    with pytest.raises(EavssError, match=r"\(B, K, D\)"):
        info_nce(anchor, positive, negatives[0])
    with pytest.raises(EavssError, match="negative_mask"):
        info_nce(anchor, positive, negatives, 0.5, negative_mask=mask[:, :1])
    with pytest.raises(EavssError, match=r"\(B, D\)"):
        info_nce(anchor, positive[:1], negatives)


def test_lm_loss_on_answers_hand_computed():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, dtype=D64)
    ids = torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1]])
    answer = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool)
    logp = torch.log_softmax(logits, -1)
    expected = -(logp[0, 1, 2] + logp[0, 2, 3] + logp[1, 0, 3]) / 3
    assert abs(float(lm_loss_on_answers(logits, ids, answer)) - float(expected)) < 1e-6  # float32 internally
    with pytest.raises(EavssError, match="no answer token"):
        lm_loss_on_answers(logits, ids, torch.zeros_like(answer))
    with pytest.raises(EavssError, match="must be"):
        lm_loss_on_answers(logits, ids[:, :3], answer)


def _batch():
    # Two sequences of a prompt + answer, the second right-padded (pad id 3).
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 3, 3, 3]])
    attn = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    answer = torch.tensor([[0] * 5 + [1] * 3, [0] * 3 + [1] * 2 + [0] * 3], dtype=torch.bool)
    return {"input_ids": ids, "attention_mask": attn, "answer_mask": answer}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_answer_representations_by_hand_padding_and_graph(arch):
    lm = tiny_loaded(arch, num_layers=4)
    model, batch = lm.model, _batch()
    layers = [0, 2]  # not the last layer: hidden_states[-1] is after the final norm
    reps = answer_representations(model, batch, layers)
    assert reps.shape == (2, 64) and reps.requires_grad and reps.dtype == torch.float32
    # by hand: each row alone (no padding); hidden_states[i + 1] is decoder layer i's output (i < last)
    for row, length in ((0, 8), (1, 5)):
        ids = batch["input_ids"][row:row + 1, :length]
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        ans = batch["answer_mask"][row, :length]
        expected = torch.stack([hs[i + 1][0, ans].mean(0) for i in layers]).mean(0)
        torch.testing.assert_close(reps[row].detach(), expected, rtol=1e-4, atol=1e-5)
    # left padding gives the same vectors
    left = {k: v.clone() for k, v in batch.items()}
    for k in left:
        left[k][1] = torch.roll(batch[k][1], 3)
    torch.testing.assert_close(answer_representations(model, left, layers), reps, rtol=1e-4, atol=1e-5)
    # the autograd graph is kept: gradients reach the hooked layers
    reps.sum().backward()
    grad = model.model.layers[2].mlp.down_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_representation_options():
    lm = tiny_loaded("llama", num_layers=4)
    batch = _batch()
    with torch.no_grad():
        r = forward_representations(lm.model, batch, [0, 2], anchor_pooling="last", answer_pooling="last",
                                    layer_reduction="concat", site="resid_delta")
        hs = lm.model(input_ids=batch["input_ids"][1:, :5], output_hidden_states=True).hidden_states
    assert r.answer.shape == (2, 128) and r.logits.shape == (2, 8, 512)
    # row 1: prompt = tokens 0..2 (last = 2), answer = tokens 3..4 (last = 4); resid_delta = out - in
    expected_prompt = torch.cat([hs[1][0, 2] - hs[0][0, 2], hs[3][0, 2] - hs[2][0, 2]])
    expected_answer = torch.cat([hs[1][0, 4] - hs[0][0, 4], hs[3][0, 4] - hs[2][0, 4]])
    torch.testing.assert_close(r.prompt[1], expected_prompt, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r.answer[1], expected_answer, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        n = forward_representations(lm.model, batch, [0, 2], layer_reduction="normalized_mean")
    assert n.answer.norm(dim=-1).max() <= 1 + 1e-5
    with pytest.raises(EavssError, match="unknown site"):
        forward_representations(lm.model, batch, [0], site="mlp_out")
    bad = dict(batch, answer_mask=torch.zeros_like(batch["answer_mask"]))
    with pytest.raises(EavssError, match="no answer token"):
        forward_representations(lm.model, bad, [0])
    with pytest.raises(EavssError, match="out of range"):
        forward_representations(lm.model, batch, [4])


def test_contrastive_loss_fn_matches_parts():
    lm = tiny_loaded("llama", num_layers=3)
    batch = _batch()
    # one example: row 0 positive, row 1 its only negative (its prompt differs here, which is fine for the check)
    batch.update(positive_index=torch.tensor([0]), negative_index=torch.tensor([[1]]),
                 negative_mask=torch.tensor([[True]]))
    out = contrastive_loss_fn([1], temperature=0.2, lm_weight=0.5)(lm.model, batch)
    reps = forward_representations(lm.model, batch, [1])
    nce = info_nce(reps.prompt[:1], reps.answer[:1], reps.answer[1:].unsqueeze(0), 0.2)
    lm_part = lm_loss_on_answers(reps.logits[:1], batch["input_ids"][:1], batch["answer_mask"][:1])
    assert abs(float(out["loss"].detach()) - float((nce + 0.5 * lm_part).detach())) < 1e-5
    assert out["tokens"] == 13
    with pytest.raises(EavssError, match="lm_weight"):
        contrastive_loss_fn([1], lm_weight=-1)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2", "mistral", "gpt_neox", "opt", "phi3"])
def test_left_and_right_padding_agree_on_every_tiny_arch(arch):
    lm = tiny_loaded(arch, num_layers=3)
    batch = _batch()
    left = {k: v.clone() for k, v in batch.items()}
    for k in left:
        left[k][1] = torch.roll(batch[k][1], 3)
    with torch.no_grad():
        right_r = forward_representations(lm.model, batch, [0, 1])
        left_r = forward_representations(lm.model, left, [0, 1])
    torch.testing.assert_close(left_r.answer, right_r.answer, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(left_r.prompt, right_r.prompt, rtol=1e-4, atol=1e-5)
