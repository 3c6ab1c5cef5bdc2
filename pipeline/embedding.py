"""Run an :class:`~pipeline.pooling.EncodePlan` through the encoder: pack, forward, pool, normalise.

No Ray here: the embedding stage and ``lateline search`` both call :class:`ChunkEmbedder`. Sequences are
length-sorted and packed to a token budget; each micro-batch runs under ``torch.inference_mode`` (autocast to
the chosen dtype) and only its pooled piece sums leave the device, so memory does not grow with the input.
On CPUs, several micro-batches can run at once, each in its own thread with single-threaded torch ops
(``parallel_batches``): for a small encoder that beats one batch at a time spread over all cores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from pipeline.batching import pack_by_token_budget
from pipeline.model import LoadedModel, raw_tokenizer
from pipeline.pooling import EncodePlan, Piece, l2_normalize, piece_sums, plan_late, plan_naive

FREE_HEAP_SLACK = 128 * 2**20  # resident growth a CPU actor allows between heap trims (see HeapTrimmer)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class OutOfMemory(RuntimeError):
    """A single sequence does not fit in device memory even alone."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, a CPU allocation failure, or an error whose message says out of memory."""
    if isinstance(exc, MemoryError | OutOfMemory) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@lru_cache(maxsize=1)
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def release_freed_memory() -> bool:
    """Hand the memory glibc holds after ``free`` back to the OS (``malloc_trim``). Returns False where this is
    not glibc."""
    libc = _libc()
    return libc is not None and libc.malloc_trim(0) is not None


