"""skip_layers (in-place, no-copy layer removal) and the ablation ground truth (layer-skip loss, SLEB)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from eavss.data.calibration import make_batches
from eavss.errors import EavssError
from eavss.models.layers import find_decoder_layers
from eavss.models.surgery import remove_layers, skip_layers
from eavss.scores.ablation import calibration_loss, layer_skip_loss, sleb_select
from eavss.testing import TINY_ARCHS, tiny_model, tiny_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France? Answer: The capital of France is Paris.",
    "Light travels faster than sound.",
    "A spider has eight legs.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12.",
]


def _seqs():
    tok = tiny_tokenizer()
    return [tok(t)["input_ids"] for t in TEXTS], tok.pad_token_id


def _batches(batch_size=2):
    seqs, pad = _seqs()
    return make_batches(seqs, batch_size, pad)


def _ids():
    seqs, _ = _seqs()
    return torch.tensor([seqs[1]])


def _state(model):
    return {n: (id(p), p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}


def _layer_idx_attrs(model):
    _, layers = find_decoder_layers(model)
    return [(id(m), k, getattr(m, k)) for layer in layers for m in layer.modules()
            for k in ("layer_idx", "layer_id", "layer_index", "layer_number") if k in vars(m)]


# ---------------------------------------------------------------------------------------------
# skip_layers


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_skip_layers_equals_remove_layers_and_restores(arch):
    model = tiny_model(arch, seed=2, num_layers=5)
    ids = _ids()
    before_state = _state(model)
    before_cfg = copy.deepcopy(vars(model.config))
    before_idx = _layer_idx_attrs(model)
    _, layers_before = find_decoder_layers(model)
    with torch.no_grad():
        logits_before = model(ids).logits
        pruned = copy.deepcopy(model)
        remove_layers(pruned, [3, 1])
        want = pruned(ids).logits
        with skip_layers(model, [1, 3]) as info:
            assert info["kept"] == [0, 2, 4]
            _, layers_in = find_decoder_layers(model)
            assert len(layers_in) == 3 and model.config.num_hidden_layers == 3
            if arch == "gemma3":
                assert model.config.layer_types == pruned.config.layer_types
            got = model(ids).logits
            # no parameter was allocated or copied inside either (names shift with the renumbering)
            ptrs_before = {v[1] for v in before_state.values()}
            assert all(p.data_ptr() in ptrs_before for p in model.parameters())
        after = model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, logits_before, atol=1e-3)  # skipping changed something
    assert torch.equal(after, logits_before)  # bit-identical after exit
    _, layers_after = find_decoder_layers(model)
    assert layers_after is layers_before and len(layers_after) == 5
    for n, p in model.named_parameters():
        pid, ptr, val = before_state[n]
        assert id(p) == pid and p.data_ptr() == ptr and torch.equal(p, val)
    assert vars(model.config) == before_cfg
    assert _layer_idx_attrs(model) == before_idx


def test_skip_layers_restores_on_exception_and_nests():
    model = tiny_model("qwen2", seed=0, num_layers=5)
    ids = _ids()
    cfg = copy.deepcopy(vars(model.config))
    idx = _layer_idx_attrs(model)
    with torch.no_grad():
        ref = model(ids).logits
        with pytest.raises(RuntimeError, match="boom"):
            with skip_layers(model, [0, 2]):
                raise RuntimeError("boom")
        assert vars(model.config) == cfg and _layer_idx_attrs(model) == idx
        # nested: inner indices refer to the outer context's kept layers [0, 2, 3, 4] -> removes 3 too
        pruned = copy.deepcopy(model)
        remove_layers(pruned, [1, 3])
        with skip_layers(model, [1]):
            with skip_layers(model, [2]) as inner:
                assert inner["removed_original"] == [3]
                torch.testing.assert_close(model(ids).logits, pruned(ids).logits, atol=1e-5, rtol=0)
            assert len(find_decoder_layers(model)[1]) == 4
        assert torch.equal(model(ids).logits, ref)
    assert vars(model.config) == cfg and _layer_idx_attrs(model) == idx


@pytest.mark.parametrize("indices, match", [([5], "out of range"), ([1, 1], "more than once"),
                                            ([0, 1, 2, 3, 4], "cannot remove all"), ("1", "list of integers")])
def test_skip_layers_validation_leaves_model(indices, match):
    model = tiny_model("llama", num_layers=5)
    cfg = copy.deepcopy(vars(model.config))
    with pytest.raises(EavssError, match=match):
        with skip_layers(model, indices):
            pass
    assert vars(model.config) == cfg and len(find_decoder_layers(model)[1]) == 5


# ---------------------------------------------------------------------------------------------
# reference: deepcopy + remove_layers, float64, one unpadded sequence at a time


def _ref_loss(model, seqs, removed=()):
    m = copy.deepcopy(model).double().eval()
    if removed:
        remove_layers(m, list(removed))
    total, n = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s])
            logp = torch.log_softmax(m(input_ids=ids).logits[0].double(), dim=-1)  # (T, V)
            for t in range(len(s) - 1):
                total -= float(logp[t, s[t + 1]])
                n += 1
    return total / n, n


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "phi3"])
def test_layer_skip_loss_matches_reference(arch):
    model = tiny_model(arch, seed=3, num_layers=4)
    seqs, pad = _seqs()
    batches = make_batches(seqs, 2, pad)  # right padding, mixed lengths
    state = _state(model)
    res = layer_skip_loss(model, batches)
    base, n = _ref_loss(model, seqs)
    assert res["num_tokens"] == n == sum(len(s) - 1 for s in seqs)
    assert res["base_loss"] == pytest.approx(base, abs=2e-5)
    assert res["base_perplexity"] == pytest.approx(math.exp(base), rel=2e-5)
    assert res["layers"] == [0, 1, 2, 3]
    for layer in range(4):
        want, _ = _ref_loss(model, seqs, [layer])
        assert res["loss_skipped"][layer] == pytest.approx(want, abs=2e-5)
        assert res["delta"][layer] == pytest.approx(want - base, abs=4e-5)
    np.testing.assert_allclose(res["perplexity_skipped"], np.exp(res["loss_skipped"]))
    order = np.argsort(-res["delta"], kind="stable")
    assert list(res["importance_rank"][order]) == [1, 2, 3, 4]
    for name, p in model.named_parameters():
        assert p.data_ptr() == state[name][1] and torch.equal(p, state[name][2])


@pytest.mark.parametrize("arch", ["llama", "opt", "mistral"])
def test_padding_invariance(arch):
    model = tiny_model(arch, seed=1, num_layers=3)
    seqs, pad = _seqs()
    padded = make_batches(seqs, 5, pad)  # one batch, heavy right padding
    single = [make_batches([s], 1, pad)[0] for s in seqs]  # no padding at all
    assert int((padded[0]["attention_mask"] == 0).sum()) > 10
    a = layer_skip_loss(model, padded, layers=[0, 2])
    b = layer_skip_loss(model, single, layers=[0, 2])
    assert a["num_tokens"] == b["num_tokens"]
    assert a["base_loss"] == pytest.approx(b["base_loss"], abs=1e-5)
    np.testing.assert_allclose(a["loss_skipped"][[0, 2]], b["loss_skipped"][[0, 2]], atol=1e-5)
    assert np.isnan(a["loss_skipped"][1]) and a["importance_rank"][1] == 0
    # padding content is irrelevant
    junk = {k: v.clone() for k, v in padded[0].items()}
    junk["input_ids"][junk["attention_mask"] == 0] = 7
    assert calibration_loss(model, [junk])["loss"] == pytest.approx(a["base_loss"], abs=1e-6)


def test_calibration_loss_fields_and_errors():
    model = tiny_model("llama", num_layers=2)
    model.train()
    res = calibration_loss(model, _batches())
    assert model.training  # mode restored
    assert set(res) == {"loss", "perplexity", "nll_sum", "num_tokens"}
    assert res["nll_sum"] == pytest.approx(res["loss"] * res["num_tokens"])
    assert res["perplexity"] == pytest.approx(math.exp(res["loss"]))
    with pytest.raises(EavssError, match="no calibration batches"):
        calibration_loss(model, [])
    with pytest.raises(EavssError, match="input_ids and attention_mask"):
        calibration_loss(model, [{"input_ids": torch.zeros(1, 3, dtype=torch.long)}])
    one = {"input_ids": torch.tensor([[5, 3]]), "attention_mask": torch.tensor([[1, 0]])}
    with pytest.raises(EavssError, match="no scorable token"):
        calibration_loss(model, [one])
    with pytest.raises(EavssError, match="out of range"):
        layer_skip_loss(model, _batches(), layers=[2])
    with pytest.raises(EavssError, match="single decoder layer"):
        layer_skip_loss(tiny_model("llama", num_layers=1), _batches())


# ---------------------------------------------------------------------------------------------
# SLEB


def test_sleb_first_choice_and_greedy_steps():
    model = tiny_model("llama", seed=4, num_layers=4)
    batches = _batches()
    state = _state(model)
    skip = layer_skip_loss(model, batches)
    res = sleb_select(model, batches, 2)
    assert res["removed"][0] == int(np.argmin(skip["loss_skipped"]))
    assert res["base_loss"] == pytest.approx(skip["base_loss"], abs=1e-12)
    np.testing.assert_allclose(res["candidate_loss"][0], skip["loss_skipped"], atol=1e-12)
    assert len(res["removed"]) == len(set(res["removed"])) == 2
    assert res["removed_sorted"] == sorted(res["removed"])
    # step 2 equals removing both layers from a copy, and is the best pair containing the first choice
    first = res["removed"][0]
    want, _ = _ref_loss(model, [s for b in batches for s in _unpad(b)], res["removed"])
    assert res["loss"][1] == pytest.approx(want, abs=2e-5)
    assert np.isnan(res["candidate_loss"][1, first])
    assert res["loss"][1] == pytest.approx(np.nanmin(res["candidate_loss"][1]))
    assert res["perplexity"] == pytest.approx([math.exp(x) for x in res["loss"]])
    for name, p in model.named_parameters():
        assert p.data_ptr() == state[name][1] and torch.equal(p, state[name][2])
    assert len(find_decoder_layers(model)[1]) == 4 and model.config.num_hidden_layers == 4
    for bad in (0, 4, 1.5, True):
        with pytest.raises(EavssError, match="SLEB k"):
            sleb_select(model, batches, bad)


def _unpad(batch):
    return [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])]
