"""Tiny, randomly initialised decoder-only LMs and a tiny local tokenizer, for tests and benchmarks.

Everything is built offline: models from configs (no hub), the tokenizer by training a byte-level
BPE on a short built-in English text with the ``tokenizers`` library. Models are float32, in eval
mode, and share the tokenizer's vocabulary (``TINY_VOCAB_SIZE`` = 512 ids; the tokenizer uses at
most that many). ``real_model_shape_config`` gives configs with the dimensions of real models, for
speed and memory benchmarks on randomly initialised weights.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from eavss.errors import EavssError

TINY_VOCAB_SIZE = 512
"""Vocabulary size of every tiny model; the tiny tokenizer's ids are all below it."""

TINY_MAX_POSITIONS = 256
"""Context length of the tiny models and ``model_max_length`` of the tiny tokenizer (tokens)."""

TINY_ARCHS: list[str] = ["llama", "qwen2", "gemma3", "gpt2", "mistral", "gpt_neox", "opt", "phi3"]
"""Architectures :func:`tiny_model` builds (all verified with transformers 5.24)."""

# Special tokens of the tiny tokenizer, in id order (ids 0..3).
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
_SPECIAL_IDS = {"unk_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}

TINY_TEXT = """\
The quick brown fox jumps over the lazy dog. A small model reads a short text and learns which
words follow which. The cat sat on the mat, and the dog slept by the door. It was a cold day in
the north of the country, and the river was frozen from one bank to the other.
Question: What is the capital of France? Answer: The capital of France is Paris.
Question: How many legs does a spider have? Answer: A spider has eight legs.
Question: Who wrote Hamlet? Answer: William Shakespeare wrote Hamlet.
Question: What is two plus three? Answer: Two plus three is five, or 2 + 3 = 5.
The sun rises in the east and sets in the west. Water boils at 100 degrees Celsius at sea level.
Light travels faster than sound, which is why we see lightning before we hear the thunder.
The history of science is the story of people asking simple questions and testing the answers.
Some answers were wrong, and the people who found the mistakes were often the most important.
Language models predict the next word. They are trained on a lot of text, and they can be wrong
in ways that sound very confident. When a model does not know the answer, it may still write
one; this is called a hallucination. Layers near the middle of the model often matter less than
the first and the last layers, and some of them can be removed with little loss in quality.
In 1969, two people walked on the Moon for the first time. The Earth goes around the Sun once a
year, and the Moon goes around the Earth about once a month. There are seven days in a week,
twelve months in a year, and 365 or 366 days in a year. Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12.
She said: "I will be there at ten o'clock, if the train is on time." He answered: "Good; I will
wait for you at the station." They met, had a cup of tea, and talked about books, music, maps,
gardens, mountains, and the weather. Everyone agreed that the weather was terrible this year.
"""

# ---------------------------------------------------------------------------------------------
# tokenizer


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the byte-level BPE once per process and return its JSON serialisation."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[UNK, BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_TEXT.splitlines(), trainer=trainer)
    if tok.get_vocab_size() > TINY_VOCAB_SIZE:  # pragma: no cover - guards a tokenizers change
        raise RuntimeError(f"tiny tokenizer has {tok.get_vocab_size()} tokens > {TINY_VOCAB_SIZE}")
    return tok.to_str()


def tiny_tokenizer():
    """A fresh tiny byte-level BPE tokenizer (``transformers.PreTrainedTokenizerFast``).

    Trained on :data:`TINY_TEXT` (once per process; each call returns a new, independent object),
    vocabulary <= 512 ids, any byte string encodable. Special tokens: ``<unk>`` = 0, ``<s>`` = 1
    (bos), ``</s>`` = 2 (eos), ``<pad>`` = 3 (pad, distinct from eos). No special tokens are added
    automatically when encoding. ``model_max_length`` = 256, ``padding_side`` = "right".

    Returns:
        PreTrainedTokenizerFast: ready for ``tok(texts, return_tensors="pt", padding=True)``.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=TINY_MAX_POSITIONS,
        padding_side="right",
    )
    return tok


# ---------------------------------------------------------------------------------------------
# tiny models


def _heads(hidden: int) -> tuple[int, int, int]:
    """(attention heads, kv heads, head_dim) for a tiny model of width ``hidden``."""
    if hidden < 8 or hidden % 8:
        raise EavssError(f"tiny model hidden={hidden} must be a positive multiple of 8; pass e.g. hidden=64")
    heads = 4
    return heads, 2, hidden // heads


def tiny_config(arch: str, num_layers: int = 4, hidden: int = 64, **overrides: Any):
    """Config of a tiny model of architecture ``arch`` (see :func:`tiny_model`).

    Args:
        arch: one of :data:`TINY_ARCHS`.
        num_layers: number of decoder layers (>= 1).
        hidden: model width (multiple of 8); 4 attention heads, 2 KV heads where supported, MLP
            width 2 * hidden.
        **overrides: config attributes set on top (e.g. ``sliding_window=2``).

    Returns:
        transformers.PreTrainedConfig with ``vocab_size`` = 512 and the tiny tokenizer's special ids.

    Raises:
        EavssError: unknown ``arch``, ``num_layers`` < 1, or a bad ``hidden``.
    """
    if arch not in TINY_ARCHS:
        raise EavssError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}")
    if int(num_layers) < 1:
        raise EavssError(f"tiny model num_layers={num_layers} must be >= 1")
    heads, kv, head_dim = _heads(hidden)
    inter = 2 * hidden
    common = dict(vocab_size=TINY_VOCAB_SIZE, **_SPECIAL_IDS)
    llama_like = dict(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=TINY_MAX_POSITIONS,
        tie_word_embeddings=False,
        **common,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        kw = dict(llama_like, head_dim=head_dim)
        kw.update(overrides)
        return LlamaConfig(**kw)
    if arch == "qwen2":
        from transformers import Qwen2Config

        kw = dict(llama_like)
        kw.update(overrides)
        return Qwen2Config(**kw)
    if arch == "mistral":
        from transformers import MistralConfig

        # A small window so that tests with a few dozen tokens exercise sliding-window attention.
        kw = dict(llama_like, head_dim=head_dim, sliding_window=8)
        kw.update(overrides)
        return MistralConfig(**kw)
    if arch == "phi3":
        from transformers import Phi3Config

        kw = dict(llama_like, original_max_position_embeddings=TINY_MAX_POSITIONS, resid_pdrop=0.0,
                  embd_pdrop=0.0, attention_dropout=0.0)
        kw.update(overrides)
        return Phi3Config(**kw)
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        # Mixed sliding/full layers (odd layers full) and a tiny window: sequences longer than 4
        # tokens exercise the sliding-window cache layers.
        kw = dict(
            llama_like,
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=4,
            layer_types=["full_attention" if i % 2 else "sliding_attention" for i in range(num_layers)],
        )
        kw.update(overrides)
        return Gemma3TextConfig(**kw)
    if arch == "gpt2":
        from transformers import GPT2Config

        kw = dict(
            n_embd=hidden, n_layer=num_layers, n_head=heads, n_inner=inter, n_positions=TINY_MAX_POSITIONS,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )
        kw.update(overrides)
        return GPT2Config(**kw)
    if arch == "gpt_neox":
        from transformers import GPTNeoXConfig

        kw = dict(
            hidden_size=hidden, intermediate_size=inter, num_hidden_layers=num_layers,
            num_attention_heads=heads, max_position_embeddings=TINY_MAX_POSITIONS,
            hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False, **common,
        )
        kw.update(overrides)
        return GPTNeoXConfig(**kw)
    # opt
    from transformers import OPTConfig

    kw = dict(
        hidden_size=hidden, ffn_dim=inter, num_hidden_layers=num_layers, num_attention_heads=heads,
        max_position_embeddings=TINY_MAX_POSITIONS, word_embed_proj_dim=hidden, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, **common,
    )
    kw.update(overrides)
    return OPTConfig(**kw)


def tiny_model(arch: str, seed: int = 0, num_layers: int = 4, hidden: int = 64, **overrides: Any):
    """A tiny randomly initialised causal LM (float32, CPU, eval mode).

    The weights depend only on (``arch``, ``seed``, the config); the global torch RNG state of the
    caller is left untouched. Text-only classes: ``gemma3`` is ``Gemma3ForCausalLM`` with mixed
    ``layer_types`` (even layers sliding_attention, odd layers full_attention, ``sliding_window=4``);
    ``mistral`` uses ``sliding_window=8``.

    Args:
        arch: one of :data:`TINY_ARCHS`.
        seed: RNG seed for the initialisation.
        num_layers: decoder layers; hidden: width (multiple of 8); overrides: config attributes.

    Returns:
        transformers.PreTrainedModel; ``model(input_ids)`` with input_ids (batch, seq) < 512 gives
        logits (batch, seq, 512).

    Raises:
        EavssError: see :func:`tiny_config`.
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, num_layers=num_layers, hidden=hidden, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# real model shapes (for benchmarks on randomly initialised weights)

REAL_MODEL_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama3-8b": ("llama", dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001,
    )),
    "llama3.2-1b": ("llama", dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, tie_word_embeddings=True,
        bos_token_id=128000, eos_token_id=128001,
    )),
    "llama2-7b": ("llama", dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
    )),
    "mistral-7b": ("mistral", dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=32768, max_position_embeddings=32768, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, sliding_window=None,
    )),
    "qwen2.5-7b": ("qwen2", dict(
        hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        intermediate_size=18944, vocab_size=152064, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False,
    )),
    "qwen2.5-0.5b": ("qwen2", dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True,
    )),
    "smollm2-135m": ("llama", dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
    )),
    "gemma3-270m": ("gemma3_text", dict(
        hidden_size=640, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        intermediate_size=2048, vocab_size=262144, max_position_embeddings=32768, query_pre_attn_scalar=256,
        sliding_window=512, tie_word_embeddings=True,
    )),
    "gemma3-1b": ("gemma3_text", dict(
        hidden_size=1152, num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        intermediate_size=6912, vocab_size=262144, max_position_embeddings=32768, query_pre_attn_scalar=256,
        sliding_window=512, tie_word_embeddings=True,
    )),
}
"""name -> (model_type, config kwargs) with the published dimensions of real models."""


