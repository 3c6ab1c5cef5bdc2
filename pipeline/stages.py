"""Thin Ray stages: convert Arrow <-> plain values and call the pure core. None of them mutates its input.

- :func:`read_documents`   objects (path, root, size, etag, known_*) -> ``schema.DOCUMENTS``  (Ray tasks)
- :func:`chunk_documents`  ``DOCUMENTS`` -> ``CHUNKED_DOCUMENTS`` (tokens + spans + fingerprint) (Ray tasks)
- :class:`EmbedChunks`     ``CHUNKED_DOCUMENTS`` -> ``embedded_schema(dim)``, one row per chunk  (actor pool)

Rows of skipped documents (``error`` set) travel through every stage untouched so the sink can count and
report them; a document whose embedding fails is turned into such a row (``embed_failed``) and the rest of its
batch goes on. Every stage reports counters to the run's :class:`RunStats` with the same names: each timed
step as ``<step>_s`` (wall seconds) and ``<step>_cpu_s`` (CPU seconds of its process, all threads).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema
from pipeline.chunking import Span, chunk_spans, token_spans_for_chars
from pipeline.config import BatchingConfig, ChunkingConfig, EmbeddingConfig, ModelConfig, SourceConfig
from pipeline.model import load_model, load_tokenizer, raw_tokenizer, resolve_model_path
from pipeline.sources import read_objects

# Counter-name prefix of the rows each source object gave (``object_rows:<uri>``): the driver compares it with
# the rows that reached it to tell which objects are done, for the progress line.
OBJECT_ROWS = "object_rows:"
# Counter-name prefix of the actors that computed in a dtype (``compute_dtype:bfloat16`` = how many did).
COMPUTE_DTYPE = "compute_dtype:"
# Counter-name prefix of the actors that ran with an allocator (``allocator:jemalloc`` = how many did).
ALLOCATOR = "allocator:"


class RunStats:
    """Counters and timers summed over all stages of a run (a Ray actor in a real run, plain object in tests).
    The ``object_rows:`` counts are facts, not increments (a retried read reports the same count): they are
    kept apart, in the order reported, so the driver can fetch only the ones it has not seen (a source of a
    million objects would otherwise ship all their counts on every progress line)."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = defaultdict(float)
        self.object_rows: list[tuple[str, float]] = []  # (object path, records), in the order reported

    def add(self, counters: dict[str, float]) -> None:
        for name, value in counters.items():
            if name.startswith(OBJECT_ROWS):
                self.object_rows.append((name[len(OBJECT_ROWS) :], value))
            else:
                self.counters[name] += value

    def poll(self, seen: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
        """The summed counters and the object record counts reported after the first ``seen`` of them."""
        return dict(self.counters), self.object_rows[seen:]


class Stopwatch:
    """Wall and CPU seconds since it was (re)started. CPU is this process's, all threads together
    (``time.process_time``): for an embedding actor, its forward threads; beside the wall time it shows how
    busy a step kept its cores, and on a shared machine how much CPU the rest of the pipeline took from it."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    @property
    def cpu_s(self) -> float:
        return time.process_time() - self._cpu

    def elapsed(self, step: str) -> dict[str, float]:
        """``{"<step>_s": wall seconds, "<step>_cpu_s": CPU seconds}`` since the last (re)start."""
        return {f"{step}_s": time.perf_counter() - self._wall, f"{step}_cpu_s": self.cpu_s}


def report(stats: Any, counters: dict[str, float]) -> None:
    """Send counters to ``stats`` (an actor handle, a :class:`RunStats`, or ``None``) without waiting."""
    if stats is None:
        return
    if hasattr(stats.add, "remote"):
        stats.add.remote(counters)
    else:
        stats.add(counters)


def read_documents(
    objects: pa.Table, source: SourceConfig, settings_digest: str = "", stats: Any = None
) -> Iterator[pa.Table]:
    """Read source objects (rows of :func:`pipeline.sources.objects_table`, each with the fingerprints the
    table holds for that object's documents) into document tables (see :func:`pipeline.sources.read_objects`)."""
    watch = Stopwatch()

    def object_read(path: str, rows: int) -> None:
        report(stats, {OBJECT_ROWS + path: rows})

    for table in read_objects(objects, source, settings_digest, object_read):
        report(stats, {"docs_in": table.num_rows, **watch.elapsed("read")})
        yield table
        watch.restart()
    report(stats, {"objects_read": objects.num_rows})


_KNOWN_CACHE: dict[str, Any] = {}


def resolve_known(known: Any) -> Any:
    """Fetch known fingerprints (``doc_id -> fingerprint``: anything with ``get``) from the object store once per
    worker process; what is not an object reference is returned as it is."""
    if type(known).__name__ != "ObjectRef":
        return known
    key = known.hex()
    if key not in _KNOWN_CACHE:
        import ray

        _KNOWN_CACHE.clear()
        _KNOWN_CACHE[key] = ray.get(known)
    return _KNOWN_CACHE[key]


@dataclass(frozen=True)
class ChunkSettings:
    """What the chunk stage needs: the tokenizer's model, the chunker and, from :func:`chunk_settings`, the
    driver's tokenizer serialised (``tokenizers`` JSON)."""

    model: ModelConfig
    chunking: ChunkingConfig
    tokenizer_json: str | None = None


def chunk_settings(model: ModelConfig, chunking: ChunkingConfig) -> ChunkSettings:
    """Settings that carry the tokenizer as loaded here (through transformers, which may adjust tokenizer.json
    from tokenizer_config.json). The workers rebuild exactly that tokenizer from its JSON with the ``tokenizers``
    library alone: loading it through transformers would import torch in every tokenizing worker (a second or
    two of CPU and 100+ MiB each)."""
    return ChunkSettings(model, chunking, _tokenizer_of_model(model).to_str())


def _document_tokenizer(settings: ChunkSettings) -> Any:
    if settings.tokenizer_json is not None:
        return _tokenizer_from_json(settings.tokenizer_json)
    return _tokenizer_of_model(settings.model)


@lru_cache(maxsize=2)
def _tokenizer_from_json(tokenizer_json: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def _tokenizer_of_model(model: ModelConfig) -> Any:
    options = json.dumps(model.storage_options, sort_keys=True, default=str)
    return _cached_tokenizer(model.name_or_path, model.revision, model.trust_remote_code, options)


@lru_cache(maxsize=4)
def _cached_tokenizer(name_or_path: str, revision: str | None, trust_remote_code: bool, options: str) -> Any:
    path = resolve_model_path(name_or_path, json.loads(options))
    return raw_tokenizer(load_tokenizer(path, revision, trust_remote_code))


def chunk_documents(batch: pa.Table, settings: ChunkSettings, stats: Any = None) -> pa.Table:
    """Tokenize each good document (no special tokens, char offsets) and attach its chunk spans. A document
    without tokens becomes a ``no_tokens`` skip. Input columns: ``DOCUMENTS``, optionally ``char_starts`` /
    ``char_ends`` with chunk ranges to keep (see :func:`_spans_of`)."""
    schema.require_columns(batch, schema.DOCUMENTS, "chunk_documents")
    watch = Stopwatch()
    rows = batch.to_pylist()
    good = [row for row in rows if row[schema.ERROR] is None]
    tokens = 0
    for row, encoding in zip(good, _tokenize(settings, good)):
        if encoding is None:
            continue
        spans = _spans_of(row, encoding.offsets, settings.chunking)
        if not spans:
            row.update({schema.ERROR: "no_tokens", schema.ERROR_DETAIL: "the tokenizer found no tokens"})
            continue
        empty = [(i, s) for i, s in enumerate(spans) if s.token_end == s.token_start]
        if empty:
            i, span = empty[0]
            detail = (
                f"stored chunk {i} [{span.char_start}:{span.char_end}] has no tokens under this model's tokenizer; "
                "re-embed with other chunking settings to chunk afresh"
            )
            row.update({schema.ERROR: "span_without_tokens", schema.ERROR_DETAIL: detail})
            continue
        tokens += len(encoding.ids)
        _attach_chunks(row, encoding.ids, spans)
    for row in rows:
        for column in (schema.INPUT_IDS, schema.CHAR_STARTS, schema.CHAR_ENDS, schema.TOKEN_STARTS, schema.TOKEN_ENDS):
            row.setdefault(column, [])
    report(stats, {"tokens": tokens, **watch.elapsed("chunk")})
    return pa.Table.from_pylist(rows, schema=schema.CHUNKED_DOCUMENTS)


def _tokenize(settings: ChunkSettings, rows: list[dict[str, Any]]) -> list[Any]:
    """Encodings of the rows' texts (in parallel); if the batch fails, one by one, and a document whose
    tokenizing fails is marked ``tokenize_failed`` (its encoding is ``None``)."""
    tokenizer = _document_tokenizer(settings)
    try:
        return tokenizer.encode_batch([row[schema.TEXT] for row in rows], add_special_tokens=False)
    except Exception:
        encodings = []
        for row in rows:
            try:
                encodings.append(tokenizer.encode(row[schema.TEXT], add_special_tokens=False))
            except Exception as exc:
                row[schema.ERROR], row[schema.ERROR_DETAIL] = "tokenize_failed", f"{type(exc).__name__}: {exc}"
                encodings.append(None)
        return encodings


def _spans_of(row: dict[str, Any], offsets: list[tuple[int, int]], chunking: ChunkingConfig) -> list[Span]:
    """The chunker's spans; or, for a row that brings its chunks' char ranges (a re-embed keeping the stored
    chunks), those ranges with this tokenizer's token offsets."""
    if row.get(schema.CHAR_STARTS):
        return token_spans_for_chars(offsets, list(zip(row[schema.CHAR_STARTS], row[schema.CHAR_ENDS])))
    return chunk_spans(row[schema.TEXT], offsets, **_chunk_args(chunking))


def _chunk_args(chunking: ChunkingConfig) -> dict[str, Any]:
    return {
        "strategy": chunking.strategy,
        "size": chunking.size,
        "overlap": chunking.overlap,
        "sentences_per_chunk": chunking.sentences_per_chunk,
        "min_tokens": chunking.min_tokens,
    }


def _attach_chunks(row: dict[str, Any], ids: list[int], spans: list) -> None:
    row[schema.INPUT_IDS] = ids
    row[schema.CHAR_STARTS] = [s.char_start for s in spans]
    row[schema.CHAR_ENDS] = [s.char_end for s in spans]
    row[schema.TOKEN_STARTS] = [s.token_start for s in spans]
    row[schema.TOKEN_ENDS] = [s.token_end for s in spans]


class EmbedChunks:
    """Actor stage: loads the model once, then turns chunked documents into chunk rows with vectors."""

    def __init__(
        self,
        model: ModelConfig,
        embedding: EmbeddingConfig,
        batching: BatchingConfig,
        torch_threads: int | None = None,
        stats: Any = None,
        parallel_batches: int = 1,
    ) -> None:
        from pipeline.allocator import limit_onednn_cache, running_allocator

        watch = Stopwatch()
        limit_onednn_cache()  # before torch builds its first CPU kernel in this process
        # torch is imported here, in the actor, and not at module level: the reading and tokenizing workers
        # import this module too, and torch would cost each of them about a second of CPU and 100+ MiB.
        import torch

        from pipeline.embedding import ChunkEmbedder, HeapTrimmer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        loaded = load_model(model, embedding.document_prefix)
        # What this process runs with, not what was asked for: a Ray lateline did not start keeps its own.
        allocator = running_allocator()
        embedder = ChunkEmbedder(
            loaded,
            embedding.mode,
            embedding.window_overlap,
            batching.max_tokens,
            batching.max_sequences,
            parallel_batches=parallel_batches,
            heap_trimmer=HeapTrimmer() if allocator == "glibc" else None,
        )
        self._use(embedder, stats)
        # Each actor resolves ``model.dtype: auto`` on its own hardware; the summary lists what they computed in.
        report(stats, {**watch.elapsed("model_load"), COMPUTE_DTYPE + loaded.dtype: 1, ALLOCATOR + allocator: 1})

    @classmethod
    def with_embedder(cls, embedder: Any, stats: Any = None) -> EmbedChunks:
        """A stage around an embedder that is already built (tests: a tiny model, no files)."""
        stage = cls.__new__(cls)
        stage._use(embedder, stats)
        return stage

    def _use(self, embedder: Any, stats: Any) -> None:
        self.loaded = embedder.model
        self.embedder = embedder
        self.output_schema = schema.embedded_schema(self.loaded.identity.dim)
        self.stats = stats

    def __call__(self, batch: pa.Table) -> pa.Table:
        schema.require_columns(batch, schema.CHUNKED_DOCUMENTS, "EmbedChunks")
        watch = Stopwatch()
        before = self.embedder.stats.as_dict()
        rows = batch.to_pylist()
        good = [row for row in rows if row[schema.ERROR] is None]
        vectors, failed = self._embed(good)
        chunk_rows = [r for row in good if id(row) not in failed for r in self._chunk_rows(row)]
        skip_rows = [self._skip_row(row) for row in rows if row[schema.ERROR] is not None or id(row) in failed]
        table = self._table(chunk_rows, vectors, skip_rows)
        after = self.embedder.stats.as_dict()
        counters = {f"forward_{k}": after[k] - before[k] for k in after}
        # embed_s: the forward passes' wall time; embed_cpu_s: the actor's CPU over the whole call (its
        # forward threads, pooling, and turning rows into Arrow), which a shared machine's other work slows.
        embed = {"embed_s": counters.pop("forward_seconds"), "embed_cpu_s": watch.cpu_s}
        report(self.stats, {**counters, **embed, "chunks_out": len(chunk_rows)})
        return table

    def _embed(self, rows: list[dict[str, Any]]) -> tuple[np.ndarray, dict[int, str]]:
        """Vectors of all spans of ``rows``; on an error, embed document by document and mark the failures."""
        try:
            return self.embedder.embed([_doc_input(row) for row in rows]), {}
        except Exception:
            from pipeline.embedding import is_out_of_memory

            failed: dict[int, str] = {}
            parts = []
            for row in rows:
                try:
                    # One batch at a time: a document is dead-lettered as out of memory only if it does not
                    # fit alone, not because other batches held memory beside it.
                    parts.append(self.embedder.embed([_doc_input(row)], parallel=False))
                except Exception as exc:
                    failed[id(row)] = f"{type(exc).__name__}: {exc}"
                    reason = "out_of_memory" if is_out_of_memory(exc) else "embed_failed"
                    row[schema.ERROR], row[schema.ERROR_DETAIL] = reason, failed[id(row)][:500]
            dim = self.loaded.identity.dim
            return (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)), failed

    def _chunk_rows(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        spans = list(
            zip(row[schema.CHAR_STARTS], row[schema.CHAR_ENDS], row[schema.TOKEN_STARTS], row[schema.TOKEN_ENDS])
        )
        for index, (char_start, char_end, token_start, token_end) in enumerate(spans):
            yield {
                schema.CHUNK_ID: schema.chunk_id(row[schema.DOC_ID], index),
                schema.DOC_ID: row[schema.DOC_ID],
                schema.CHUNK_INDEX: index,
                schema.CHUNK_COUNT: len(spans),
                schema.TEXT: row[schema.TEXT][char_start:char_end],
                schema.CHAR_START: char_start,
                schema.CHAR_END: char_end,
                schema.TOKEN_START: token_start,
                schema.TOKEN_END: token_end,
                schema.MODEL: self.loaded.identity.label,
                schema.DOC_FINGERPRINT: row[schema.DOC_FINGERPRINT],
                schema.SOURCE_URI: row[schema.SOURCE_URI],
                schema.LOCATION: row[schema.LOCATION],
                schema.METADATA: row[schema.METADATA],
                schema.CONTENT_SHA256: row[schema.CONTENT_SHA256],
            }

    @staticmethod
    def _skip_row(row: dict[str, Any]) -> dict[str, Any]:
        return {
            schema.CHUNK_ID: f"skip:{row[schema.SOURCE_URI]}:{row[schema.DOC_ID]}",
            schema.DOC_ID: row[schema.DOC_ID] or "",
            schema.CHUNK_INDEX: -1,
            schema.CHUNK_COUNT: 0,
            schema.SOURCE_URI: row[schema.SOURCE_URI],
            schema.LOCATION: row[schema.LOCATION],
            schema.DOC_FINGERPRINT: row[schema.DOC_FINGERPRINT],
            schema.ERROR: row[schema.ERROR],
            schema.ERROR_DETAIL: row[schema.ERROR_DETAIL],
            schema.SNIPPET: row[schema.SNIPPET],
        }

    def _table(self, chunk_rows: list[dict], vectors: np.ndarray, skip_rows: list[dict]) -> pa.Table:
        dim = self.loaded.identity.dim
        without_vector = pa.schema([f for f in self.output_schema if f.name != schema.VECTOR])
        chunks = pa.Table.from_pylist(chunk_rows, schema=without_vector)
        vector_type = self.output_schema.field(schema.VECTOR).type
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        chunks = chunks.append_column(schema.VECTOR, pa.FixedSizeListArray.from_arrays(flat, dim))
        skips = pa.Table.from_pylist(skip_rows, schema=without_vector)
        skips = skips.append_column(schema.VECTOR, pa.nulls(len(skip_rows), vector_type))
        return pa.concat_tables([chunks, skips]).select(self.output_schema.names).cast(self.output_schema)


def _doc_input(row: dict[str, Any]) -> tuple[list[int], list[tuple[int, int]]]:
    return row[schema.INPUT_IDS], list(zip(row[schema.TOKEN_STARTS], row[schema.TOKEN_ENDS]))


def split_skips(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``(chunk rows: the stored columns and location, skipped-document rows)`` of an :class:`EmbedChunks`
    output. The sink keeps only the stored columns; the location names a duplicate copy it drops."""
    is_skip = pc.is_valid(table[schema.ERROR])
    chunks = table.filter(pc.invert(is_skip)).drop_columns([schema.ERROR, schema.ERROR_DETAIL, schema.SNIPPET])
    return chunks, table.filter(is_skip)
