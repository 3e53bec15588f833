"""Data-parallel statistics: 2 CPU ranks under gloo give the single-process result."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from eavss import distributed as edist
from eavss.data.calibration import make_batches
from eavss.stats import collect_statistics
from eavss.testing.tiny import tiny_model


def _seqs(n, seed=0, vocab=500, lo=3, hi=30):
    g = np.random.default_rng(seed)
    return [g.integers(5, vocab, size=int(g.integers(lo, hi))).tolist() for _ in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_args(tmp: Path) -> list[str]:
    return ["score", "--model", str(tmp / "model"), "--calib", f"text:{tmp / 'cal.txt'}", "--num-samples", "16",
            "--max-length", "24", "--calib-batch-size", "3", "--no-progress", "--threads", "1"]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank, as torchrun starts it (the same environment variables)."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TOKENIZERS_PARALLELISM": "false"})
    torch.set_num_threads(1)
    assert edist.init_from_env("cpu", timeout_s=60)
    try:
        model = tiny_model("llama", seed=1)
        results = {}
        # 7 batches over 2 ranks (4 + 3), and 1 batch (rank 1 gets none: it contributes zeros)
        for name, n_seq in (("seven", 13), ("one", 2)):
            batches = make_batches(_seqs(n_seq, seed=2), 2, 0)
            stats, info = collect_statistics(model, edist.shard(batches), progress=False, distributed=True,
                                             group_names=("all",))
            results[name] = {"sums": stats.sums.tolist(), "width": stats.width.tolist(), "info": info}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        # `eavss score` as under `torchrun --nproc_per_node=2 -m eavss.cli score ...`: rank 0 writes
        from eavss.cli import main

        assert main(_cli_args(Path(out_dir)) + ["--out", str(Path(out_dir) / "two")]) == 0
    finally:
        edist.shutdown()


def test_shard_is_round_robin_and_complete():
    items = list(range(11))
    parts = [edist.shard(items, r, 3) for r in range(3)]
    assert parts[0] == [0, 3, 6, 9] and parts[2] == [2, 5, 8]
    assert sorted(sum(parts, [])) == items
    assert edist.shard(items) == items  # single process: everything
    assert not edist.is_distributed() and edist.is_main() and edist.world_size() == 1


def test_two_gloo_ranks_equal_single_process(tmp_path):
    """2 CPU processes under gloo (torchrun's environment): ``collect_statistics(distributed=True)``
    and ``eavss score`` give the single-process statistics; rank 0 alone writes."""
    import torch.multiprocessing as mp

    from eavss.cli import main
    from eavss.models.surgery import save_model
    from eavss.testing.tiny import TINY_TEXT, tiny_loaded

    lm = tiny_loaded("llama", seed=3)
    save_model(lm.model, lm.tokenizer, tmp_path / "model")
    (tmp_path / "cal.txt").write_text("\n".join(ln for ln in TINY_TEXT.splitlines() if ln.strip()))

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    model = tiny_model("llama", seed=1)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: the same float32 forward, bit for bit
    try:
        singles = {name: collect_statistics(model, make_batches(_seqs(n, seed=2), 2, 0), progress=False)
                   for name, n in (("seven", 13), ("one", 2))}
        assert main(_cli_args(tmp_path) + ["--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    for name, (single, info1) in singles.items():
        for r in ranks:  # every rank returns the whole set's statistics
            np.testing.assert_allclose(np.asarray(r[name]["sums"]), single.sums, rtol=1e-12, atol=1e-12)
            assert r[name]["width"] == single.width.tolist()
            info = r[name]["info"]
            assert info["num_tokens"] == info1["num_tokens"] and info["num_sequences"] == info1["num_sequences"]
            assert info["num_batches"] == info1["num_batches"] and info["world_size"] == 2

    two = json.loads((tmp_path / "two" / "report.json").read_text())
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    np.testing.assert_allclose(np.asarray(two["statistics"]["sums"]["sums"]), np.asarray(one["statistics"]["sums"]["sums"]),
                               rtol=1e-12, atol=1e-12)
    assert two["scores"]["avss"]["score"] == pytest.approx(one["scores"]["avss"]["score"], rel=1e-9)
    assert two["calibration"]["world_size"] == 2
    assert two["calibration"]["num_tokens"] == one["calibration"]["num_tokens"]


def test_dispatched_model_keeps_hooks_working():
    """A model dispatched by accelerate (what device_map="auto" does; here every layer offloaded to
    the CPU, weights on the meta device until their layer runs) gives the plain model's statistics:
    accelerate's hooks neither hide the layers nor move their outputs away from ours."""
    import copy

    from accelerate import dispatch_model

    model = tiny_model("qwen2", seed=4)
    dm = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
          **{f"model.layers.{i}": "cpu" for i in range(len(model.model.layers))}}
    mapped = dispatch_model(copy.deepcopy(model), device_map=dm, main_device="cpu", force_hooks=True)
    assert hasattr(mapped.model.layers[0], "_hf_hook")
    batches = make_batches(_seqs(5, seed=5), 2, 0)
    a, _ = collect_statistics(model, batches, progress=False)
    b, _ = collect_statistics(mapped, batches, progress=False)
    np.testing.assert_allclose(b.sums, a.sums, rtol=1e-6, atol=1e-8)
