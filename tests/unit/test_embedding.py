"""embedding.py: ChunkEmbedder with a tiny BERT equals the reference pooling, in input order, whatever the batching."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.embedding import ChunkEmbedder, release_freed_memory, resident_bytes
from pipeline.model import LoadedModel, ModelIdentity
from pipeline.pooling import Frame, late_pool, macro_windows, stitch

CLS, SEP, MAX_LENGTH, DIM = 101, 102, 40, 32
FRAME = Frame((CLS,), (), (SEP,))


def tiny_loaded(model: torch.nn.Module, frame: Frame = FRAME) -> LoadedModel:
    identity = ModelIdentity(
        name="tiny",
        fingerprint="x",
        dim=DIM,
        pooling="mean",
        max_length=MAX_LENGTH,
        dtype="float32",
        document_prefix="",
    )
    return LoadedModel(
        tokenizer=SimpleNamespace(pad_token_id=0),
        encoder=model,
        frame=frame,
        max_length=MAX_LENGTH,
        identity=identity,
        device="cpu",
        dtype="float32",
    )


def states_of(model: torch.nn.Module, input_ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([input_ids])).last_hidden_state[0].numpy()


def late_reference(model: torch.nn.Module, ids: list[int], spans, frame: Frame, overlap: int) -> np.ndarray:
    """Mean over the stitched content states of each span (every window run alone, unpadded)."""
    windows = macro_windows(len(ids), frame.capacity(MAX_LENGTH), overlap)
    offset = frame.content_offset
    window_states = [
        states_of(model, frame.wrap(ids[w.start : w.end]))[offset : offset + w.end - w.start] for w in windows
    ]
    return late_pool(stitch(window_states, windows), spans)


def naive_reference(model: torch.nn.Module, ids: list[int], spans, frame: Frame) -> np.ndarray:
    """sentence-transformers style: each chunk alone, mean over every position ([CLS] and [SEP] included)."""
    capacity = frame.capacity(MAX_LENGTH)
    means = [states_of(model, frame.wrap(ids[s : min(e, s + capacity)])).mean(axis=0) for s, e in spans]
    means = np.stack(means)
    return means / np.linalg.norm(means, axis=1, keepdims=True)


def make_docs(seed: int, lengths: tuple[int, ...]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    rng = random.Random(seed)
    docs = []
    for n in lengths:
        ids = [rng.randint(1, 99) for _ in range(n)]
        spans, start = [], 0
        while start < n:
            end = min(n, start + rng.randint(1, 15))
            spans.append((start, end))
            start = end
        docs.append((ids, spans))
    return docs


DOCS_LENGTHS = (12, 38, 5, 90, 39, 150, 1, 25)  # fits, exactly fits, long (macro windows), one token


def assert_same_vectors(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    cosines = (actual * expected).sum(axis=1)
    assert cosines.min() >= 0.9999


@pytest.fixture(scope="module")
def late_expected(tiny_bert) -> np.ndarray:
    docs = make_docs(0, DOCS_LENGTHS)
    return np.concatenate([late_reference(tiny_bert, ids, spans, FRAME, 6) for ids, spans in docs])


@pytest.mark.parametrize(("max_tokens", "max_sequences"), [(16_384, 256), (40, 256), (100, 3), (1000, 1), (200, 8)])
def test_late_embeddings_equal_the_reference_whatever_the_batch_budget(
    tiny_bert, late_expected: np.ndarray, max_tokens: int, max_sequences: int
) -> None:
    embedder = ChunkEmbedder(
        tiny_loaded(tiny_bert), "late", window_overlap=6, max_tokens=max_tokens, max_sequences=max_sequences
    )
    vectors = embedder.embed(make_docs(0, DOCS_LENGTHS))
    assert vectors.dtype == np.float32
    assert_same_vectors(vectors, late_expected)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_batches_run_at_once_give_the_reference_vectors(tiny_bert, late_expected: np.ndarray) -> None:
    docs = make_docs(0, DOCS_LENGTHS)
    serial = ChunkEmbedder(tiny_loaded(tiny_bert), "late", window_overlap=6, max_tokens=40)
    at_once = ChunkEmbedder(tiny_loaded(tiny_bert), "late", window_overlap=6, max_tokens=40, parallel_batches=3)
    assert_same_vectors(at_once.embed(docs), late_expected)
    serial.embed(docs)
    assert at_once.stats.as_dict() | {"seconds": 0} == serial.stats.as_dict() | {"seconds": 0}
    assert at_once.stats.forwards > 4


class SlowerFirst(torch.nn.Module):
    """Each forward sleeps less than the one before, so batches run at once finish in reverse order."""

    def __init__(self, encoder: torch.nn.Module, calls: int) -> None:
        super().__init__()
        self.encoder, self.left, self.lock = encoder, calls, threading.Lock()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        with self.lock:
            self.left -= 1
            wait = 0.03 * max(self.left, 0)
        time.sleep(wait)
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)


def test_pieces_are_summed_in_batch_order_so_vectors_do_not_depend_on_timing(tiny_bert) -> None:
    # One 150-token chunk spans 5 macro windows, one window per batch: its vector sums 5 pieces, and float
    # addition is not associative. Batches that finish in reverse order must still give the serial bits.
    ids = make_docs(7, (150,))[0][0]
    docs = [(ids, [(0, 150)])]
    serial = ChunkEmbedder(tiny_loaded(tiny_bert), "late", window_overlap=6, max_tokens=40).embed(docs)
    for _ in range(3):
        encoder = SlowerFirst(tiny_bert, calls=5)
        embedder = ChunkEmbedder(tiny_loaded(encoder), "late", window_overlap=6, max_tokens=40, parallel_batches=5)
        np.testing.assert_array_equal(embedder.embed(docs), serial)


class ThreadCountingEncoder(torch.nn.Module):
    """Records torch's thread count inside each forward."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.threads = encoder, []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        self.threads.append(torch.get_num_threads())
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)


