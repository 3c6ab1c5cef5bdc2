"""The bundled all-MiniLM-L6-v2 against a direct transformers forward: what lateline stores is what late
chunking means (fp32, cosine >= 0.9999)."""

from __future__ import annotations

from pydoc_data.topics import topics

import numpy as np
import pytest
import torch

from pipeline.chunking import chunk_spans
from pipeline.config import ModelConfig
from pipeline.embedding import ChunkEmbedder, embed_queries
from pipeline.model import load_model, raw_tokenizer
from pipeline.pooling import late_pool, macro_windows, stitch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model():
    return load_model(ModelConfig(dtype="float32"), device="cpu")


def _states(model, input_ids: list[int]) -> np.ndarray:
    """Token states of ``[CLS] input_ids [SEP]`` from a plain forward."""
    frame = model.frame
    ids = torch.tensor([frame.wrap(input_ids)])
    with torch.inference_mode():
        hidden = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    return hidden.numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _tokenize(model, text: str):
    return raw_tokenizer(model.tokenizer).encode(text, add_special_tokens=False)


@pytest.mark.parametrize("doc_id", ["assert", "lambda", "for", "dict"])
def test_late_vectors_equal_span_means_of_a_direct_forward(model, doc_id: str) -> None:
    encoding = _tokenize(model, topics[doc_id])
    assert len(encoding.ids) + 2 <= model.max_length, "this test is for documents within the window"
    spans = [(s.token_start, s.token_end) for s in chunk_spans(topics[doc_id], encoding.offsets, "tokens", 32)]
    stored = ChunkEmbedder(model, mode="late", max_tokens=2048).embed([(encoding.ids, spans)])
    states = _states(model, encoding.ids)[model.frame.content_offset : -1]
    assert _cosines(stored, late_pool(states, spans)).min() >= 0.9999


def test_long_documents_use_stitched_macro_windows(model) -> None:
    text = topics["compound"]
    encoding = _tokenize(model, text)
    capacity = model.frame.capacity(model.max_length)
    assert len(encoding.ids) > 3 * capacity, "needs a document several windows long"
    spans = [(s.token_start, s.token_end) for s in chunk_spans(text, encoding.offsets, "sentences", 128)]
    stored = ChunkEmbedder(model, mode="late", window_overlap=64).embed([(encoding.ids, spans)])
    windows = macro_windows(len(encoding.ids), capacity, 64)
    window_states = [_states(model, encoding.ids[w.start : w.end])[1:-1] for w in windows]
    reference = late_pool(stitch(window_states, windows), spans)
    assert stored.shape == (len(spans), 384)
    assert _cosines(stored, reference).min() >= 0.9999


def test_naive_vectors_match_a_sentence_embedding_of_each_chunk(model) -> None:
    encoding = _tokenize(model, topics["lambda"])
    spans = [(0, 20), (20, len(encoding.ids))]
    stored = ChunkEmbedder(model, mode="naive").embed([(encoding.ids, spans)])
    reference = np.stack([_states(model, encoding.ids[a:b]).mean(0) for a, b in spans])
    assert _cosines(stored, reference).min() >= 0.9999


def test_query_embedding_matches_sentence_transformers_mean_pooling(model) -> None:
    query = "how do I write an anonymous function?"
    [vector] = embed_queries(model, [query])
    encoded = model.tokenizer(query, return_tensors="pt")
    with torch.inference_mode():
        reference = model.encoder(**encoded).last_hidden_state[0].mean(0).numpy()
    assert _cosines(vector[None], reference[None])[0] >= 0.9999


def test_bfloat16_stays_close_to_float32(model) -> None:
    encoding = _tokenize(model, topics["assert"])
    spans = [(0, 16), (16, len(encoding.ids))]
    fp32 = ChunkEmbedder(model).embed([(encoding.ids, spans)])
    bf16_model = load_model(ModelConfig(dtype="bfloat16"), device="cpu")
    # On CPU the weights themselves are cast once (no autocast), which is the fast path.
    assert next(bf16_model.encoder.parameters()).dtype == torch.bfloat16 and not bf16_model.autocast
    bf16 = ChunkEmbedder(bf16_model).embed([(encoding.ids, spans)])
    assert _cosines(fp32, bf16).min() >= 0.9998
