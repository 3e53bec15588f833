"""The approaches eavss is compared with, each as a per-batch "variant" over one model.

A variant has ``step(batch)`` (process one batch of ``input_ids``/``attention_mask`` already on the
model's device) and ``finish()`` (end of pass: fetch results to the host). The timing harness in
``stats_overhead.py`` times ``step`` over all batches plus ``finish``.

============== ==============================================================================
variant        what it does per batch
============== ==============================================================================
plain          the decoder stack's forward pass, no hooks (the limit)
eavss          ``eavss.stats.ActivationStatsCollector`` as ``collect_statistics`` uses it
               (fused Triton reduction on CUDA, eager on CPU; pooled variance and block
               influence on, float64 accumulator, non-blocking NaN check)
eavss_eager    the same with ``EAVSS_REDUCE=eager`` (CUDA only: the no-Triton fallback)
simple         per-layer hooks with the simple unfused reduction (eavss's first version:
               float32 upcast copy, ``var_mean``, separate passes for sparsity, block
               influence and pooled variance; one sync per batch)
official       the official AVSS code's pattern: a hook per layer copies the layer output to
               the host and reduces it there (pooled variance, ``|a| < 1e-5`` sparsity,
               element variance)
hidden_states  ``output_hidden_states=True``, then every stored hidden state reduced with
               eavss's own reduction (same statistics; only the storage differs)
bi_matrix      ShortGPT-style block influence from the full ``(B*T) x (B*T)`` cosine-similarity
               matrix of layer input vs output (its diagonal), in the model dtype
bi_rowwise     block influence in eavss's row-wise form only (collector, no pooled variance)
eavss_SITE     ``eavss`` at capture site SITE (``resid_delta``, ``mlp_act``), as ``collect_statistics``
               runs it there: the site reduction plus block influence from a second hook on the
               decoder layer's output (fused kernel on CUDA); ``..._nobi``: block influence off;
               ``..._eagerbi``: block influence by the eager float32 form (the code before the
               fused one, for comparison); ``eavss_mlp_act_hook`` / ``eavss_mlp_act_nobi_hook``: the
               SiLU not fused (``EAVSS_FUSE_SILU=hook``: the hook reads the activation again);
               ``eavss_mlp_act_rowkernel`` / ``..._nobi_rowkernel``: the one-read kernel at every width
               (``EAVSS_TILED_CONFIG=off``); ``eavss_mlp_act_tiled`` / ``..._nobi_tiled``: the tiled
               two-read path at every width (``=on``); ``eavss_mlp_act_nopool``: without the pooled
               variance; ``eavss_mlp_act_gated`` / ``..._nobi_gated``: the gated MLP's forward
               replaced (``EAVSS_FUSE_SILU=mlp``: SiLU, product and statistics in two kernels)
============== ==============================================================================
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as Fn

from eavss.models.layers import find_decoder_layers
from eavss.stats import ActivationStatsCollector, SparsityRule
from eavss.stats.accumulators import F, NUM_FIELDS
from eavss.stats.collector import forward_for_stats
from eavss.stats.reduce import reduce_activations_ext
from eavss.stats.sites import input_tensor, output_tensor


class HookTimer:
    """Wall and CPU seconds spent inside the statistics code called from the hooks, summed.

    On a CPU every operation is synchronous, so this is exactly what the statistics add to the
    forward pass (bar the hook dispatch itself), measured inside the same pass as the forward:
    ``pass / (pass - hooks)`` estimates the ratio to the plain pass without comparing two runs,
    which is what a CPU shared with other jobs needs. Not meaningful on GPUs (asynchronous)."""

    def __init__(self):
        self.wall = 0.0
        self.cpu = 0.0

    def wrap(self, fn):
        import functools
        import time

        @functools.wraps(fn)
        def timed(*a, **k):
            c0, t0 = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.wall += time.perf_counter() - t0
                self.cpu += time.process_time() - c0

        return timed


@contextlib.contextmanager
def _env(name: str, value: str | None):
    """``$name`` set to ``value`` inside the block (nothing changed when ``value`` is empty), restored after."""
    if not value:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    name = "?"

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.runner = forward_for_stats(model)
        self.device = next(model.parameters()).device
        self.layers_path, self.layers = find_decoder_layers(model)

    def forward(self, batch, **kw):
        return self.runner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kw)

    def step(self, batch) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self):
        return None

    def reset(self) -> None:
        pass


class Plain(Variant):
    name = "plain"

    def step(self, batch):
        self.forward(batch)


class Eavss(Variant):
    """What ``collect_statistics`` does per batch (hooks attached only inside ``step``)."""

    name = "eavss"

    def __init__(self, model, pooled=True, block_influence=True, implementation=None, site="resid_post",
                 bi_implementation=None, fuse_silu=None, tiled=None):
        super().__init__(model)
        self.kw = dict(pooled=pooled, block_influence=block_influence, site=site)
        self.implementation = implementation
        self.bi_implementation = bi_implementation
        self.fuse_silu = fuse_silu
        self.tiled = tiled
        self.reset()

    def reset(self):
        with _env("EAVSS_FUSE_SILU", self.fuse_silu):  # read when the collector is made
            self.col = ActivationStatsCollector(self.model, rule=SparsityRule(), **self.kw)
        self.timer = HookTimer()

    def step(self, batch):
        import functools

        import eavss.stats.collector as collector_mod

        inner = collector_mod.reduce_activations_ext
        collector_mod.reduce_activations_ext = self.timer.wrap(inner)
        inner_bi = collector_mod.block_influence_sums
        bi = functools.partial(inner_bi, implementation=self.bi_implementation) if self.bi_implementation else inner_bi
        collector_mod.block_influence_sums = self.timer.wrap(bi)

        try:
            with _env("EAVSS_REDUCE", self.implementation), _env("EAVSS_TILED_CONFIG", self.tiled), self.col:
                self.col.set_batch(batch["attention_mask"].bool())
                self.forward(batch)
                self.col.check_finite(block=False)
        finally:
            collector_mod.reduce_activations_ext = inner
            collector_mod.block_influence_sums = inner_bi

    def finish(self):
        self.col.check_finite()
        return self.col.result()


# ---------------------------------------------------------------------------------------------
# the simple unfused reduction (eavss's first version), kept verbatim for comparison


@torch.no_grad()
def simple_reduce(act, mask, rule, layer_input=None, pooled=True):
    B, T, D = act.shape
    a = act.float()
    m = mask.to(device=a.device, dtype=torch.bool)
    var_t, mu_t = torch.var_mean(a, dim=-1, correction=0)
    finite_t = torch.isfinite(var_t)
    if rule.mode == "absolute":
        nz_t = (a.abs() < rule.epsilon).sum(-1)
    else:
        rms_t = torch.sqrt(var_t + mu_t * mu_t)
        nz_t = (a.abs() < (rule.tau * rms_t).unsqueeze(-1)).sum(-1)
    out = torch.zeros(B, NUM_FIELDS, dtype=torch.float64, device=a.device)
    zero = torch.zeros((), dtype=torch.float64, device=a.device)
    ok = m & finite_t

    def msum(x, sel=ok):
        return torch.where(sel, x.double(), zero).sum(dim=1)

    n_tok = m.sum(dim=1).double()
    out[:, F["n_tokens"]] = n_tok
    out[:, F["within_m2"]] = msum(var_t) * D
    out[:, F["sum_mean"]] = msum(mu_t)
    out[:, F["sum_mean_sq"]] = msum(mu_t * mu_t)
    out[:, F["near_zero"]] = msum(nz_t)
    out[:, F["nonfinite"]] = (m & ~finite_t).sum(dim=1).double()
    out[:, F["n_seqs"]] = (n_tok > 0).double()
    if layer_input is not None:
        x = layer_input.float()
        dot = (x * a).sum(-1)
        nx = x.pow(2).sum(-1)
        na = (var_t + mu_t * mu_t) * D
        cos = dot / torch.sqrt(nx * na).clamp_min(1e-30)
        out[:, F["bi_sum"]] = msum(1.0 - cos)
    if pooled and D > 1:
        pooled_vec = torch.where(ok.unsqueeze(-1), a, 0.0).sum(dim=1)
        pooled_vec = pooled_vec / ok.sum(1, keepdim=True).clamp_min(1).to(a.dtype)
        pv = pooled_vec.double().var(dim=-1, correction=1)
        out[:, F["pooled_var_sum"]] = torch.where(n_tok > 0, pv, zero)
    return out


class _Hooked(Variant):
    """Base for variants that hook every decoder layer inside ``step``."""

    def __init__(self, model):
        super().__init__(model)
        self.mask = None
        self.acc = None

    def reset(self):
        self.acc = None
        self.timer = HookTimer()

    def hook(self, index, module, args, kwargs, output):  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, batch):
        self.mask = batch["attention_mask"].bool()
        timed = self.timer.wrap(self.hook)
        hs = [layer.register_forward_hook(lambda mod, a, k, o, i=i: timed(i, mod, a, k, o), with_kwargs=True)
              for i, layer in enumerate(self.layers)]
        try:
            self.forward(batch)
            self.after_batch()
        finally:
            for h in hs:
                h.remove()

    def after_batch(self):
        pass

    def _add(self, index, red):
        if self.acc is None:
            self.acc = torch.zeros(len(self.layers), NUM_FIELDS, dtype=torch.float64, device=red.device)
        self.acc[index] += red.sum(0)

    def finish(self):
        return None if self.acc is None else self.acc.cpu()


class Simple(_Hooked):
    name = "simple"

    def __init__(self, model):
        super().__init__(model)
        self.rule = SparsityRule()

    def hook(self, index, module, args, kwargs, output):
        act = output_tensor(output)
        self._add(index, simple_reduce(act, self.mask, self.rule, input_tensor(args, kwargs), True))

    def after_batch(self):
        if self.acc is not None:  # the first version's check_finite: one sync per batch
            bool((self.acc[:, F["nonfinite"]] > 0).any())


class Official(_Hooked):
    """Per-layer hooks that copy each output to the host and reduce there, in float32."""

    name = "official"

    def __init__(self, model, epsilon: float = 1e-5):
        super().__init__(model)
        self.eps = epsilon
        self.host: list[list[float]] = []

    def reset(self):
        self.host = [[0.0, 0.0, 0.0, 0.0] for _ in self.layers]
        self.timer = HookTimer()

    def hook(self, index, module, args, kwargs, output):
        if not self.host:
            self.host = [[0.0, 0.0, 0.0, 0.0] for _ in self.layers]
        h = output_tensor(output).detach().to("cpu", copy=True).float()  # (B, T, D) on the host
        m = self.mask.to("cpu")
        w = m.unsqueeze(-1).float()
        pooled = (h * w).sum(1) / w.sum(1).clamp_min(1)  # mean-pool over tokens
        rec = self.host[index]
        rec[0] += float(pooled.var(dim=-1).sum())  # official variance: per-sequence var of the pooled vector
        sel = h[m]  # (n, D) real tokens
        rec[1] += float((sel.abs() < self.eps).sum())  # official sparsity numerator
        rec[2] += float(sel.numel())
        rec[3] += float(sel.var())

    def finish(self):
        return self.host


class HiddenStates(Variant):
    """``output_hidden_states=True``: all L+1 hidden states stored, then reduced with eavss's reduction."""

    name = "hidden_states"

    def __init__(self, model):
        super().__init__(model)
        self.rule = SparsityRule()
        self.acc = None

    def reset(self):
        self.acc = None

    def step(self, batch):
        out = self.forward(batch, output_hidden_states=True)
        hs = out.hidden_states
        mask = batch["attention_mask"].bool()
        L = len(hs) - 1
        if self.acc is None:
            self.acc = torch.zeros(L, NUM_FIELDS, dtype=torch.float64, device=hs[-1].device)
        sq = None
        for i in range(1, L + 1):
            red, sq = reduce_activations_ext(hs[i], mask, self.rule, layer_input=hs[i - 1], pooled=True, input_sq=sq)
            self.acc[i - 1] += red.sum(0)
        del out, hs

    def finish(self):
        return None if self.acc is None else self.acc.cpu()


