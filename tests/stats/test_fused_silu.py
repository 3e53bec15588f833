"""``mlp_act`` on SiLU MLPs with the activation module's forward replaced, or the whole gated MLP's
(``FUSE_SILU`` ``always`` / ``mlp_always``): the same statistics as the forward hook, the model's
outputs unchanged, the forward restored on detach, and the hook kept wherever the replacement must
not run (GELU MLPs, Phi3's fused ``gate_up_proj`` in the MLP mode, autograd, other hooks on the
activation, ``hook`` mode).

On the CPU the replacement runs with ``EAVSS_FUSE_SILU=always`` / ``mlp_always`` (torch's SiLU into
the output, then the eager reduction, then the product): what is tested here is the plumbing. The
GPU kernels' SiLU and gated product, to the bit against torch's, are checked by
``benchmarks/check_fused.py`` on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eavss.data.calibration import make_batches
from eavss.errors import EavssError
from eavss.hallucination.capture import Capture, PooledFeatures, teacher_forced_pass
from eavss.models.layers import find_decoder_layers, find_gated_mlp, find_mlp_activation
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
@pytest.mark.parametrize("mode", ["always", "mlp_always"])
def test_replaced_silu_gives_the_hooks_statistics_to_the_bit(arch, bi, mode, monkeypatch):
    model = tiny_model(arch, seed=1)
    seqs = _seqs(seed=2)
    hook, col_h = _stats(model, seqs, "hook", monkeypatch, block_influence=bi)
    fused, col_f = _stats(model, seqs, mode, monkeypatch, block_influence=bi)
    L = len(find_decoder_layers(model)[1])
    n_batches = len(make_batches(seqs, 4, pad_id=0))
    assert col_h.fused_silu_calls == 0
    gated = mode == "always" or arch != "phi3"  # Phi3's gate_up_proj MLP is not the pattern: the hook runs
    assert col_f.fused_silu_calls == (L * n_batches if gated else 0)  # every layer, every batch: it ran
    np.testing.assert_array_equal(fused.sums, hook.sums)
    np.testing.assert_array_equal(fused.width, hook.width)
    assert fused.has_block_influence == bi


@pytest.mark.parametrize("mode", ["always", "mlp_always"])
def test_forward_restored_and_model_outputs_unchanged(mode, monkeypatch):
    monkeypatch.setenv("EAVSS_FUSE_SILU", mode)
    model = tiny_model("llama", seed=3)
    ids = torch.randint(5, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    am = torch.ones_like(ids)
    am[0, :3] = 0
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=am).logits
    layers = find_decoder_layers(model)[1]
    acts = [find_mlp_activation(layer) for layer in layers]
    assert all(_plain_silu(m) for m in acts)
    mods = acts if mode == "always" else [find_gated_mlp(layer, act) for layer, act in zip(layers, acts)]
    assert all(m is layer.mlp for m, layer in zip(mods, layers)) or mode == "always"
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


def _grads(model, ids, with_col):
    """Gradients of every parameter that gets one, from a backward pass of the logits' mean square
    with (``with_col``) or without an ``mlp_act`` collector attached; and the collector."""
    am = torch.ones_like(ids)
    model.zero_grad()
    col = ActivationStatsCollector(model, site="mlp_act", block_influence=False)
    if with_col:
        col.attach()
        col.set_batch(am.bool())
    model(input_ids=ids, attention_mask=am).logits.float().square().mean().backward()
    col.detach()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None], col


@pytest.mark.parametrize("mode", ["always", "mlp_always"])
def test_autograd_falls_back_to_the_hook(mode, monkeypatch):
    """With gradients flowing through the activation, the module's own forward runs (the kernel has
    no backward): gradients equal those without the collector, statistics equal the hook's."""
    monkeypatch.setenv("EAVSS_FUSE_SILU", mode)
    model = tiny_model("qwen2", seed=4)
    ids = torch.randint(5, 500, (2, 7), generator=torch.Generator().manual_seed(1))
    g0, _ = _grads(model, ids, False)
    g1, col = _grads(model, ids, True)
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
    with pytest.raises(EavssError, match="EAVSS_FUSE_SILU must be one of hook, auto, always, mlp, mlp_always"):
        ActivationStatsCollector(tiny_model("llama", seed=7), site="mlp_act")