def test_batches_that_run_one_at_a_time_get_all_the_threads(tiny_bert) -> None:
    # An actor runs single-threaded forwards (torch threads 1) two at a time. A plan of one batch (a small last
    # block, one changed document) must not leave the second thread idle.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = ThreadCountingEncoder(tiny_bert)
        embedder = ChunkEmbedder(tiny_loaded(encoder), "late", window_overlap=6, parallel_batches=2)
        embedder.embed(make_docs(8, (20,)))
        embedder.embed(make_docs(8, (20, 20, 20)), parallel=False)
        assert encoder.threads == [2, 2] and torch.get_num_threads() == 1
        encoder.threads.clear()
        embedder.max_tokens = 22  # three one-sequence batches: shared out, one thread each
        embedder.embed(make_docs(8, (20, 20, 20)))
        assert encoder.threads == [1, 1, 1]
    finally:
        torch.set_num_threads(before)


class FailingEncoder(torch.nn.Module):
    """Takes ``seconds`` per forward, counts calls and forwards in flight, and fails on call ``fail_on``."""

    def __init__(self, encoder: torch.nn.Module, fail_on: int, seconds: float) -> None:
        super().__init__()
        self.encoder, self.fail_on, self.seconds = encoder, fail_on, seconds
        self.calls, self.running, self.lock = 0, 0, threading.Lock()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        with self.lock:
            self.calls += 1
            self.running += 1
            call = self.calls
        try:
            time.sleep(self.seconds)
            if call == self.fail_on:
                raise RuntimeError("the encoder broke")
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            with self.lock:
                self.running -= 1


