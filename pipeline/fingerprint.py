"""PURE: the document fingerprint, the unit of change.

A late chunk's vector depends on its whole document, so a document is re-embedded when anything that shapes
its vectors changes: its content (text and pass-through metadata), the chunker (versioned name and settings),
the model (name and weights fingerprint, window), the pooling (versioned mode, macro-window overlap) or the
document prefix. The compute dtype is left out on purpose: bf16 and fp32 vectors of one model agree to
cosine >= 0.9999, and a fleet of mixed hardware must not re-embed on every move.
"""

from __future__ import annotations

import hashlib
import json

from pipeline.chunking import STRATEGY_VERSIONS
from pipeline.config import ChunkingConfig, EmbeddingConfig
from pipeline.model import ModelIdentity
from pipeline.pooling import POOLING_VERSIONS


def embedding_settings(chunking: ChunkingConfig, embedding: EmbeddingConfig, identity: ModelIdentity) -> dict:
    """Everything besides content that a document's stored rows depend on, as plain JSON data."""
    chunker = {"strategy": STRATEGY_VERSIONS[chunking.strategy], "size": chunking.size}
    if chunking.strategy == "tokens":
        chunker["overlap"] = chunking.overlap
    elif chunking.strategy == "sentences":
        chunker["sentences_per_chunk"] = chunking.sentences_per_chunk
    elif chunking.strategy == "paragraphs":
        chunker["min_tokens"] = chunking.min_tokens
    pooling = {"mode": POOLING_VERSIONS[embedding.mode], "document_prefix": embedding.document_prefix}
    if embedding.mode == "late":
        pooling["window_overlap"] = embedding.window_overlap
    elif identity.pooling == "cls":  # naive chunks of a CLS model are pooled at [CLS], not by their mean
        pooling["sentence_pooling"] = "cls"
    model = {"name": identity.name, "fingerprint": identity.fingerprint, "max_length": identity.max_length}
    return {"chunker": chunker, "pooling": pooling, "model": model}


def settings_digest(settings: dict) -> str:
    """A stable hash of :func:`embedding_settings`."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def document_fingerprint(content_sha256: str, settings_sha256: str) -> str:
    """The fingerprint of one document under one set of settings (hex, 32 chars)."""
    return hashlib.sha256(f"{content_sha256}:{settings_sha256}".encode()).hexdigest()[:32]