def resident_bytes() -> int:
    """This process's resident set (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE_BYTES
    except OSError:
        return 0


@dataclass
class HeapTrimmer:
    """Trims the heap (:func:`release_freed_memory`) after a CPU micro-batch once the process's resident memory
    has grown more than ``slack_bytes`` since the last trim (the first micro-batch always trims).

    Each CPU forward allocates and frees activations of varied shapes; glibc keeps what is freed, and the heap
    fragments and creeps up with every new shape: kept, it let an actor's peak follow the heaviest block, so
    peak memory grew with the corpus (10x the corpus, 1.29x the peak). Trimming after every micro-batch kept it
    flat but made the next forward fault every handed-back page in again (1.6-1.8M page faults per 512 late-mode
    documents, at about 4 us each on the development VM, 10% of the embedding time; benchmarks/heap_trim.py).
    Trimming on growth only pays when the heap actually crept; it still cost 8-10% of the CPU of the forward
    pass, so a local Ray runs on jemalloc by default and actors use this only on glibc (pipeline.allocator).
    Thread-safe: micro-batches run in threads."""

    slack_bytes: int = FREE_HEAP_SLACK
    trims: int = 0
    _resident_after_trim: int | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def after_micro_batch(self) -> bool:
        """Trim if the resident set grew past the slack since the last trim; True when it trimmed."""
        with self._lock:
            last = self._resident_after_trim
            if last is not None and resident_bytes() - last <= self.slack_bytes:
                return False
            release_freed_memory()
            self._resident_after_trim = resident_bytes()
            self.trims += 1
            return True


def _release_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class ForwardStats:
    """Counters of the forward passes one embedder ran (summed into the run summary). ``seconds``: wall time
    spent running plans (micro-batches that ran at once are counted once)."""

    forwards: int = 0
    sequences: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    oom_splits: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class ChunkEmbedder:
    """Embeds chunks of tokenized documents in ``late`` or ``naive`` mode with a loaded model."""

    model: LoadedModel
    mode: str = "late"
    window_overlap: int = 64
    max_tokens: int = 4096
    max_sequences: int = 256
    parallel_batches: int = 1
    stats: ForwardStats = field(default_factory=ForwardStats)
    _stats_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False, compare=False)
    # None: no trims (jemalloc keeps its heap flat itself; see pipeline.allocator).
    heap_trimmer: HeapTrimmer | None = field(default_factory=HeapTrimmer, repr=False, compare=False)

    def plan(self, docs: Sequence[tuple[Sequence[int], Sequence[tuple[int, int]]]]) -> EncodePlan:
        """The sequences and pieces for ``docs`` (each ``(input_ids, token spans)``) in this embedder's mode."""
        capacity = self.model.frame.capacity(self.model.max_length)
        if self.mode == "late":
            return plan_late(docs, self.model.frame, capacity, self.window_overlap)
        if self.mode == "naive":
            # Late chunking pools spans by their mean whatever the model states (it is meant for mean-pooled
            # encoders; describe_model warns otherwise); whole inputs are pooled the model's own way.
            pooling = "cls" if self.model.identity.pooling == "cls" else "mean"
            return plan_naive(docs, self.model.frame, capacity, pooling)
        raise ValueError(f"embedding.mode: unknown mode {self.mode!r} (allowed: late, naive)")

    def __post_init__(self) -> None:
        # On a GPU, batches at once would only compete for the same device; custom model code may not be
        # thread-safe (see LoadedModel.custom_code).
        if self.model.device.startswith("cuda") or self.model.custom_code:
            self.parallel_batches = 1

    def embed(
        self, docs: Sequence[tuple[Sequence[int], Sequence[tuple[int, int]]]], parallel: bool = True
    ) -> np.ndarray:
        """One L2-normalised float32 vector per span, documents in order, spans in order: ``[n_spans, dim]``.
        ``parallel=False`` runs one micro-batch at a time whatever ``parallel_batches`` says (a retry after an
        out-of-memory error must not share memory with other batches)."""
        return self.run(self.plan(docs), parallel)

    def run(self, plan: EncodePlan, parallel: bool = True) -> np.ndarray:
        """Execute a plan; returns normalised mean vectors of its items, in item order. Piece sums are added
        in micro-batch order whatever order the batches finish in, so the vectors do not depend on timing."""
        started = time.perf_counter()
        try:
            return self._run(plan, parallel)
        finally:
            self.stats.seconds += time.perf_counter() - started

    def _run(self, plan: EncodePlan, parallel: bool) -> np.ndarray:
        dim = self.model.identity.dim
        sums = torch.zeros(len(plan.item_tokens), dim, dtype=torch.float32)
        pieces_by_sequence: list[list[Piece]] = [[] for _ in plan.sequences]
        for piece in plan.pieces:
            pieces_by_sequence[piece.sequence].append(piece)
        lengths = [len(seq) for seq in plan.sequences]
        on_cpu = not self.model.device.startswith("cuda")

        def forward(batch: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            results = self._forward_or_split(plan.sequences, batch, pieces_by_sequence)
            if on_cpu and self.heap_trimmer is not None:
                self.heap_trimmer.after_micro_batch()
            return results

        batches = pack_by_token_budget(lengths, self.max_tokens, self.max_sequences)
        for results in self._in_order(forward, batches, parallel):
            for items, batch_sums in results:
                sums.index_add_(0, items, batch_sums)
        counts = torch.tensor(plan.item_tokens, dtype=torch.float32).clamp(min=1).unsqueeze(1)
        return l2_normalize((sums / counts).numpy())

    def _in_order(
        self, function: Callable[[list[int]], Any], batches: list[list[int]], parallel: bool
    ) -> Iterator[Any]:
        """``function`` over ``batches``, results in batch order, up to ``parallel_batches`` running at once.
        If one raises, the batches not started are cancelled and the running ones finish before the error
        propagates, so a retry never races with leftovers. Batches that run one at a time while the embedder
        could run several (too few batches to share out, or ``parallel=False``) get all of its threads."""
        if self.parallel_batches <= 1:
            yield from map(function, batches)
            return
        if not parallel or len(batches) < self.parallel_batches:
            with torch_threads(torch.get_num_threads() * self.parallel_batches):
                yield from map(function, batches)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parallel_batches, thread_name_prefix="lateline-forward")
        futures: list[Future] = [self._pool.submit(function, batch) for batch in batches]
        try:
            for future in futures:
                yield future.result()
        finally:
            _cancel_and_wait(futures)

    def _forward_or_split(
        self, sequences: list[list[int]], batch: list[int], pieces_by_sequence: list[list[Piece]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Forward ``batch``; on out-of-memory, halve it and retry each half. A single sequence that still
        does not fit raises :class:`OutOfMemory`, so the caller can dead-letter just its document."""
        pieces = [p for index in batch for p in pieces_by_sequence[index]]
        if not pieces:
            return []
        try:
            return [self._forward(sequences, batch, pieces)]
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _release_device_memory()
            if len(batch) == 1:
                raise OutOfMemory(f"one {len(sequences[batch[0]])}-token sequence does not fit: {exc}") from exc
            with self._stats_lock:
                self.stats.oom_splits += 1
            half = len(batch) // 2
            return [
                *self._forward_or_split(sequences, batch[:half], pieces_by_sequence),
                *self._forward_or_split(sequences, batch[half:], pieces_by_sequence),
            ]

    def _forward(
        self, sequences: list[list[int]], batch: list[int], pieces: list[Piece]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = self._pad([sequences[i] for i in batch])
        row_of = {sequence: row for row, sequence in enumerate(batch)}
        rows = torch.tensor([row_of[p.sequence] for p in pieces], device=input_ids.device)
        starts = torch.tensor([p.start for p in pieces], device=input_ids.device)
        ends = torch.tensor([p.end for p in pieces], device=input_ids.device)
        with torch.inference_mode(), self._autocast():
            hidden = self.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            batch_sums = piece_sums(hidden, rows, starts, ends).to("cpu", non_blocking=False)
        self._count(batch, sequences, input_ids.shape)
        return torch.tensor([p.item for p in pieces]), batch_sums

    def _pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Input ids ``[B, longest]`` and the attention mask, or ``None`` for a batch without padding: an
        absent mask lets scaled-dot-product attention take its fast path (about 7% faster on CPU). Models with
        custom code (``trust_remote_code``) always get the mask: they may not accept ``None``."""
        longest = max(len(seq) for seq in sequences)
        pad_id = self.model.tokenizer.pad_token_id or 0
        ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        pin = self.model.device.startswith("cuda")
        if pin:
            ids, mask = ids.pin_memory(), mask.pin_memory()
        unpadded = not self.model.custom_code and all(len(seq) == longest for seq in sequences)
        device_mask = None if unpadded else mask.to(self.model.device, non_blocking=pin)
        return ids.to(self.model.device, non_blocking=pin), device_mask

    def _autocast(self) -> torch.autocast:
        device_type = "cuda" if self.model.device.startswith("cuda") else "cpu"
        return torch.autocast(
            device_type=device_type, dtype=_TORCH_DTYPES[self.model.dtype], enabled=self.model.autocast
        )

    def _count(self, batch: list[int], sequences: list[list[int]], shape: torch.Size) -> None:
        tokens = sum(len(sequences[i]) for i in batch)
        with self._stats_lock:  # forwards may run in several threads
            self.stats.forwards += 1
            self.stats.sequences += len(batch)
            self.stats.tokens += tokens
            self.stats.padded_tokens += int(shape[0] * shape[1])


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's thread count in this thread set to ``threads`` for the block, then restored. Threads started
    earlier (a pool's) took their count when they first ran an op and keep it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cancel_and_wait(futures: Iterable[Future]) -> None:
    pending = [future for future in futures if not future.cancel()]
    wait(pending)


def embed_queries(model: LoadedModel, queries: Sequence[str], prefix: str = "") -> np.ndarray:
    """Query vectors the way the model was trained to embed a sentence: one input each (truncated to the
    window), mean over all its tokens including special tokens, L2-normalised."""
    backend = raw_tokenizer(model.tokenizer)
    docs = []
    for query in queries:
        ids = backend.encode(prefix + query, add_special_tokens=False).ids
        docs.append((ids, [(0, max(len(ids), 1))]))
    query_model = dataclasses.replace(model, frame=model.frame._replace(prefix=()))
    return ChunkEmbedder(query_model, mode="naive").embed(docs)