def test_a_failing_batch_cancels_the_batches_not_started_and_waits_for_the_running_ones(tiny_bert) -> None:
    docs = make_docs(6, (30,) * 24)
    encoder = FailingEncoder(tiny_bert, fail_on=2, seconds=0.05)
    embedder = ChunkEmbedder(tiny_loaded(encoder), "late", window_overlap=6, max_tokens=32, parallel_batches=2)
    with pytest.raises(RuntimeError, match="the encoder broke"):
        embedder.embed(docs)
    assert encoder.running == 0  # nothing still runs when the error reaches the caller (a retry may follow)
    calls = encoder.calls
    assert calls < 24  # 24 one-sequence batches; most never started
    time.sleep(0.2)
    assert encoder.calls == calls
    encoder.fail_on = 0
    assert embedder.embed(docs[:2]).shape == (sum(len(spans) for _, spans in docs[:2]), DIM)


def test_output_follows_input_order_when_documents_are_reordered(tiny_bert) -> None:
    docs = make_docs(1, DOCS_LENGTHS)
    embedder = ChunkEmbedder(tiny_loaded(tiny_bert), "late", window_overlap=6, max_tokens=120, max_sequences=4)
    forward = embedder.embed(docs)
    backward = embedder.embed(docs[::-1])
    counts = [len(spans) for _, spans in docs]
    blocks = np.split(forward, np.cumsum(counts)[:-1])
    np.testing.assert_allclose(backward, np.concatenate(blocks[::-1]), atol=1e-5)


def test_naive_embeddings_are_the_mean_over_each_framed_chunk(tiny_bert) -> None:
    docs = make_docs(2, (20, 60))
    docs.append((list(range(1, 61)), [(0, 60), (50, 60)]))  # a chunk longer than the window is truncated
    embedder = ChunkEmbedder(tiny_loaded(tiny_bert), "naive", max_tokens=150, max_sequences=5)
    expected = np.concatenate([naive_reference(tiny_bert, ids, spans, FRAME) for ids, spans in docs])
    assert_same_vectors(embedder.embed(docs), expected)


def test_document_prefix_tokens_are_context_but_not_part_of_any_span(tiny_bert) -> None:
    frame = Frame((CLS,), (7, 8, 9), (SEP,))
    docs = make_docs(3, (10, 36, 80))
    embedder = ChunkEmbedder(tiny_loaded(tiny_bert, frame), "late", window_overlap=6, max_tokens=500)
    vectors = embedder.embed(docs)
    expected = np.concatenate([late_reference(tiny_bert, ids, spans, frame, 6) for ids, spans in docs])
    assert_same_vectors(vectors, expected)
    # the prefix does shape the vectors (it is in every input): without it they differ
    plain = ChunkEmbedder(tiny_loaded(tiny_bert), "late", window_overlap=6, max_tokens=500).embed(docs)
    assert not np.allclose(plain, vectors, atol=1e-3)


def test_stats_count_sequences_tokens_and_padding(tiny_bert) -> None:
    docs = make_docs(4, (10, 20, 30))
    embedder = ChunkEmbedder(tiny_loaded(tiny_bert), "late", window_overlap=6, max_tokens=64, max_sequences=8)
    embedder.embed(docs)
    stats = embedder.stats.as_dict()
    assert stats["sequences"] == 3
    assert stats["tokens"] == (10 + 2) + (20 + 2) + (30 + 2)
    assert stats["padded_tokens"] >= stats["tokens"]
    assert stats["forwards"] == 2  # lengths 32, 22, 12: 2 * 32 = 64 fits the budget, a third would not
    assert stats["seconds"] > 0


def test_documents_without_spans_add_no_rows(tiny_bert) -> None:
    embedder = ChunkEmbedder(tiny_loaded(tiny_bert), "late", window_overlap=6)
    assert embedder.embed([]).shape == (0, DIM)
    docs = make_docs(5, (15,))
    alone = embedder.embed(docs)
    with_empty = embedder.embed([([1, 2, 3], []), *docs, ([], [])])
    np.testing.assert_allclose(with_empty, alone, atol=1e-6)


