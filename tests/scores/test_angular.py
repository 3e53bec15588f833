"""Angular distance of Gromov et al. 2024 (arXiv 2403.17887): hand-built cases and a float64 reference."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from eavss.data.calibration import make_batches
from eavss.errors import EavssError
from eavss.scores.angular import angular_distances, angular_importance, best_block
from eavss.testing import tiny_model, tiny_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France? Answer: The capital of France is Paris.",
    "Light travels faster than sound.",
    "A spider has eight legs.",
    "Numbers: 0 1 2 3 4 5 6",
]

FINAL_NORM = {"llama": "model.norm", "gemma3": "model.norm", "gpt2": "transformer.ln_f",
              "gpt_neox": "gpt_neox.final_layer_norm", "opt": "model.decoder.final_layer_norm", "phi3": "model.norm"}


def _seqs():
    tok = tiny_tokenizer()
    return [tok(t)["input_ids"] for t in TEXTS], tok.pad_token_id


# ---------------------------------------------------------------------------------------------
# hand-built: a toy "model" whose layers rotate 2-D vectors by known angles (and rescale them)


class _Rotate(nn.Module):
    def __init__(self, theta, scale):
        super().__init__()
        c, s = math.cos(theta), math.sin(theta)
        self.register_buffer("R", scale * torch.tensor([[c, -s], [s, c]], dtype=torch.float64))

    def forward(self, hidden_states, **kwargs):
        return hidden_states @ self.R.T


class _Toy(nn.Module):
    """Embedding = unit vectors at varied angles (pad id 0 embeds to NaN); layer l rotates by theta_l."""

    def __init__(self, thetas, scales):
        super().__init__()
        phi = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)[:8]
        emb = torch.stack([torch.cos(phi), torch.sin(phi)], 1) * torch.arange(1, 9, dtype=torch.float64)[:, None]
        emb[0] = float("nan")
        self.emb = nn.Embedding.from_pretrained(emb)
        self.layers = nn.ModuleList(_Rotate(t, s) for t, s in zip(thetas, scales))
        self.final_norm_scale = 0.0  # a "final norm" that would destroy x_L if it were captured

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        h = self.emb(input_ids)
        for layer in self.layers:
            h = layer(hidden_states=h)
        return h * self.final_norm_scale


def test_hand_built_rotations():
    thetas = [0.3, math.pi / 4, 0.1, 1.0]
    model = _Toy(thetas, scales=[1.0, 5.0, 0.2, 3.0])
    ids = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 7, 1, 2, 3], [4, 0, 0, 0, 0, 0]])
    batches = [{"input_ids": ids, "attention_mask": (ids != 0).long()}]
    for tokens in ("last", "all"):
        d1 = angular_distances(model, batches, 1, tokens=tokens)
        np.testing.assert_allclose(d1, np.array(thetas) / math.pi, atol=1e-12)
        assert d1[1] == pytest.approx(0.25)  # (1, 0) -> (1, 1)-direction: 45 degrees, scale ignored
        np.testing.assert_allclose(angular_importance(model, batches, tokens=tokens), d1)
        d2 = angular_distances(model, batches, 2, tokens=tokens)
        np.testing.assert_allclose(d2, [(thetas[i] + thetas[i + 1]) / math.pi for i in range(3)], atol=1e-12)
        d4 = angular_distances(model, batches, 4, tokens=tokens)
        np.testing.assert_allclose(d4, [sum(thetas) / math.pi], atol=1e-12)
    assert best_block(angular_distances(model, batches, 2), 2) == [1, 2]  # pi/4 + 0.1 is smallest
    assert best_block(angular_distances(model, batches, 1), 1) == [2]


def test_hand_built_pair_weights():
    """'last' averages over sequences, 'all' over tokens: a layer that rotates only some tokens."""

    class Half(nn.Module):
        def forward(self, hidden_states, **kwargs):  # rotate tokens with y >= 0 by 90 degrees, keep others
            rot = torch.stack([-hidden_states[..., 1], hidden_states[..., 0]], -1)
            return torch.where(hidden_states[..., 1:2] >= 0, rot, hidden_states)

    model = _Toy([0.0], [1.0])
    model.layers = nn.ModuleList([Half()])
    # embeddings: id 1 at angle pi/4 (y > 0: rotated, d = 0.5), id 6 at angle 3pi/2 (y < 0: kept, d = 0)
    ids = torch.tensor([[6, 6, 1], [1, 6, 6]])
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    assert angular_distances(model, batches, 1, tokens="last")[0] == pytest.approx(0.25)  # last tokens: 1 (0.5), 6 (0)
    assert angular_distances(model, batches, 1, tokens="all")[0] == pytest.approx(2 * 0.5 / 6)


# ---------------------------------------------------------------------------------------------
# tiny models against a float64 reference: output_hidden_states with the final norm disabled,
# one unpadded sequence at a time, a plain python loop over tokens


def _reference(model, arch, seqs, n, tokens):
    m = copy.deepcopy(model).double().eval()
    parent, _, name = FINAL_NORM[arch].rpartition(".")
    setattr(m.get_submodule(parent), name, nn.Identity())  # hidden_states[-1] becomes the pre-norm x_L
    per_l_sum = None
    count = 0
    with torch.no_grad():
        for s in seqs:
            hs = m(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states  # L+1 of (1, T, D)
            L = len(hs) - 1
            per_l_sum = per_l_sum or [0.0] * (L - n + 1)
            positions = [len(s) - 1] if tokens == "last" else range(len(s))
            for t in positions:
                for l in range(L - n + 1):
                    a = hs[l][0, t].numpy()
                    b = hs[l + n][0, t].numpy()
                    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
                    per_l_sum[l] += math.acos(max(-1.0, min(1.0, cos))) / math.pi
                count += 1
    return np.array(per_l_sum) / count


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "opt", "gpt_neox", "phi3"])
def test_matches_float64_reference(arch):
    model = tiny_model(arch, seed=5, num_layers=4)
    seqs, pad = _seqs()
    batches = make_batches(seqs, 2, pad)  # right padding, mixed lengths
    m64 = copy.deepcopy(model).double()
    for n, tokens in [(1, "last"), (2, "all"), (1, "all"), (3, "last")]:
        want = _reference(model, arch, seqs, n, tokens)
        got64 = angular_distances(m64, batches, n, tokens=tokens)
        assert got64.shape == (4 - n + 1,) and got64.dtype == np.float64
        np.testing.assert_allclose(got64, want, rtol=0, atol=1e-10)
        got32 = angular_distances(model, batches, n, tokens=tokens)
        np.testing.assert_allclose(got32, want, rtol=0, atol=2e-4)


def test_padding_side_and_content_do_not_matter():
    model = tiny_model("qwen2", seed=1, num_layers=3).double()
    seqs, pad = _seqs()
    single = [make_batches([s], 1, pad)[0] for s in seqs]
    padded = make_batches(seqs, 5, pad)
    junk = {k: v.clone() for k, v in padded[0].items()}
    junk["input_ids"][junk["attention_mask"] == 0] = 9
    for tokens in ("last", "all"):
        a = angular_distances(model, single, 2, tokens=tokens)
        np.testing.assert_allclose(angular_distances(model, padded, 2, tokens=tokens), a, atol=1e-12)
        np.testing.assert_allclose(angular_distances(model, [junk], 2, tokens=tokens), a, atol=1e-12)


def test_errors_and_state():
    model = tiny_model("llama", num_layers=3)
    model.train()
    seqs, pad = _seqs()
    batches = make_batches(seqs, 2, pad)
    angular_distances(model, batches, 1)
    assert model.training
    assert not model._forward_hooks and all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    with pytest.raises(EavssError, match="block size"):
        angular_distances(model, batches, 0)
    with pytest.raises(EavssError, match="block size"):
        angular_distances(model, batches, 4)
    with pytest.raises(EavssError, match="tokens"):
        angular_distances(model, batches, 1, tokens="first")
    with pytest.raises(EavssError, match="no calibration batches"):
        angular_distances(model, [], 1)
    empty = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.zeros(1, 3, dtype=torch.long)}
    with pytest.raises(EavssError, match="no real token"):
        angular_distances(model, [empty], 1)
    assert best_block([0.3, 0.1, 0.1, 0.4], 2) == [1, 2]  # ties: lowest start
    with pytest.raises(EavssError, match="every layer"):
        best_block([0.2], 3)
    with pytest.raises(EavssError, match="NaN"):
        best_block([0.2, float("nan")], 1)
    with pytest.raises(EavssError, match="positive integer"):
        best_block([0.2, 0.1], 0)
