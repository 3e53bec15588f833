"""Healing (eavss.training.heal and `eavss heal`): only the trainable parameters change, the healed
folder reloads with equal logits, runs repeat, and bad input is one line with nothing written."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from eavss.cli import main
from eavss.errors import EavssError


def _batches(tok, n=8, max_len=24, batch_size=4):
    from eavss.data.calibration import make_batches
    from eavss.testing.tiny import TINY_TEXT

    lines = [ln for ln in TINY_TEXT.splitlines() if ln.strip()][:n]
    return make_batches([tok(ln)["input_ids"][:max_len] for ln in lines], batch_size, tok.pad_token_id)


def _changed(before: dict, model) -> set[str]:
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    return {n for n in before if not torch.equal(before[n], after[n].detach())}


def test_full_healing_changes_only_the_chosen_layers():
    from eavss.models.surgery import remove_layers
    from eavss.testing import tiny_loaded
    from eavss.training.heal import heal

    lm = tiny_loaded("llama", seed=2, num_layers=5)
    remove_layers(lm.model, [1, 3])  # a pruned model: 3 layers left
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    b = _batches(lm.tokenizer)
    healed, s = heal(lm.model, b, steps=3, lr=1e-3, method="full", layers=[1], progress=False)
    changed = _changed(before, healed)
    assert changed and all(n.startswith("model.layers.1.") for n in changed)
    assert s["method"] == "full" and s["layers"] == [1] and s["train"]["steps"] == 3
    assert s["trainable_parameters"] == sum(p.numel() for n, p in healed.named_parameters() if n.startswith("model.layers.1."))
    assert all(p.requires_grad for p in healed.parameters()) and not healed.training


def test_lora_merged_changes_only_the_targeted_modules_and_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    from eavss.models.surgery import save_model
    from eavss.testing import tiny_loaded
    from eavss.training.heal import heal
    from eavss.training.params import default_target_modules

    lm = tiny_loaded("llama", seed=3, num_layers=4)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    targets = default_target_modules(lm.model)
    b = _batches(lm.tokenizer)
    healed, s = heal(copy.deepcopy(lm.model), b[:1], steps=3, lr=1e-2, eval_batches=b[1:], progress=False)
    targeted = {f"model.layers.{i}.{t}.weight" for i in range(4) for t in targets}
    assert _changed(before, healed) == targeted  # every adapted weight moved; norms, embeddings, head did not
    assert type(healed).__module__.startswith("transformers.") and s["adapted_modules"] == len(targeted)
    assert s["loss_before"] is not None and s["loss_after"] is not None

    save_model(healed, lm.tokenizer, tmp_path / "healed")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "healed")  # plain transformers, no peft, no custom code
    ids = b[0]["input_ids"]
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, healed(input_ids=ids).logits)


def test_healing_repeats_with_the_seed():
    from eavss.testing import tiny_loaded
    from eavss.training.heal import heal

    lm = tiny_loaded("llama", seed=4, num_layers=3)
    b = _batches(lm.tokenizer)
    runs = [heal(copy.deepcopy(lm.model), b, steps=3, lr=1e-2, seed=5, progress=False) for _ in range(2)]
    (m1, s1), (m2, s2) = runs
    assert s1["train"]["loss_history"] == s2["train"]["loss_history"]
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def test_bfloat16_healing_rounds_the_frozen_weights_once_and_returns_float32():
    from eavss.testing import tiny_loaded
    from eavss.training.heal import heal

    lm = tiny_loaded("llama", seed=5, num_layers=3)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    healed, s = heal(lm.model, _batches(lm.tokenizer), steps=2, lr=1e-3, method="full", layers=[0], dtype="bfloat16",
                     progress=False)
    assert s["dtype"] == "bfloat16" and s["model_dtype"] == "float32"
    for n, p in healed.named_parameters():
        assert p.dtype == torch.float32
        if not n.startswith("model.layers.0."):
            assert torch.equal(p, before[n].to(torch.bfloat16).to(torch.float32)), n


def test_bad_healing_input_is_one_line():
    from eavss.testing import tiny_loaded
    from eavss.training.heal import heal

    lm = tiny_loaded("llama", seed=0, num_layers=2)
    with pytest.raises(EavssError, match="no healing batches"):
        heal(lm.model, [], steps=1)
    with pytest.raises(EavssError, match="float32 model"):
        heal(copy.deepcopy(lm.model).to(torch.bfloat16), _batches(lm.tokenizer), steps=1)
    with pytest.raises(EavssError, match="out of range"):
        heal(lm.model, _batches(lm.tokenizer), steps=1, method="full", layers=[5])


# ------------------------------------------------------------------------------ the command


@pytest.fixture
def folder(tmp_path):
    from eavss.models.surgery import remove_layers, save_model
    from eavss.testing import tiny_loaded
    from eavss.testing.tiny import TINY_TEXT

    lm = tiny_loaded("llama", seed=6, num_layers=4)
    remove_layers(lm.model, [2])
    save_model(lm.model, lm.tokenizer, tmp_path / "pruned")
    text = tmp_path / "heal.txt"
    text.write_text("\n".join(ln for ln in TINY_TEXT.splitlines() if ln.strip()))
    return tmp_path / "pruned", text


_TINY_HEAL = ["heal.num_samples=6", "heal.max_length=24", "heal.held_out=2", "heal.packing=documents",
              "heal.batch_size=2", "--heal-steps", "2", "--threads", "1", "--no-progress"]


def test_heal_command_writes_a_plain_healed_folder(folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from eavss.data.calibration import load_calibration_texts
    from eavss.models.loading import load_model
    from eavss.recipes.heal import HealSection, heal_batches
    from eavss.training.heal import heal

    pruned, text = folder
    out = tmp_path / "healed"
    assert main(["heal", "--model", str(pruned), "--heal-data", f"text:{text}", "--out", str(out), *_TINY_HEAL]) == 0
    rep = json.loads((out / "eavss_healing.json").read_text())
    assert rep["kind"] == "heal" and rep["pruning"]["removed_layers"] == [2]
    h = rep["healing"]
    assert h["method"] == "lora" and h["layers"] == [0, 1, 2] and h["train"]["steps"] == 2
    assert h["text"]["disjoint_from_evaluation"] is None and h["text"]["held_out_sequences"] == 2
    assert "held-out loss" in (out / "eavss_healing.md").read_text()

    # the library on the same data and settings gives the same weights
    lm = load_model(str(pruned))
    h_cfg = HealSection(dataset=f"text:{text}", num_samples=6, max_length=24, held_out=2, packing="documents",
                        batch_size=2, steps=2)
    train, held, _ = heal_batches(lm.tokenizer, load_calibration_texts(f"text:{text}"), h_cfg, 0)
    ref, _ = heal(lm.model, train, steps=2, eval_batches=held, progress=False)
    again = AutoModelForCausalLM.from_pretrained(out)
    assert again.config.num_hidden_layers == 3 and again.config.eavss_removed_layers == [2]
    ref_params = dict(ref.named_parameters())
    assert all(torch.equal(p, ref_params[n]) for n, p in again.named_parameters())


@pytest.mark.parametrize("argv, needle", [
    (["--model", "NOTAMODEL"], "has no config.json"),
    ([], "needs the model to heal"),
    (["--model", "PRUNED", "--heal-data", "ptb"], "ptb and sst2 are evaluation domains"),
    (["--model", "PRUNED", "--heal-data", "text:DATAFILE"], "inside the data folder"),
    (["--model", "PRUNED", "--heal-method", "dora"], "heal.method='dora' is not valid"),
])
def test_heal_bad_input_is_one_line_and_writes_nothing(folder, tmp_path, capsys, argv, needle):
    from eavss.data.paths import resolve_data_dir

    pruned, _ = folder
    bad = tmp_path / "notamodel"
    bad.mkdir()
    (bad / "readme.txt").write_text("not a model")
    data_file = resolve_data_dir() / "wikitext2" / "github_pytorch-examples" / "valid.txt"
    subs = {"NOTAMODEL": str(bad), "PRUNED": str(pruned), "text:DATAFILE": f"text:{data_file}"}
    out = tmp_path / "o"
    rc = main(["heal", *[subs.get(a, a) for a in argv], "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("eavss: error: ") and "\n" not in err and needle in err, err
    assert not out.exists()