class BIMatrix(_Hooked):
    """ShortGPT block influence from the full similarity matrix (its diagonal)."""

    name = "bi_matrix"

    def hook(self, index, module, args, kwargs, output):
        a = output_tensor(output)
        x = input_tensor(args, kwargs)
        B, T, D = a.shape
        xn = Fn.normalize(x.reshape(B * T, D), dim=-1)
        an = Fn.normalize(a.reshape(B * T, D), dim=-1)
        sim = xn @ an.transpose(0, 1)  # (B*T, B*T)
        cos = torch.diagonal(sim).float()
        bi = torch.where(self.mask.reshape(-1), 1.0 - cos, 0.0).sum()
        if self.acc is None:
            self.acc = torch.zeros(len(self.layers), dtype=torch.float64, device=a.device)
        self.acc[index] += bi.double()


VARIANTS = {
    "plain": Plain,
    "eavss": Eavss,
    "eavss_eager": lambda m: Eavss(m, implementation="eager"),
    "simple": Simple,
    "official": Official,
    "hidden_states": HiddenStates,
    "bi_matrix": BIMatrix,
    "bi_rowwise": lambda m: Eavss(m, pooled=False, block_influence=True),
}
for _site in ("resid_delta", "mlp_act"):
    VARIANTS[f"eavss_{_site}"] = lambda m, s=_site: Eavss(m, site=s)
    VARIANTS[f"eavss_{_site}_nobi"] = lambda m, s=_site: Eavss(m, site=s, block_influence=False)
    VARIANTS[f"eavss_{_site}_eagerbi"] = lambda m, s=_site: Eavss(m, site=s, bi_implementation="eager")
    VARIANTS[f"eavss_{_site}_eager"] = lambda m, s=_site: Eavss(m, site=s, implementation="eager")
VARIANTS["eavss_mlp_act_hook"] = lambda m: Eavss(m, site="mlp_act", fuse_silu="hook")  # SiLU not fused: the hook
VARIANTS["eavss_mlp_act_nobi_hook"] = lambda m: Eavss(m, site="mlp_act", block_influence=False, fuse_silu="hook")
for _t, _v in (("rowkernel", "off"), ("tiled", "on")):  # the wide-row kernel choice (TILED_MIN_D), both ways
    VARIANTS[f"eavss_mlp_act_{_t}"] = lambda m, v=_v: Eavss(m, site="mlp_act", tiled=v)
    VARIANTS[f"eavss_mlp_act_nobi_{_t}"] = lambda m, v=_v: Eavss(m, site="mlp_act", block_influence=False, tiled=v)
VARIANTS["eavss_mlp_act_gated"] = lambda m: Eavss(m, site="mlp_act", fuse_silu="mlp")  # the gated MLP path
VARIANTS["eavss_mlp_act_nobi_gated"] = lambda m: Eavss(m, site="mlp_act", block_influence=False, fuse_silu="mlp")
VARIANTS["eavss_mlp_act_nopool"] = lambda m: Eavss(m, site="mlp_act", pooled=False)  # what the pooled variance costs
