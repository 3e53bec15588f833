"""Slow, obviously correct reference statistics: float64 model, one unpadded sequence at a time,
every activation materialised and reduced with numpy."""

from __future__ import annotations

import copy

import numpy as np
import torch

from eavss.models.layers import find_decoder_layers


@torch.no_grad()
def reference_activations(model, sequences: list[list[int]], masks: list[list[bool]] | None = None):
    """Per layer: (list of (T_i, D) float64 outputs, list of (T_i, D) float64 inputs) per sequence,
    restricted to the masked positions of each sequence."""
    m64 = copy.deepcopy(model).double().eval()
    _, layers = find_decoder_layers(m64)
    L = len(layers)
    outs = [[] for _ in range(L)]
    ins = [[] for _ in range(L)]
    cur = {}

    def mk(i):
        def hook(mod, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            o = output if isinstance(output, torch.Tensor) else output[0]
            cur[i] = (x[0].numpy().copy(), o[0].numpy().copy())
        return hook

    hs = [layer.register_forward_hook(mk(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for n, seq in enumerate(sequences):
            ids = torch.tensor([seq])
            m64(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            sel = np.ones(len(seq), bool) if masks is None else np.asarray(masks[n], bool)
            for i in range(L):
                x, o = cur[i]
                ins[i].append(x[sel])
                outs[i].append(o[sel])
    finally:
        for h in hs:
            h.remove()
    return outs, ins


def reference_stats(outs, ins, mode="relative", tau=0.01, eps=1e-5):
    """dict of (L,) arrays: element_variance, token_variance, pooled_variance, sparsity, block_influence."""
    res = {k: [] for k in ("element_variance", "token_variance", "pooled_variance", "sparsity", "block_influence", "n_tokens")}
    for o_list, i_list in zip(outs, ins):
        o_list = [o for o in o_list if len(o)]
        i_list = [x for x in i_list if len(x)]
        allo = np.concatenate(o_list, 0)
        alli = np.concatenate(i_list, 0)
        res["n_tokens"].append(allo.shape[0])
        res["element_variance"].append(allo.var())
        res["token_variance"].append(allo.var(axis=1).mean())
        res["pooled_variance"].append(np.mean([o.mean(0).var(ddof=1) for o in o_list]))
        if mode == "absolute":
            nz = (np.abs(allo) < eps).sum()
        else:
            rms = np.sqrt((allo ** 2).mean(axis=1, keepdims=True))
            nz = (np.abs(allo) < tau * rms).sum()
        res["sparsity"].append(nz / allo.size)
        cos = (allo * alli).sum(1) / np.sqrt((allo ** 2).sum(1) * (alli ** 2).sum(1))
        res["block_influence"].append(np.mean(1 - cos))
    return {k: np.asarray(v) for k, v in res.items()}


def reference_drop_massive(outs, ins, batches: list[list[int]], k: float):
    """Massive-token exclusion, the slow way: per layer and per batch (the indices of the sequences
    that share a batch in the engine run), token ``t`` is massive when ``sqrt(mean_d a_t^2)`` exceeds
    ``k`` times the lower median (the ``ceil(n/2)``-th smallest) of that RMS over the batch's tokens.

    Returns ``(outs, ins, n_massive (L,), margin)`` with the massive tokens removed from every
    sequence; ``margin`` is the smallest ``|rms / (k * median) - 1|`` seen, to check that float32 vs
    float64 round-off cannot flip a token across the threshold."""
    new_outs, new_ins, n_massive, margin = [], [], [], np.inf
    for o_list, i_list in zip(outs, ins):
        keep_o, keep_i = [None] * len(o_list), [None] * len(o_list)
        n = 0
        for batch in batches:
            rms = [np.sqrt((o_list[s] ** 2).mean(axis=1)) for s in batch]
            allr = np.sort(np.concatenate(rms))
            med = allr[(len(allr) - 1) // 2]
            margin = min(margin, float(np.min(np.abs(allr / (k * med) - 1.0))))
            for s, r in zip(batch, rms):
                big = r > k * med
                n += int(big.sum())
                keep_o[s], keep_i[s] = o_list[s][~big], i_list[s][~big]
        new_outs.append(keep_o)
        new_ins.append(keep_i)
        n_massive.append(n)
    return new_outs, new_ins, np.asarray(n_massive), margin
