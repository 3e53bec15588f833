"""``mlp_act`` on SiLU MLPs with the activation module's forward replaced (``FUSE_SILU``): the same
statistics as the forward hook, the model's outputs unchanged, the forward restored on detach, and
the hook kept wherever the replacement must not run (GELU MLPs, autograd, ``hook`` mode).

On the CPU the replacement runs with ``EAVSS_FUSE_SILU=always`` (torch's SiLU into the output, then
the eager reduction): what is tested here is the plumbing. The GPU kernel's SiLU, to the bit against
torch's, is checked by ``benchmarks/check_fused.py`` on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eavss.data.calibration import make_batches
from eavss.errors import EavssError
from eavss.hallucination.capture import Capture, PooledFeatures, teacher_forced_pass
from eavss.models.layers import find_decoder_layers, find_mlp_activation
from eavss.stats import ActivationStatsCollector, SparsityRule, collect_statistics
from eavss.stats.collector import _plain_silu
from eavss.testing.tiny import TINY_ARCHS, tiny_model

SILU_ARCHS = [a for a in ("llama", "qwen2", "mistral", "phi3") if a in TINY_ARCHS]


def _seqs(n=6, seed=0):
    g = np.random.default_rng(seed)
    return [g.integers(5, 500, size=int(g.integers(3, 20))).tolist() for _ in range(n)]


def _stats(model, seqs, mode, monkeypatch, **kw):
    monkeypatch.setenv("EAVSS_FUSE_SILU", mode)
    batches = make_batches(seqs, 4, pad_id=0)
    for b in batches:
        b["groups"] = torch.arange(b["input_ids"].shape[0]) % 2
    calls = []
    real = ActivationStatsCollector.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        calls.append(self)

    monkeypatch.setattr(ActivationStatsCollector, "__init__", spy)
    stats, _ = collect_statistics(model, batches, site="mlp_act", rule=SparsityRule(), group_names=("a", "b"),
                                  progress=False, **kw)
    monkeypatch.setattr(ActivationStatsCollector, "__init__", real)
    return stats, calls[0]


@pytest.mark.parametrize("arch", SILU_ARCHS)
@pytest.mark.parametrize("bi", [True, False])
def test_replaced_silu_gives_the_hooks_statistics_to_the_bit(arch, bi, monkeypatch):
    model = tiny_model(arch, seed=1)
    seqs = _seqs(seed=2)
    hook, col_h = _stats(model, seqs, "hook", monkeypatch, block_influence=bi)
    fused, col_f = _stats(model, seqs, "always", monkeypatch, block_influence=bi)
    L = len(find_decoder_layers(model)[1])
    n_batches = len(make_batches(seqs, 4, pad_id=0))
    assert col_h.fused_silu_calls == 0
    assert col_f.fused_silu_calls == L * n_batches  # every layer, every batch: the replacement ran
    np.testing.assert_array_equal(fused.sums, hook.sums)
    np.testing.assert_array_equal(fused.width, hook.width)
    assert fused.has_block_influence == bi


def test_forward_restored_and_model_outputs_unchanged(monkeypatch):
    monkeypatch.setenv("EAVSS_FUSE_SILU", "always")
    model = tiny_model("llama", seed=3)
    ids = torch.randint(5, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[0, :3] = 0
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=am).logits
    mods = [find_mlp_activation(layer) for layer in find_decoder_layers(model)[1]]
    assert all(_plain_silu(m) for m in mods)
    col = ActivationStatsCollector(model, site="mlp_act")
    with col, torch.no_grad():
        assert all("forward" in m.__dict__ for m in mods)
        col.set_batch(am.bool())
        hooked = model(input_ids=ids, attention_mask=am).logits
    assert col.fused_silu_calls == len(mods)
    assert all("forward" not in m.__dict__ for m in mods)  # restored
    torch.testing.assert_close(hooked, plain, rtol=0, atol=0)
    col.attach()
    col.attach()  # idempotent: one replacement per module
    col.detach()
    assert all("forward" not in m.__dict__ for m in mods)


def test_autograd_falls_back_to_the_hook(monkeypatch):
    """With gradients flowing through the activation, the module's own forward runs (the kernel has
    no backward): gradients equal those without the collector, statistics equal the hook's."""
    monkeypatch.setenv("EAVSS_FUSE_SILU", "always")
    model = tiny_model("qwen2", seed=4)
    ids = torch.randint(5, 500, (2, 7), generator=torch.Generator().manual_seed(1))
    am = torch.ones_like(ids)

    def grads(with_col):
        model.zero_grad()
        col = ActivationStatsCollector(model, site="mlp_act", block_influence=False)
        if with_col:
            col.attach()
            col.set_batch(am.bool())
        model(input_ids=ids, attention_mask=am).logits.float().square().mean().backward()
        col.detach()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None], col

    g0, _ = grads(False)
    g1, col = grads(True)
    assert col.fused_silu_calls == 0 and col.num_batches == 1
    assert col.result().n_tokens().sum() == ids.numel() * len(find_decoder_layers(model)[1])
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gelu_mlp_keeps_the_hook(monkeypatch):
    monkeypatch.setenv("EAVSS_FUSE_SILU", "always")
    model = tiny_model("gemma3", seed=5)
    mods = [find_mlp_activation(layer) for layer in find_decoder_layers(model)[1]]
    assert not any(_plain_silu(m) for m in mods)
    _, col = _stats(model, _seqs(seed=3), "always", monkeypatch)
    assert col.fused_silu_calls == 0


def test_auto_keeps_the_hook_on_the_cpu(monkeypatch):
    """``auto`` replaces only where the fused GPU reduction runs."""
    model = tiny_model("llama", seed=6)
    _, col = _stats(model, _seqs(seed=4), "auto", monkeypatch)
    assert col.fused_silu_calls == 0 and col.num_batches > 0


def test_bad_mode_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("EAVSS_FUSE_SILU", "yes")
    with pytest.raises(EavssError, match="EAVSS_FUSE_SILU must be auto, hook or always"):
        ActivationStatsCollector(tiny_model("llama", seed=7), site="mlp_act")


def test_teacher_forced_capture_with_features_equal(monkeypatch):
    """Answer capture's teacher-forced passes (collector + probe features on the same modules): the
    features' forward hooks still see the replaced module's output."""
    model = tiny_model("llama", seed=8)
    seqs = [s for s in _seqs(n=8, seed=5) if len(s) > 5]
    rows = [(s[:4], s[4:], i) for i, s in enumerate(seqs)]
    N = len(rows)
    out = {}
    for mode in ("hook", "always"):
        monkeypatch.setenv("EAVSS_FUSE_SILU", mode)
        col = ActivationStatsCollector(model, site="mlp_act", rule=SparsityRule(), group_names=[str(i) for i in range(N)],
                                       pooled=False, block_influence=False)
        feats = PooledFeatures(model, N, "mlp_act")
        teacher_forced_pass(model, rows, None, batch_size=2, capture=Capture(col, feats), pad_id=0)
        out[mode] = (col.result(), feats.result(), col.fused_silu_calls)
    assert out["hook"][2] == 0 and out["always"][2] > 0
    np.testing.assert_array_equal(out["always"][0].sums, out["hook"][0].sums)
    torch.testing.assert_close(out["always"][1][0], out["hook"][1][0], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(out["always"][1][1], out["hook"][1][1], rtol=0, atol=0)