def real_model_shape_config(name: str, **overrides: Any):
    """A config with the dimensions of a real model, for benchmarks with random weights.

    Build the model with ``AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)`` (on a
    ``torch.device("meta")`` or GPU context for the big ones: Llama-3-8B is ~16 GB in bf16).

    Args:
        name: one of :data:`REAL_MODEL_SHAPES` ("llama3-8b": hidden 4096, 32 layers, 32 heads,
            8 KV heads, MLP 14336, vocab 128256; "llama3.2-1b", "llama2-7b", "mistral-7b",
            "qwen2.5-7b", "qwen2.5-0.5b", "smollm2-135m", "gemma3-270m", "gemma3-1b").
        **overrides: config attributes to change (e.g. ``num_hidden_layers=4`` for a quick run).

    Returns:
        transformers.PreTrainedConfig of the matching class (LlamaConfig, MistralConfig,
        Qwen2Config, Gemma3TextConfig).

    Raises:
        EavssError: unknown ``name``.
    """
    from transformers import AutoConfig

    if name not in REAL_MODEL_SHAPES:
        raise EavssError(f"unknown model shape {name!r}; choose one of {', '.join(REAL_MODEL_SHAPES)}")
    model_type, kw = REAL_MODEL_SHAPES[name]
    kw = dict(kw)
    kw.update(overrides)
    return AutoConfig.for_model(model_type, **kw)


