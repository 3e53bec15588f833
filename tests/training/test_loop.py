"""eavss.training.loop: bit-identical resume, bf16 with float32 optimiser state, schedule, validation."""

from __future__ import annotations

import pytest
import torch

from eavss.errors import EavssError
from eavss.testing import tiny_loaded
from eavss.training.contrastive import contrastive_loss_fn, lm_loss_fn
from eavss.training.loop import epoch_generator, load_checkpoint, make_batches_fn, train
from eavss.training.pairs import QARecord, build_contrastive_examples, collate_contrastive, tokenize_examples
from eavss.training.params import select_trainable

ITEMS = [
    QARecord("q1", "What is the capital of France?", ["Paris"], ["London", "Rome"]),
    QARecord("q2", "How many legs does a spider have?", ["eight"], ["six", "ten", "four"]),
    QARecord("q3", "Who wrote Hamlet?", ["William Shakespeare"], ["Charles Dickens"]),
    QARecord("q4", "What is two plus three?", ["five"], ["six", "four"]),
    QARecord("q5", "Where does the sun rise?", ["in the east"], ["in the west"]),
]


def _setup(method="lora", arch="llama", layers=(1, 2)):
    """A fresh tiny model made trainable and a contrastive batches_fn (5 examples, batch 2: 3 micro-batches)."""
    lm = tiny_loaded(arch, num_layers=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)  # peft draws LoRA A from the global RNG: same init in every run
        model, _ = select_trainable(lm.model, list(layers), method=method, lora_r=4, lora_dropout=0.1)
    examples, _ = build_contrastive_examples(ITEMS)
    tok = tokenize_examples(examples, lm.tokenizer)
    pad = lm.tokenizer.pad_token_id
    return model, make_batches_fn(tok, 2, lambda xs: collate_contrastive(xs, pad)), contrastive_loss_fn(list(layers))


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Stop(Exception):
    pass


def _stop_after(k):
    def cb(state):
        if state["step"] == k:
            raise Stop

    return cb


KW = dict(lr=5e-3, grad_accum=2, warmup_steps=1, seed=7, progress=False)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_after_interruption_is_bit_identical(method, tmp_path):
    model_a, fn, loss = _setup(method)
    ref = train(model_a, fn, loss, steps=5, **KW)  # 3 micro-batches / epoch, windows 2+1: crosses epochs
    ref_params = _params(model_a)

    model_b, fn, loss = _setup(method)
    with pytest.raises(Stop):
        train(model_b, fn, loss, steps=5, checkpoint_dir=tmp_path, checkpoint_every_steps=1,
              callback=_stop_after(3), **KW)
    assert load_checkpoint(tmp_path)["step"] == 3
    model_c, fn, loss = _setup(method)  # a fresh process would start from the same untrained model
    res = train(model_c, fn, loss, steps=5, checkpoint_dir=tmp_path, checkpoint_every_steps=1, **KW)
    assert res["resumed_from_step"] == 3 and res["steps"] == 5
    assert res["loss_history"] == ref["loss_history"] and res["lr_history"] == ref["lr_history"]
    got = _params(model_c)
    assert got.keys() == ref_params.keys()
    for n in ref_params:
        assert torch.equal(got[n], ref_params[n]), n
    # a finished run resumes to a no-op
    again = train(model_c, fn, loss, steps=5, checkpoint_dir=tmp_path, **KW)
    assert again["resumed_from_step"] == 5 and again["tokens"] == 0


def test_resume_at_epoch_checkpoint(tmp_path):
    model_a, fn, loss = _setup("full")
    train(model_a, fn, loss, epochs=3, **KW)
    model_b, fn, loss = _setup("full")
    with pytest.raises(Stop):  # 2 steps per epoch: the step-4 callback raises after epoch 2's checkpoint
        train(model_b, fn, loss, epochs=3, checkpoint_dir=tmp_path, callback=_stop_after(4), **KW)
    ckpt = load_checkpoint(tmp_path)
    assert (ckpt["step"], ckpt["epoch"], ckpt["micro_pos"]) == (2, 1, 0)
    model_c, fn, loss = _setup("full")
    res = train(model_c, fn, loss, epochs=3, checkpoint_dir=tmp_path, **KW)
    assert res["resumed_from_step"] == 2 and res["epochs_completed"] == 3
    a, c = _params(model_a), _params(model_c)
    assert all(torch.equal(a[n], c[n]) for n in a)


def test_checkpoint_settings_must_match(tmp_path):
    model, fn, loss = _setup("full")
    train(model, fn, loss, steps=1, checkpoint_dir=tmp_path, **KW)
    with pytest.raises(EavssError, match="other settings.*lr"):
        train(model, fn, loss, steps=1, checkpoint_dir=tmp_path, **dict(KW, lr=1e-3))
    res = train(model, fn, loss, steps=1, checkpoint_dir=tmp_path, resume=False, **dict(KW, lr=1e-3))
    assert res["resumed_from_step"] is None


