"""eavss.training.params: only the selected layers train (full and LoRA), merged LoRA saves as a plain model."""

from __future__ import annotations

import pytest
import torch

from eavss.errors import EavssError
from eavss.models.layers import find_decoder_layers
from eavss.models.surgery import save_model
from eavss.testing import tiny_loaded
from eavss.training.contrastive import lm_loss_fn
from eavss.training.loop import train
from eavss.training.params import default_target_modules, merge_for_save, select_trainable

ARCHS = ["llama", "gemma3", "gpt2"]
LAYERS = [1, 2]


def _batches(tokenizer):
    texts = ["The cat sat on the mat and the dog slept by the door.",
             "Question: What is the capital of France? Answer: Paris.",
             "Water boils at 100 degrees Celsius at sea level."]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return lambda epoch, gen: [batch]


def _layer_index(name: str, path: str) -> int | None:
    prefix = path + "."
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix):].split(".")[0])


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _check_only_selected_changed(before, model, layers):
    path, _ = find_decoder_layers(model)
    changed = set()
    for n, p in model.named_parameters():
        if torch.equal(before[n], p.detach()):
            continue
        changed.add(n)
        assert _layer_index(n, path) in layers, f"{n} changed but is outside layers {layers}"
    touched = {_layer_index(n, path) for n in changed}
    assert touched == set(layers), f"layers changed: {touched}"


@pytest.mark.parametrize("arch", ARCHS)
def test_full_only_selected_layers_change(arch):
    lm = tiny_loaded(arch, num_layers=4)
    before = _snapshot(lm.model)
    model, summary = select_trainable(lm.model, [2, 1], method="full")
    assert model is lm.model and summary["layers"] == LAYERS
    path = summary["layers_path"]
    assert summary["trainable_names"] and all(_layer_index(n, path) in LAYERS for n in summary["trainable_names"])
    assert summary["trainable_parameters"] == sum(p.numel() for i in LAYERS for p in find_decoder_layers(model)[1][i].parameters())
    train(model, _batches(lm.tokenizer), lm_loss_fn(), steps=3, lr=1e-2, progress=False)
    _check_only_selected_changed(before, model, LAYERS)


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_only_selected_layers_change_and_merged_model_reloads(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    lm = tiny_loaded(arch, num_layers=4)
    before = _snapshot(lm.model)
    model, summary = select_trainable(lm.model, LAYERS, method="lora", lora_r=4, lora_alpha=8)
    assert type(model).__module__.startswith("peft.")
    assert summary["adapted_modules"] and summary["peft_version"]
    path = summary["layers_path"]
    assert {_layer_index(n, path) for n in summary["adapted_modules"]} == set(LAYERS)
    assert all("lora_" in n for n in summary["trainable_names"])
    # every default target module of each selected layer got an adapter
    assert len(summary["adapted_modules"]) == len(LAYERS) * len(default_target_modules(lm.model))
    train(model, _batches(lm.tokenizer), lm_loss_fn(), steps=3, lr=1e-2, progress=False)

    ids = lm.tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapted_logits = model(input_ids=ids).logits
    merged = merge_for_save(model)
    assert not type(merged).__module__.startswith("peft.")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    _check_only_selected_changed(before, merged, LAYERS)
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-5)

    out = save_model(merged, lm.tokenizer, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        reloaded_logits = reloaded(input_ids=ids).logits
    torch.testing.assert_close(reloaded_logits, merged_logits, rtol=0, atol=1e-6)


def test_lora_target_modules_subset_and_gpt2_conv1d():
    lm = tiny_loaded("gpt2", num_layers=3)
    _, summary = select_trainable(lm.model, [0], method="lora", target_modules=["c_attn"])
    assert summary["adapted_modules"] == ["transformer.h.0.attn.c_attn"]


@pytest.mark.parametrize("layers, match", [
    ([], "no layers"),
    ([4], "out of range"),
    ([-1], "out of range"),
    ([1, 1], "more than once"),
    (["1"], "not an integer"),
    ("12", "list of integers"),
])
def test_layer_validation(layers, match):
    lm = tiny_loaded("llama", num_layers=4)
    with pytest.raises(EavssError, match=match):
        select_trainable(lm.model, layers)


def test_option_validation():
    lm = tiny_loaded("llama", num_layers=2)
    with pytest.raises(EavssError, match="unknown training method"):
        select_trainable(lm.model, [0], method="bitfit")
    with pytest.raises(EavssError, match="regex"):
        select_trainable(lm.model, [0], method="lora", target_modules="q_proj")
    with pytest.raises(EavssError, match="lora_r"):
        select_trainable(lm.model, [0], method="lora", lora_r=0)
    with pytest.raises(EavssError, match="match"):
        select_trainable(lm.model, [0], method="lora", target_modules=["no_such_proj"])
    wrapped, _ = select_trainable(tiny_loaded("llama", num_layers=2).model, [0], method="lora")
    with pytest.raises(EavssError, match="already peft-wrapped"):
        select_trainable(wrapped, [1], method="lora")


def test_merge_for_save_plain_model_unfreezes():
    lm = tiny_loaded("llama", num_layers=2)
    model, _ = select_trainable(lm.model, [0])
    assert not all(p.requires_grad for p in model.parameters())
    merged = merge_for_save(model)
    assert merged is lm.model and all(p.requires_grad for p in merged.parameters()) and not merged.training
