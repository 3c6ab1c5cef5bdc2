"""Out-of-memory handling: a micro-batch that does not fit is halved and retried; a document whose sequence
does not fit even alone is dead-lettered as ``out_of_memory`` while the rest of its block is embedded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import schema
from pipeline.embedding import ChunkEmbedder, OutOfMemory
from pipeline.stages import EmbedChunks
from tests.unit.test_embedding import tiny_loaded


class MemoryLimitedEncoder(torch.nn.Module):
    """Wraps an encoder and fails like a full device when asked for more than ``limit`` padded positions."""

    def __init__(self, encoder: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.encoder, self.limit, self.calls = encoder, limit, 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.calls += 1
        if input_ids.numel() > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)


def _docs(lengths: list[int]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    rng = np.random.default_rng(0)
    return [(rng.integers(1, 100, n).tolist(), [(0, n // 2), (n // 2, n)]) for n in lengths]


@pytest.mark.parametrize("parallel_batches", [1, 2])
def test_a_batch_that_does_not_fit_is_halved_and_gives_the_same_vectors(
    tiny_bert: torch.nn.Module, parallel_batches: int
) -> None:
    docs = _docs([30, 28, 25, 20, 12, 9])
    expected = ChunkEmbedder(tiny_loaded(tiny_bert), max_tokens=4096).embed(docs)
    limited = MemoryLimitedEncoder(tiny_bert, limit=70)
    embedder = ChunkEmbedder(tiny_loaded(limited), max_tokens=140, parallel_batches=parallel_batches)
    np.testing.assert_allclose(embedder.embed(docs), expected, atol=1e-5)
    assert embedder.stats.oom_splits > 0


def test_a_sequence_that_never_fits_raises_out_of_memory(tiny_bert: torch.nn.Module) -> None:
    embedder = ChunkEmbedder(tiny_loaded(MemoryLimitedEncoder(tiny_bert, limit=10)), max_tokens=4096)
    with pytest.raises(OutOfMemory):
        embedder.embed(_docs([30]))


@pytest.mark.parametrize("parallel_batches", [1, 2])
def test_the_stage_dead_letters_only_the_document_that_does_not_fit(
    tiny_bert: torch.nn.Module, parallel_batches: int
) -> None:
    # A small budget makes several batches, so the parallel case really runs them at once.
    stage = _stage(MemoryLimitedEncoder(tiny_bert, limit=25), max_tokens=16, parallel_batches=parallel_batches)
    output = stage(_chunked_documents({"small": 12, "huge": 30, "tiny": 8}))
    errors = {r[schema.DOC_ID]: r[schema.ERROR] for r in output.to_pylist()}
    assert errors == {"small": None, "tiny": None, "huge": "out_of_memory"}
    kept = output.filter(pa.compute.is_null(output[schema.ERROR]))
    assert kept.num_rows == 4 and kept[schema.VECTOR].null_count == 0


class SharedMemoryEncoder(torch.nn.Module):
    """Fails like a full device when the forwards in flight together exceed ``limit`` padded positions."""

    def __init__(self, encoder: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.encoder, self.limit, self.in_flight, self.lock = encoder, limit, 0, threading.Lock()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        with self.lock:
            if self.in_flight + input_ids.numel() > self.limit:
                raise MemoryError("out of memory")
            self.in_flight += input_ids.numel()
        try:
            time.sleep(0.05)  # long enough for the batches run at once to overlap
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            with self.lock:
                self.in_flight -= input_ids.numel()


def test_a_document_that_fits_alone_is_retried_alone_not_beside_other_batches(tiny_bert: torch.nn.Module) -> None:
    # Each 60-token document needs two windows (two one-sequence batches, 40 positions each); memory holds
    # one at a time. Run at once, the batches fail; the retry runs each document's batches one by one.
    stage = _stage(SharedMemoryEncoder(tiny_bert, limit=40), window_overlap=6, max_tokens=40, parallel_batches=2)
    output = stage(_chunked_documents({"first": 60, "second": 60}))
    assert [r[schema.ERROR] for r in output.to_pylist()] == [None] * 4
    assert output[schema.VECTOR].null_count == 0


def _stage(encoder: torch.nn.Module, **embedder: int) -> EmbedChunks:
    return EmbedChunks.with_embedder(ChunkEmbedder(tiny_loaded(encoder), **embedder))  # the constructor loads files


def _chunked_documents(lengths: dict[str, int]) -> pa.Table:
    """Chunked documents of the given token counts, two chunks each (``CHUNKED_DOCUMENTS``)."""
    rows = []
    for doc_id, (ids, spans) in zip(lengths, _docs(list(lengths.values()))):
        text = " ".join(["w"] * len(ids))
        rows.append(
            {
                schema.DOC_ID: doc_id,
                schema.TEXT: text,
                schema.SOURCE_URI: "mem://",
                schema.METADATA: "{}",
                schema.ERROR: None,
                schema.ERROR_DETAIL: None,
                schema.SNIPPET: None,
                schema.DOC_FINGERPRINT: doc_id,
                schema.INPUT_IDS: ids,
                schema.CHAR_STARTS: [2 * a for a, _ in spans],
                schema.CHAR_ENDS: [2 * b - 1 for _, b in spans],
                schema.TOKEN_STARTS: [a for a, _ in spans],
                schema.TOKEN_ENDS: [b for _, b in spans],
            }
        )
    return pa.Table.from_pylist(rows, schema=schema.CHUNKED_DOCUMENTS)
