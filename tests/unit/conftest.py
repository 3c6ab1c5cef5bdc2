"""Shared fixtures for the pure-core unit tests: the bundled model's real fast tokenizer (for char offsets) and a
tiny randomly initialised BERT (for pooling and embedding checks). Nothing here touches the network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from pipeline.model import load_tokenizer, raw_tokenizer, resolve_model_path

BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

Encode = Callable[[str], list[tuple[int, int]]]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny forwards are slower with several threads (and much slower on a busy machine): use one, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backend() -> Any:
    """The bundled model's Rust tokenizer with truncation and padding off (offsets are str positions)."""
    return raw_tokenizer(load_tokenizer(resolve_model_path(BUNDLED_MODEL)))


@pytest.fixture(scope="module")
def encode_offsets(backend: Any) -> Encode:
    """Token char offsets of a text, without special tokens."""

    def encode(text: str) -> list[tuple[int, int]]:
        return list(backend.encode(text, add_special_tokens=False).offsets)

    return encode


@pytest.fixture(scope="module")
def tiny_bert() -> torch.nn.Module:
    """A 2-layer, 32-dim BERT with random weights and 40 positions, in eval mode (deterministic forwards)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    model = BertModel(config).eval()
    with torch.no_grad():  # warm up, so the one-time dispatch cost lands in setup, not in the first test
        model(input_ids=torch.ones(2, 8, dtype=torch.long), attention_mask=torch.ones(2, 8, dtype=torch.long))
    return model