def test_teacher_forced_capture_with_features_equal(monkeypatch):
    """Answer capture's teacher-forced passes (collector + probe features on the same modules): the
    features' forward hooks still see the replaced module's output."""
    model = tiny_model("llama", seed=8)
    seqs = [s for s in _seqs(n=8, seed=5) if len(s) > 5]
    rows = [(s[:4], s[4:], i) for i, s in enumerate(seqs)]
    N = len(rows)
    out = {}
    for mode in ("hook", "always", "mlp_always"):
        monkeypatch.setenv("EAVSS_FUSE_SILU", mode)
        col = ActivationStatsCollector(model, site="mlp_act", rule=SparsityRule(), group_names=[str(i) for i in range(N)],
                                       pooled=False, block_influence=False)
        feats = PooledFeatures(model, N, "mlp_act")
        teacher_forced_pass(model, rows, None, batch_size=2, capture=Capture(col, feats), pad_id=0)
        out[mode] = (col.result(), feats.result(), col.fused_silu_calls)
    # the gated-MLP replacement would skip act_fn, which the features hook: it steps aside
    assert out["hook"][2] == 0 and out["always"][2] > 0 and out["mlp_always"][2] == 0
    for mode in ("always", "mlp_always"):
        np.testing.assert_array_equal(out[mode][0].sums, out["hook"][0].sums)
        torch.testing.assert_close(out[mode][1][0], out["hook"][1][0], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(out[mode][1][1], out["hook"][1][1], rtol=0, atol=0)


def test_gated_mlp_found_only_for_the_exact_pattern():
    """``find_gated_mlp``: Llama-style MLPs yes; Phi3 (``gate_up_proj``), a subclass with its own
    forward, an instance override, or an ``act_fn`` that is not the layer's activation: no."""
    for arch in SILU_ARCHS:
        layer = find_decoder_layers(tiny_model(arch, seed=9))[1][0]
        mlp = find_gated_mlp(layer, find_mlp_activation(layer))
        assert (mlp is layer.mlp) == (arch != "phi3")
    layer = find_decoder_layers(tiny_model("llama", seed=9))[1][0]
    act = find_mlp_activation(layer)
    assert find_gated_mlp(layer, torch.nn.SiLU()) is None  # not this MLP's activation
    cls = type(layer.mlp)
    layer.mlp.__class__ = type("Scaled" + cls.__name__, (cls,), {"forward": lambda self, x: 2 * cls.forward(self, x)})
    assert find_gated_mlp(layer, act) is None
    layer.mlp.__class__ = cls
    assert find_gated_mlp(layer, act) is layer.mlp
    layer.mlp.forward = lambda x: cls.forward(layer.mlp, x)  # accelerate-style instance override
    assert find_gated_mlp(layer, act) is None


def test_gated_mlp_steps_aside_for_other_hooks_on_the_activation(monkeypatch):
    """A hook someone else put on ``act_fn`` keeps seeing its output: the MLP replacement falls back
    to the module's own arithmetic for that call (outputs and statistics unchanged)."""
    model = tiny_model("qwen2", seed=10)
    seqs = _seqs(seed=6)
    hook, _ = _stats(model, seqs, "hook", monkeypatch)
    seen = []
    act = find_mlp_activation(find_decoder_layers(model)[1][1])
    h = act.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    fused, col = _stats(model, seqs, "mlp_always", monkeypatch)
    h.remove()
    L = len(find_decoder_layers(model)[1])
    n_batches = len(make_batches(seqs, 4, pad_id=0))
    assert len(seen) == n_batches and col.fused_silu_calls == (L - 1) * n_batches
    np.testing.assert_array_equal(fused.sums, hook.sums)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_reduction_writes_the_product_and_reduces_the_silu(dtype):
    """``reduce_activations_ext(gate, ..., silu_out=h, up=up)`` (eager here): ``h`` is torch's
    ``silu(gate) * up`` to the bit on every token, padding included; the sums are those of
    ``silu(gate)`` (against the float64 reduction of the same rounded values)."""
    from eavss.stats.reduce import reduce_activations_ext

    g = torch.Generator().manual_seed(11)
    gate = (torch.randn(3, 6, 40, generator=g) * 3).to(dtype)
    up = torch.randn(3, 6, 40, generator=g).to(dtype)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    gate[1, 5] = float("nan")  # padding: written through, not counted
    h = torch.empty_like(gate)
    got, _ = reduce_activations_ext(gate, mask, SparsityRule(), silu_out=h, up=up)
    act = torch.nn.functional.silu(gate)
    torch.testing.assert_close(h, act * up, rtol=0, atol=0, equal_nan=True)
    ref, _ = reduce_activations_ext(act.double(), mask, SparsityRule())
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=2e-6, atol=1e-9)


