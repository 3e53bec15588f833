"""The benchmark scripts run end to end (tiny model, CPU) and their variants compute what they claim."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def test_stats_overhead_runs_every_variant(tmp_path):
    import stats_overhead

    out = tmp_path / "r.json"
    rc = stats_overhead.main(["--model", "tiny:llama", "--batch-size", "2", "--seq-len", "16", "--num-batches", "2",
                              "--repeats", "1", "--warmup", "0", "--variants",
                              "plain,eavss,simple,official,hidden_states,bi_matrix,bi_rowwise", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["variants"]) == {"plain", "eavss", "simple", "official", "hidden_states", "bi_matrix", "bi_rowwise"}
    for v in res["variants"].values():
        assert v["median_seconds"] > 0 and v["ratio_to_plain"] > 0
    assert "in_pass" in res["variants"]["eavss"]
    # the same statistics, three ways: eavss hooks, the simple reduction, stored hidden states
    for name, rel in res["cross_check_max_rel_diff"].items():
        assert max(rel.values()) < 1e-4, (name, rel)


def test_bi_matrix_diagonal_equals_rowwise_block_influence():
    from baselines import BIMatrix, Eavss
    from stats_overhead import run_pass

    from eavss.stats.accumulators import F
    from eavss.testing.tiny import tiny_model

    model = tiny_model("llama", seed=2)
    ids = torch.randint(5, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        bm, rw = BIMatrix(model), Eavss(model)
        run_pass(bm, [batch], "cpu")
        run_pass(rw, [batch], "cpu")
    np.testing.assert_allclose(bm.acc.numpy(), rw.col.accumulator[:, 0, F["bi_sum"]].numpy(), rtol=1e-4, atol=1e-6)