def tiny_loaded(arch: str = "llama", seed: int = 0, num_layers: int = 4, hidden: int = 64, **overrides: Any):
    """A tiny model and the tiny tokenizer as an :class:`eavss.models.loading.LoadedModel`.

    Interchangeable with what ``load_model`` returns: ``info`` has ``model_id`` ("tiny-<arch>"),
    ``source`` ("tiny"), ``file``/``file_sha256`` (None), ``dtype`` ("float32"), ``device``
    ("cpu"), ``architecture`` (``config.model_type``), ``num_layers``, ``layers_path``,
    ``load_seconds``.

    Args and Raises: as :func:`tiny_model`.
    """
    import time

    from eavss.models.layers import find_decoder_layers
    from eavss.models.loading import LoadedModel

    t0 = time.perf_counter()
    model = tiny_model(arch, seed=seed, num_layers=num_layers, hidden=hidden, **overrides)
    tokenizer = tiny_tokenizer()
    path, layers = find_decoder_layers(model)
    info = {
        "model_id": f"tiny-{arch}", "source": "tiny", "file": None, "file_sha256": None,
        "cache_path": None, "cache_hit": None, "dtype": "float32", "device": "cpu",
        "architecture": model.config.model_type, "num_layers": len(layers), "layers_path": path,
        "load_seconds": round(time.perf_counter() - t0, 3), "seed": seed,
    }
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)
