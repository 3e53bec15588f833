"""ShortGPT block influence (arXiv 2403.03853, eq. 1) from the streaming statistics engine, against a
matrix-form computation: every real token of every sequence stacked into (N, D) input and output
matrices, per-row cosine, mean of 1 - cos (float64)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from eavss.data.calibration import make_batches
from eavss.models.layers import find_decoder_layers
from eavss.stats import collect_statistics
from eavss.stats.accumulators import F
from eavss.stats.reduce import SparsityRule, reduce_activations
from eavss.testing import tiny_model, tiny_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France? Answer: The capital of France is Paris.",
    "Light travels faster than sound.",
    "A spider has eight legs.",
    "Numbers: 0 1 2 3",
]


def _batches():
    tok = tiny_tokenizer()
    return make_batches([tok(t)["input_ids"] for t in TEXTS], 2, tok.pad_token_id)  # right padding


def _matrix_form(model, batches):
    """(L,) BI: stack the masked (real) tokens of all batches into X_l, Y_l (N, D); mean(1 - rowcos)."""
    m = copy.deepcopy(model).double().eval()
    _, layers = find_decoder_layers(m)
    X = [[] for _ in layers]
    Y = [[] for _ in layers]
    cur = {}

    def mk(i):
        def hook(mod, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out if isinstance(out, torch.Tensor) else out[0]
            cur[i] = (x.numpy().copy(), y.numpy().copy())
        return hook

    hs = [layer.register_forward_hook(mk(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for b in batches:
                m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False)
                sel = b["attention_mask"].bool().numpy()
                for i in range(len(layers)):
                    X[i].append(cur[i][0][sel])
                    Y[i].append(cur[i][1][sel])
    finally:
        for h in hs:
            h.remove()
    out = []
    for xs, ys in zip(X, Y):
        Xm, Ym = np.concatenate(xs), np.concatenate(ys)  # (N, D) float64
        cos = np.einsum("nd,nd->n", Xm, Ym) / (np.linalg.norm(Xm, axis=1) * np.linalg.norm(Ym, axis=1))
        out.append(np.mean(1.0 - cos))
    return np.asarray(out), Xm.shape[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_block_influence_equals_matrix_form(arch):
    model = tiny_model(arch, seed=7, num_layers=4)
    batches = _batches()
    want, n_tok = _matrix_form(model, batches)
    assert n_tok == int(sum(int(b["attention_mask"].sum()) for b in batches))
    # float64 model: the engine's token-weighted row sums equal the matrix form to round-off
    stats64, info = collect_statistics(copy.deepcopy(model).double(), batches, progress=False)
    assert info["num_tokens"] == n_tok
    np.testing.assert_allclose(stats64.block_influence()[0], want, rtol=1e-10, atol=1e-13)
    # float32 model (per-token float32 products, float64 sums)
    stats32, _ = collect_statistics(model, batches, progress=False)
    np.testing.assert_allclose(stats32.block_influence()[0], want, rtol=1e-4, atol=1e-6)
    # padding layout does not matter: one sequence per batch
    single = [make_batches([row[m.bool()].tolist()], 1, 0)[0] for b in batches
              for row, m in zip(b["input_ids"], b["attention_mask"])]
    stats_single, _ = collect_statistics(copy.deepcopy(model).double(), single, progress=False)
    np.testing.assert_allclose(stats_single.block_influence()[0], want, rtol=1e-10, atol=1e-13)


def test_reduce_row_sums_equal_matrix_form_with_nan_padding():
    """The per-batch reduction on random (B, T, D) tensors; padded positions hold NaN."""
    g = torch.Generator().manual_seed(0)
    B, T, D = 3, 7, 16
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    y = x + 0.7 * torch.randn(B, T, D, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    x[~mask] = float("nan")
    y[~mask] = float("nan")
    red = reduce_activations(y, mask, SparsityRule(), layer_input=x, pooled=False)  # (B, NUM_FIELDS)
    Xm, Ym = x[mask].numpy(), y[mask].numpy()
    cos = (Xm * Ym).sum(1) / np.sqrt((Xm ** 2).sum(1) * (Ym ** 2).sum(1))
    assert float(red[:, F["n_tokens"]].sum()) == mask.sum()
    assert float(red[:, F["bi_sum"]].sum()) / float(red[:, F["n_tokens"]].sum()) == pytest.approx(np.mean(1 - cos), rel=1e-12)
    # per sequence too (token-weighted rows: sequence b's sum is over its own tokens)
    for b in range(B):
        xb, yb = x[b][mask[b]].numpy(), y[b][mask[b]].numpy()
        cb = (xb * yb).sum(1) / np.sqrt((xb ** 2).sum(1) * (yb ** 2).sum(1))
        assert float(red[b, F["bi_sum"]]) == pytest.approx(np.sum(1 - cb), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_influence_sums_equals_the_site_reduction_bi(dtype):
    """At sites other than resid_post the collector's second hook calls ``block_influence_sums``; on
    CUDA it takes ``bi_sum`` of the fused site reduction with the layer input (one read of each
    tensor), on CPU the eager float32 form. Both definitions agree (here: eager reduction vs eager
    block_influence_sums; on the GPU, benchmarks/check_fused.py compares the fused kernel with both),
    and padding holding NaN carries no weight in either."""
    from eavss.stats.reduce import block_influence_sums, reduce_activations_ext

    g = torch.Generator().manual_seed(3)
    B, T, D = 4, 9, 48
    x = torch.randn(B, T, D, generator=g) * 3.0
    y = x + 0.5 * torch.randn(B, T, D, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    y[~mask] = float("nan")
    x, y = x.to(dtype), y.to(dtype)
    bi = block_influence_sums(y, x, mask, implementation="eager")
    red, _ = reduce_activations_ext(y, mask, SparsityRule(), layer_input=x, pooled=False, implementation="eager")
    assert bi.dtype == torch.float64 and bi.shape == (B,)
    np.testing.assert_allclose(bi.numpy(), red[:, F["bi_sum"]].numpy(), rtol=1e-6, atol=1e-9)
    assert torch.isfinite(bi).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_delta_reduction_is_the_reduction_of_the_difference_plus_layer_block_influence(dtype):
    """``delta=True`` (the resid_delta site without a temporary on the GPU): every statistic equals
    the reduction of the materialised ``out - x`` (rounded to the input dtype, as torch rounds it),
    and ``bi_sum`` is the layer's block influence (``x`` vs ``out``, not vs the difference); without
    block influence the field is 0; without the layer input it is refused."""
    from eavss.stats.accumulators import NUM_FIELDS
    from eavss.stats.reduce import block_influence_sums, reduce_activations_ext

    g = torch.Generator().manual_seed(5)
    B, T, D = 3, 8, 40
    x = (torch.randn(B, T, D, generator=g, dtype=torch.float64) * 2.0).to(dtype)
    out = (x.double() + 0.4 * torch.randn(B, T, D, generator=g, dtype=torch.float64)).to(dtype)
    mask = torch.rand(B, T, generator=g) > 0.25
    out[~mask] = float("nan")
    got, sq = reduce_activations_ext(out, mask, SparsityRule(), layer_input=x, delta=True)
    want, _ = reduce_activations_ext(out - x, mask, SparsityRule())
    bi = block_influence_sums(out, x, mask)
    assert sq is None  # |a|^2 of the difference is not the next layer's |x|^2: never reused
    fields = [i for i in range(NUM_FIELDS) if i != F["bi_sum"]]
    np.testing.assert_array_equal(got[:, fields].numpy(), want[:, fields].numpy())
    np.testing.assert_array_equal(got[:, F["bi_sum"]].numpy(), bi.numpy())
    assert float(bi.sum()) > 0
    nobi, _ = reduce_activations_ext(out, mask, SparsityRule(), layer_input=x, delta=True, block_influence=False)
    np.testing.assert_array_equal(nobi[:, fields].numpy(), want[:, fields].numpy())
    assert float(nobi[:, F["bi_sum"]].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="need layer_input"):
        reduce_activations_ext(out, mask, SparsityRule(), delta=True)


def test_block_influence_sums_into_an_accumulator():
    """The collector's path at ``mlp_act``: the per-sequence sums added into ``acc[groups[b], bi_sum]``
    (no other field touched; group 0 for every sequence without groups)."""
    from eavss.stats.accumulators import NUM_FIELDS
    from eavss.stats.reduce import block_influence_sums

    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 5, 24, generator=g, dtype=torch.float64)
    y = x + torch.randn(4, 5, 24, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 5, generator=g) > 0.2
    per_seq = block_influence_sums(y, x, mask)
    acc = torch.zeros(3, NUM_FIELDS, dtype=torch.float64)
    assert block_influence_sums(y, x, mask, acc=acc, groups=torch.tensor([2, 0, 2, 2])) is None
    want = torch.zeros(3, NUM_FIELDS, dtype=torch.float64)
    want[0, F["bi_sum"]] = per_seq[1]
    want[2, F["bi_sum"]] = per_seq[0] + per_seq[2] + per_seq[3]
    torch.testing.assert_close(acc, want, rtol=1e-15, atol=0)
    acc2 = torch.zeros(1, NUM_FIELDS, dtype=torch.float64)
    block_influence_sums(y, x, mask, acc=acc2)
    assert float(acc2[0, F["bi_sum"]]) == pytest.approx(float(per_seq.sum()), rel=1e-15)


def test_delta_with_an_input_of_another_dtype_follows_torch_promotion():
    """``out - x`` with a bfloat16 output and a float32 input is float32 in torch; the delta
    reduction gives the statistics of exactly that (the kernel's rounding to the output dtype is
    used only when both dtypes agree)."""
    from eavss.stats.reduce import reduce_activations_ext

    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, 24, generator=g)
    out = (x + 0.3 * torch.randn(2, 6, 24, generator=g)).to(torch.bfloat16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    got, _ = reduce_activations_ext(out, mask, SparsityRule(), layer_input=x, delta=True, block_influence=False)
    want, _ = reduce_activations_ext(out - x, mask, SparsityRule())
    assert (out - x).dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), want.numpy())