@pytest.mark.parametrize("method", ["full", "lora"])
def test_bfloat16_trains_with_float32_masters_and_optimiser_state(method, tmp_path):
    model, fn, loss = _setup(method, layers=(1,))
    res = train(model, fn, loss, steps=3, dtype="bfloat16", checkpoint_dir=tmp_path, **dict(KW, lr=1e-2))
    assert res["dtype"] == "bfloat16" and res["master_dtype"] == "float32"
    assert all(torch.isfinite(torch.tensor(res["loss_history"])))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    ckpt = load_checkpoint(tmp_path)
    assert all(t.dtype == torch.float32 for t in ckpt["params"].values())
    states = list(ckpt["optimizer"]["state"].values())
    assert states and all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32 for s in states)
    named = dict(model.named_parameters())
    for n, master in ckpt["params"].items():
        assert torch.equal(named[n].detach(), master.to(torch.bfloat16)), n  # weights = rounded masters
    # masters keep updates smaller than bf16 resolution: they differ from their bf16 rounding somewhere
    assert any(not torch.equal(m, m.to(torch.bfloat16).float()) for m in ckpt["params"].values())


def test_same_seed_same_result_and_seeded_data_order():
    a, fn, loss = _setup("full")
    ra = train(a, fn, loss, steps=2, **KW)
    b, fn, loss = _setup("full")
    rb = train(b, fn, loss, steps=2, **KW)
    assert ra["loss_history"] == rb["loss_history"]
    pa, pb = _params(a), _params(b)
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    orders = {tuple(torch.randperm(10, generator=epoch_generator(s, e)).tolist()) for s in (0, 1) for e in (0, 1)}
    assert len(orders) == 4
    # the caller's RNG is not touched
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    train(a, fn, loss, steps=1, **KW)
    assert torch.equal(torch.rand(3), expected)


def test_schedule_and_result_fields():
    model, fn, loss = _setup("full")
    res = train(model, fn, loss, steps=4, lr=1e-3, warmup_steps=2, schedule="linear", grad_accum=1, progress=False)
    # warm-up 1/2, 2/2, then linear decay over the remaining 2 steps: 1 - 0/2, 1 - 1/2
    assert res["lr_history"] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
    assert set(res["metrics_history"]) == {"info_nce", "lm"} and len(res["metrics_history"]["lm"]) == 4
    assert res["tokens"] > 0 and res["tokens_per_second"] > 0 and res["peak_memory_kind"] == "process_max_rss"
    assert res["peak_memory_bytes"] > 0 and res["epochs_completed"] == 1


def test_validation_errors():
    model, fn, loss = _setup("full")
    with pytest.raises(EavssError, match="exactly one"):
        train(model, fn, loss, steps=1, epochs=1, progress=False)
    with pytest.raises(EavssError, match="exactly one"):
        train(model, fn, loss, progress=False)
    with pytest.raises(EavssError, match="grad_accum"):
        train(model, fn, loss, steps=1, grad_accum=0, progress=False)
    with pytest.raises(EavssError, match="dtype"):
        train(model, fn, loss, steps=1, dtype="float16", progress=False)
    with pytest.raises(EavssError, match="schedule"):
        train(model, fn, loss, steps=1, schedule="step", progress=False)
    with pytest.raises(EavssError, match="no batch"):
        train(model, lambda e, g: [], loss, steps=1, progress=False)
    with pytest.raises(EavssError, match="loss is nan"):
        train(model, fn, lambda m, b: loss(m, b)["loss"] * float("nan"), steps=1, progress=False)
    frozen = tiny_loaded("llama", num_layers=2).model.requires_grad_(False)
    with pytest.raises(EavssError, match="no trainable parameter"):
        train(frozen, fn, lm_loss_fn(), steps=1, progress=False)
    with pytest.raises(EavssError, match="same number"):
        train(model, lambda e, g: fn(e, g)[: 3 - e], loss, epochs=2, progress=False)


def test_healing_a_pruned_model_with_lm_loss():
    from eavss.data.calibration import make_batches
    from eavss.models.surgery import remove_layers

    lm = tiny_loaded("llama", num_layers=5)
    remove_layers(lm.model, [2])  # old layers 1 and 3 are now 1 and 2: the neighbours of the gap
    model, _ = select_trainable(lm.model, [1, 2], method="full")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    texts = ["The cat sat on the mat.", "Water boils at 100 degrees.", "The sun rises in the east.",
             "A spider has eight legs."]
    seqs = [lm.tokenizer(t)["input_ids"] for t in texts]
    batches = make_batches(seqs, 2, lm.tokenizer.pad_token_id)
    res = train(model, make_batches_fn(batches, 1, lambda xs: xs[0]), lm_loss_fn(), epochs=4, lr=3e-3, progress=False)
    assert res["loss_history"][-1] < res["loss_history"][0]
    changed = {n.split(".")[2] for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {"1", "2"}