def test_gated_reduction_bad_arguments():
    from eavss.stats.reduce import reduce_activations_ext

    gate = torch.randn(2, 3, 8)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="up needs silu_out"):
        reduce_activations_ext(gate, mask, SparsityRule(), up=gate.clone())
    with pytest.raises(ValueError, match="up needs silu_out"):
        reduce_activations_ext(gate, mask, SparsityRule(), silu_out=torch.empty_like(gate), up=torch.randn(2, 3, 9))


@pytest.mark.parametrize("mode", ["hook", "mlp", "mlp_always"])  # mlp on the CPU: the fallback branch
def test_gated_mlp_frees_gate_and_up_before_down_proj_as_the_plain_forward_does(mode, monkeypatch):
    """Peak memory: when ``down_proj`` runs, ``gate_proj``'s and ``up_proj``'s outputs are gone, as
    in the MLP's own forward (``hook``)."""
    import weakref

    monkeypatch.setenv("EAVSS_FUSE_SILU", mode)
    model = tiny_model("llama", seed=12)
    mlp = find_decoder_layers(model)[1][0].mlp
    refs, alive = [], []
    hooks = [mlp.gate_proj.register_forward_hook(lambda m, a, o: refs.append(weakref.ref(o))),
             mlp.up_proj.register_forward_hook(lambda m, a, o: refs.append(weakref.ref(o))),
             mlp.down_proj.register_forward_pre_hook(lambda m, a: alive.append([r() is not None for r in refs]))]
    ids = torch.randint(5, 500, (2, 7), generator=torch.Generator().manual_seed(2))
    am = torch.ones_like(ids)
    col = ActivationStatsCollector(model, site="mlp_act", block_influence=False)
    with col, torch.no_grad():
        col.set_batch(am.bool())
        model(input_ids=ids, attention_mask=am)
    for h in hooks:
        h.remove()
    assert col.fused_silu_calls == (len(find_decoder_layers(model)[1]) if mode == "mlp_always" else 0)
    assert alive == [[False, False]]


def test_gated_mlp_keeps_gradients_of_a_trainable_up_proj(monkeypatch):
    """Autograd through any part of the MLP (here a frozen ``gate_proj`` and a trainable
    ``up_proj``, as with adapters on some projections only) keeps the MLP's own arithmetic."""
    monkeypatch.setenv("EAVSS_FUSE_SILU", "mlp_always")
    model = tiny_model("llama", seed=13)
    model.requires_grad_(False)  # only up_proj trains: layer 0's MLP input and gate need no gradient
    for layer in find_decoder_layers(model)[1]:
        layer.mlp.up_proj.weight.requires_grad_(True)
    ids = torch.randint(5, 500, (2, 6), generator=torch.Generator().manual_seed(3))
    g0, _ = _grads(model, ids, False)
    g1, col = _grads(model, ids, True)
    assert len(g0) == len(find_decoder_layers(model)[1])  # the up_proj weights, and nothing else
    assert col.fused_silu_calls == 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("keep", [None, "tensor", "detach", "data"])
