"""The fused kernel's launch configuration (:func:`eavss.stats._triton.launch_config`), on the CPU.

Triton is not installed here, so the module is loaded under another name with a stand-in ``triton``
(``jit`` = identity; ``next_power_of_2`` and ``cdiv`` as Triton defines them): the kernels are never
launched, only the pure-Python choice of tiles, row pieces, tuned settings and the
``EAVSS_TRITON_CONFIG`` override is tested. The real module, where Triton exists, is untouched.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

import eavss.stats
from eavss.errors import EavssError


def _fake_triton() -> types.ModuleType:
    tr = types.ModuleType("triton")
    tr.jit = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)
    tr.next_power_of_2 = lambda n: 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
    tr.cdiv = lambda a, b: -(-int(a) // int(b))
    tr.language = types.ModuleType("triton.language")
    tr.language.extra = types.ModuleType("triton.language.extra")
    tr.language.extra.libdevice = types.ModuleType("triton.language.extra.libdevice")
    return tr


@pytest.fixture
def tri(monkeypatch):
    """``eavss/stats/_triton.py`` loaded with the stand-in Triton, as a module of its own name."""
    if importlib.util.find_spec("triton") is None:
        fake = _fake_triton()
        monkeypatch.setitem(sys.modules, "triton", fake)
        monkeypatch.setitem(sys.modules, "triton.language", fake.language)
        monkeypatch.setitem(sys.modules, "triton.language.extra", fake.language.extra)
    path = Path(eavss.stats.__file__).parent / "_triton.py"
    spec = importlib.util.spec_from_file_location("_eavss_triton_launch_config_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.delenv("EAVSS_TRITON_CONFIG", raising=False)
    return mod


CPU = torch.device("cpu")  # _num_sms: 8 "SMs" off CUDA


def test_wide_rows_split_in_two_pieces_and_tuned(tri):
    # Qwen2.5-7B MLP: 18,944 = 16,384 + 4,096 lanes, the tuned setting (1 token, 8 warps, joint)
    c = tri.launch_config(8, 2048, 18944, CPU)
    assert (c["BLOCK_D"], c["BLOCK_D2"], c["BLOCK_T"], c["num_warps"], c["JOINT"], c["SINGLE"]) == \
        (16384, 4096, 1, 8, True, True)
    assert c["num_stages"] is None
    # Llama-3-8B MLP: 14,336 -> one 16,384-lane piece (16,384 + 1 would not be narrower), 2 tokens a step
    c = tri.launch_config(8, 2048, 14336, CPU)
    assert (c["BLOCK_D"], c["BLOCK_D2"], c["BLOCK_T"], c["num_warps"], c["JOINT"]) == (16384, 1, 2, 16, True)
    # a residual stream (4,096): power of two, no split, separate reductions
    c = tri.launch_config(8, 2048, 4096, CPU)
    assert (c["BLOCK_D"], c["BLOCK_D2"], c["BLOCK_T"], c["JOINT"]) == (4096, 1, 1, False)
    # tokens per program x programs covers the sequence; a decoding step has one token per tile
    assert c["P"] * c["TPP"] >= 2048 and (c["P"] - 1) * c["TPP"] < 2048
    assert tri.launch_config(32, 1, 14336, CPU)["BLOCK_T"] == 1


def test_override_with_num_stages_and_malformed_override(tri, monkeypatch):
    monkeypatch.setenv("EAVSS_TRITON_CONFIG", "2,0,16,2,1,1,3")
    c = tri.launch_config(8, 2048, 14336, CPU)
    assert (c["BLOCK_T"], c["num_warps"], c["JOINT"], c["num_stages"]) == (2, 16, True, 3)
    monkeypatch.setenv("EAVSS_TRITON_CONFIG", "1,0,8,2,1,0,0")  # num_stages 0: Triton's default
    c = tri.launch_config(8, 2048, 18944, CPU)
    assert (c["BLOCK_D"], c["BLOCK_D2"], c["JOINT"], c["num_stages"]) == (16384, 4096, False, None)
    for bad in ("1,0,8", "1,0,8,2,1,1,1,1", "a,b,c,d"):
        monkeypatch.setenv("EAVSS_TRITON_CONFIG", bad)
        with pytest.raises(EavssError, match="EAVSS_TRITON_CONFIG must be 4 to 7 integers"):
            tri.launch_config(8, 2048, 4096, CPU)


# --- the tiled two-read path (tiled_config) -------------------------------------------------------


def test_tiled_path_only_above_its_width(tri, monkeypatch):
    monkeypatch.delenv("EAVSS_TILED_CONFIG", raising=False)
    assert tri.TILED_MIN_D == tri.SINGLE_MAX_D + 1  # measured: no faster than the one-read kernel at 14,336 and 18,944
    assert tri.tiled_config(8, 2048, 18944, CPU) is None
    assert tri.tiled_config(8, 2048, tri.SINGLE_MAX_D, CPU) is None
    assert tri.tiled_config(8, 2048, tri.SINGLE_MAX_D + 1, CPU) is not None
    monkeypatch.setenv("EAVSS_TRITON_CONFIG", "1,2048,8,4")  # tuning the one-read kernel: its chunked path runs
    assert tri.tiled_config(4, 2048, 53248, CPU) is None
    monkeypatch.delenv("EAVSS_TRITON_CONFIG")
    monkeypatch.setenv("EAVSS_TILED_CONFIG", "off")
    assert tri.tiled_config(4, 2048, 53248, CPU) is None
    monkeypatch.setenv("EAVSS_TILED_CONFIG", "on")
    assert tri.tiled_config(2, 7, 40, CPU) is not None


def test_gated_path_always_gets_a_tiled_config(tri, monkeypatch):
    """``force`` (the gated MLP, which has no other kernel): a configuration at any width whatever
    ``off``/``auto`` or a one-read tuning override say; seven integers still shape it."""
    monkeypatch.delenv("EAVSS_TILED_CONFIG", raising=False)
    monkeypatch.setenv("EAVSS_TRITON_CONFIG", "1,0,16,4")
    for env in ("off", "auto", "on"):
        monkeypatch.setenv("EAVSS_TILED_CONFIG", env)
        for D in (40, 14336, 18944):
            assert tri.tiled_config(8, 2048, D, CPU, force=True)["A"]["BLOCK_D"] == min(2048, tri.triton.next_power_of_2(D))
    monkeypatch.setenv("EAVSS_TILED_CONFIG", "1,4096,8,2,512,4,8")
    c = tri.tiled_config(8, 2048, 18944, CPU, force=True)
    assert (c["A"]["BLOCK_D"], c["A"]["num_warps"], c["B"]["BLOCK_D"], c["NC"]) == (4096, 8, 512, 37)


@pytest.mark.parametrize("B,T,D", [(8, 2048, 53248), (1, 1, 40), (3, 37, 576), (64, 8192, 40960), (1, 100000, 65536),
                                   (5, 3, 33000)])
def test_tiled_grid_covers_every_token_and_column_once(tri, monkeypatch, B, T, D):
    monkeypatch.setenv("EAVSS_TILED_CONFIG", "on")
    c = tri.tiled_config(B, T, D, CPU)
    for k in ("A", "B"):
        g = c[k]
        assert g["TPP"] % g["BLOCK_T"] == 0 and g["BLOCK_T"] <= max(1, 1 << (T - 1).bit_length())
        assert g["P"] * g["TPP"] >= T > (g["P"] - 1) * g["TPP"]  # no token missed, no program without tokens
    assert c["NC"] * c["B"]["BLOCK_D"] >= D > (c["NC"] - 1) * c["B"]["BLOCK_D"]
    # a column program counts at most 2**22 elements: its float32 near-zero count stays exact
    assert c["B"]["TPP"] * c["B"]["BLOCK_D"] <= 1 << 22 or c["B"]["TPP"] == c["B"]["BLOCK_T"]


def test_tiled_override(tri, monkeypatch):
    monkeypatch.setenv("EAVSS_TILED_CONFIG", "1,4096,8,2,512,2,16")
    c = tri.tiled_config(8, 2048, 18944, CPU)  # seven integers force the path on at any width
    assert (c["A"]["BLOCK_T"], c["A"]["BLOCK_D"], c["A"]["num_warps"]) == (1, 4096, 8)
    assert (c["B"]["BLOCK_T"], c["B"]["BLOCK_D"], c["B"]["num_warps"], c["NC"]) == (2, 512, 2, 37)
    for bad in ("1,2,3", "a,b,c,d,e,f,g", "1,4096,8,2,512,2,0", "sometimes", "1,4096,3,2,512,2,4", "1,4096,8,2,512,64,4"):
        monkeypatch.setenv("EAVSS_TILED_CONFIG", bad)
        with pytest.raises(EavssError, match="EAVSS_TILED_CONFIG must be") as e:
            tri.tiled_config(8, 2048, 18944, CPU)
        assert "\n" not in str(e.value)