def test_unknown_mode_is_named(tiny_bert) -> None:
    with pytest.raises(ValueError, match=r"embedding\.mode.*'fast'"):
        ChunkEmbedder(tiny_loaded(tiny_bert), "fast").embed(make_docs(6, (5,)))


def test_a_batch_without_padding_runs_without_a_mask_and_equals_the_reference(tiny_bert) -> None:
    # Two documents of the same length fill one unpadded batch: the forward gets no attention mask.
    docs = [(list(range(5, 25)), [(0, 7), (7, 20)]), (list(range(30, 50)), [(0, 20)])]
    embedder = ChunkEmbedder(tiny_loaded(tiny_bert))
    masks = []
    handle = tiny_bert.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    try:
        vectors = embedder.embed(docs)
    finally:
        handle.remove()
    assert masks == [None]
    expected = np.concatenate([late_reference(tiny_bert, ids, spans, FRAME, 8) for ids, spans in docs])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_the_autocast_path_runs_the_forward_in_bf16_over_fp32_weights_and_stays_close(tiny_bert) -> None:
    """The CUDA path (fp32 weights, each forward under autocast) exercised on CPU, where autocast also exists:
    the encoder's matmuls run in bf16, the weights stay fp32, and the vectors stay close to the fp32 ones."""
    docs = make_docs(3, DOCS_LENGTHS)
    exact = ChunkEmbedder(tiny_loaded(tiny_bert), "late", window_overlap=6).embed(docs)
    loaded = dataclasses.replace(tiny_loaded(tiny_bert), dtype="bfloat16", autocast=True)
    seen = []
    linear = next(m for m in tiny_bert.modules() if isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    try:
        mixed = ChunkEmbedder(loaded, "late", window_overlap=6).embed(docs)
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert next(tiny_bert.parameters()).dtype == torch.float32
    assert mixed.dtype == np.float32 and (mixed * exact).sum(axis=1).min() >= 0.99


def test_auto_dtype_is_bf16_on_cuda_that_supports_it_else_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.model import pick_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert pick_dtype("auto", "cuda") == "bfloat16" and pick_dtype("auto", "cuda:1") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert pick_dtype("auto", "cuda") == "float16"
    assert pick_dtype("float32", "cuda") == "float32"


def test_large_allocations_are_returned_to_the_os_on_glibc() -> None:
    import platform

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert release_freed_memory() is glibc
    assert resident_bytes() > 0 if platform.system() == "Linux" else resident_bytes() >= 0


@pytest.mark.parametrize("parallel_batches", [1, 3])
def test_a_cpu_embedder_trims_the_heap_once_its_resident_memory_grew(
    tiny_bert, monkeypatch: pytest.MonkeyPatch, parallel_batches: int
) -> None:
    """The first micro-batch trims; a later one only once the resident set grew more than the slack since the
    last trim. Trimming after every micro-batch cost 10% of the embedding time in page faults; trimming once
    per block let the actor's peak grow with the corpus (benchmarks/heap_trim.py)."""
    from pipeline import embedding

    resident = [0]
    trims: list[int] = []
    monkeypatch.setattr(embedding, "resident_bytes", lambda: resident[0])
    monkeypatch.setattr(embedding, "release_freed_memory", lambda: trims.append(resident[0]) or True)
    embedder = ChunkEmbedder(
        tiny_loaded(tiny_bert), "late", window_overlap=6, max_tokens=40, parallel_batches=parallel_batches
    )
    docs = make_docs(0, DOCS_LENGTHS)
    embedder.embed(docs)
    assert embedder.stats.forwards > 4 and trims == [0]  # flat: only the first micro-batch trimmed
    resident[0] = embedding.FREE_HEAP_SLACK
    embedder.embed(docs)
    assert trims == [0]  # grown by the slack, not past it
    resident[0] = embedding.FREE_HEAP_SLACK + 1
    embedder.embed(docs)
    assert trims == [0, embedding.FREE_HEAP_SLACK + 1] and embedder.heap_trimmer.trims == 2