def test_gate_overwritten_only_when_nothing_else_can_hold_it(keep, monkeypatch):
    """The kernels may store the SiLU into the gate's buffer (``overwrite_act``) only when no hook on
    ``gate_proj`` could keep it, or an alias of its storage (``o.detach()``, ``o.data``)."""
    import eavss.stats.collector as collector_mod

    monkeypatch.setenv("EAVSS_FUSE_SILU", "mlp_always")
    model = tiny_model("qwen2", seed=14)
    seen, kept = [], []
    real = collector_mod.reduce_activations_ext

    def spy(*a, **k):
        seen.append(k.get("overwrite_act"))
        return real(*a, **k)

    monkeypatch.setattr(collector_mod, "reduce_activations_ext", spy)
    gp = find_decoder_layers(model)[1][0].mlp.gate_proj
    if keep is not None:
        gp.register_forward_hook(lambda m, a, o: kept.append({"tensor": o, "detach": o.detach(), "data": o.data}[keep]))
    ids = torch.randint(5, 500, (2, 6), generator=torch.Generator().manual_seed(4))
    am = torch.ones_like(ids)
    with ActivationStatsCollector(model, site="mlp_act", block_influence=False) as col, torch.no_grad():
        col.set_batch(am.bool())
        model(input_ids=ids, attention_mask=am)
    L = len(find_decoder_layers(model)[1])
    assert seen == [keep is None] + [True] * (L - 1)


def test_gated_mlp_defers_to_another_replacement_of_the_activation(monkeypatch):
    """Another collector that replaced ``act_fn``'s forward (mode ``always``) still sees every call
    while a gated-MLP collector is attached: both collect the hook's statistics."""
    model = tiny_model("llama", seed=15)
    ids = torch.randint(5, 500, (2, 6), generator=torch.Generator().manual_seed(5))
    am = torch.ones_like(ids)
    monkeypatch.setenv("EAVSS_FUSE_SILU", "hook")
    ref = ActivationStatsCollector(model, site="mlp_act")
    monkeypatch.setenv("EAVSS_FUSE_SILU", "always")
    a = ActivationStatsCollector(model, site="mlp_act")
    monkeypatch.setenv("EAVSS_FUSE_SILU", "mlp_always")
    b = ActivationStatsCollector(model, site="mlp_act")
    for first, second in ((ref, None), (a, b)):
        first.attach()
        if second is not None:
            second.attach()
        with torch.no_grad():
            for c in (first, second):
                if c is not None:
                    c.set_batch(am.bool())
            model(input_ids=ids, attention_mask=am)
        for c in (second, first):
            if c is not None:
                c.detach()
    np.testing.assert_array_equal(a.result().sums, ref.result().sums)
    np.testing.assert_array_equal(b.result().sums, ref.result().sums)
    assert a.fused_silu_calls > 0 and b.fused_silu_calls == 0


@pytest.mark.parametrize("mode", ["always", "mlp_always"])
def test_replaced_forward_kept_by_a_wrapper_stops_counting_after_detach(mode, monkeypatch):
    """A wrapper installed after attach that captured the bound replacement (accelerate-style) runs
    the module's own forward once the collector is detached: nothing more is counted."""
    monkeypatch.setenv("EAVSS_FUSE_SILU", mode)
    model = tiny_model("llama", seed=16)
    ids = torch.randint(5, 500, (2, 6), generator=torch.Generator().manual_seed(6))
    am = torch.ones_like(ids)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=am).logits
    col = ActivationStatsCollector(model, site="mlp_act", block_influence=False)
    col.attach()
    layer = find_decoder_layers(model)[1][1]
    mod = layer.mlp if mode == "mlp_always" else layer.mlp.act_fn
    inner = mod.forward
    mod.forward = lambda x: inner(x)
    with torch.no_grad():
        col.set_batch(am.bool())
        model(input_ids=ids, attention_mask=am)
        col.detach()
        after = model(input_ids=ids, attention_mask=am).logits
    n = col.result().n_tokens().ravel()
    assert (n == n[0]).all() and n[0] == ids.numel()  # every layer once, none twice
    torch.testing.assert_close(after, plain, rtol=0, atol=0)
