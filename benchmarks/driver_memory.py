"""What a run's driver holds per document, measured: the sink and the tally driven through a synthetic corpus
exactly as ``runner.stream_into_sink`` drives them (real LanceDB in a temp dir, no Ray, no model), in two
scenarios, plus the id set alone against a Python set of the same ids.

- ``backfill``: a fresh table, every document written (the sink remembers each id to drop a second copy).
- ``rerun``: the same corpus again into that table, every object changed but every document unchanged (the
  driver holds the table's map of known documents, and remembers each unchanged id).

Memory is what stays allocated after the run, traced by ``tracemalloc`` (Python objects and NumPy arrays)
plus Arrow's allocator, divided by the documents. Corpus: ``--docs`` documents of ``--chunks`` chunks, 250 to
an object, 12-character ids, 32-character fingerprints.

    python benchmarks/driver_memory.py --docs 100000
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import schema  # noqa: E402
from pipeline.config import SinkConfig  # noqa: E402
from pipeline.docids import DocIdSet  # noqa: E402
from pipeline.known import KnownDocuments  # noqa: E402
from pipeline.model import ModelIdentity  # noqa: E402
from pipeline.runner import Tally  # noqa: E402
from pipeline.sink import LanceSink  # noqa: E402
from pipeline.sources import SourceObject, objects_table  # noqa: E402
from pipeline.stages import split_skips  # noqa: E402

DIM = 4  # vectors leave the driver at each commit; their size does not change what it keeps
IDENTITY = ModelIdentity("synthetic", "0", DIM, "mean", 32, "float32", "")
DOCS_PER_OBJECT = 250
BLOCK_DOCS = 256


def doc_id(index: int) -> str:
    return f"doc-{index:08d}"


def object_uri(index: int) -> str:
    return f"s3://bucket/corpus/part-{index // DOCS_PER_OBJECT:06d}.jsonl"


def output_block(first: int, count: int, chunks: int, unchanged: bool) -> pa.Table:
    """An embedding stage's output for documents ``first .. first+count``: their chunk rows, or one
    ``unchanged`` row each."""
    rows = []
    for index in range(first, first + count):
        base = {schema.DOC_ID: doc_id(index), schema.SOURCE_URI: object_uri(index)}
        if unchanged:
            rows.append({**base, schema.ERROR: schema.UNCHANGED})
            continue
        rows.extend(
            {
                **base,
                schema.CHUNK_ID: schema.chunk_id(doc_id(index), position),
                schema.CHUNK_INDEX: position,
                schema.CHUNK_COUNT: chunks,
                schema.TEXT: "text",
                schema.CHAR_START: position,
                schema.CHAR_END: position + 1,
                schema.TOKEN_START: position,
                schema.TOKEN_END: position + 1,
                schema.VECTOR: [1.0] * DIM,
                schema.MODEL: IDENTITY.label,
                schema.DOC_FINGERPRINT: f"{index:032x}",
                schema.CONTENT_SHA256: "c",
            }
            for position in range(chunks)
        )
    return pa.Table.from_pylist(rows, schema=schema.embedded_schema(DIM))


def drive(sink: LanceSink, tally: Tally, docs: int, chunks: int, unchanged: bool) -> None:
    """Feed the sink and the tally as ``runner.stream_into_sink`` does, one block at a time."""
    for first in range(0, docs, BLOCK_DOCS):
        batch = output_block(first, min(BLOCK_DOCS, docs - first), chunks, unchanged)
        tally.add_arrivals(batch)
        written, skips = split_skips(batch)
        tally.add_chunks(written)
        tally.add_skips(sink.keep(skips.to_pylist()))
        tally.add_skips(sink.write(written))
    sink.close()


def retained_bytes(build: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes still allocated (Python, NumPy, Arrow) once ``build`` returned, and what it returned."""
    gc.collect()
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    result = build()
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return traced + pa.total_allocated_bytes() - arrow_before, result


def run_scenario(db: str, docs: int, chunks: int, unchanged: bool) -> dict[str, float]:
    def run() -> tuple[LanceSink, Tally, Any]:
        sink = LanceSink(SinkConfig(uri=db, commit_rows=50_000), IDENTITY, {"chunker": "synthetic"})
        known = sink.known_documents()  # held for the whole run, as runner._execute holds it
        sizes = {object_uri(index): 1 for index in range(0, docs, DOCS_PER_OBJECT)}
        tally = Tally("benchmark", 3600, sizes=sizes)
        sink.keep_documents(tally.unchanged)  # as in an index run: one set of unchanged ids for both
        drive(sink, tally, docs, chunks, unchanged)
        return sink, tally, known

    started = time.perf_counter()
    held, (sink, tally, known) = retained_bytes(run)
    assert len(sink.seen_docs) + len(tally.unchanged) == docs, "every document written or found unchanged once"
    known_bytes, _ = retained_bytes(lambda: sink.known_documents())
    return {
        "bytes_per_doc": held / docs,
        "known_map_bytes_per_doc": known_bytes / docs if len(known) else 0.0,
        "seconds": time.perf_counter() - started,
    }


def alternatives(db: str, docs: int) -> dict[str, float]:
    """Each structure alone against the plain Python one it replaces, on the same documents: the id set
    against a set of ``str`` (as Arrow hands them over), the known-documents map against a dict of ``str``,
    the read tasks' rows of a run that reads every object again against per-object lists of ``str``."""
    ids = pa.array([doc_id(index) for index in range(docs)])
    sink = LanceSink(SinkConfig(uri=db), IDENTITY, {"chunker": "synthetic"})
    known = sink.known_documents()
    objects = [
        SourceObject(object_uri(first), "s3://bucket/corpus/", 1, "etag") for first in range(0, docs, DOCS_PER_OBJECT)
    ]
    figures = {
        "set_of_str": retained_bytes(lambda: set(ids.to_pylist()))[0],
        "doc_id_set": retained_bytes(lambda: DocIdSet(ids.to_pylist()))[0],
        "dict_of_str": retained_bytes(lambda: dict_of_str(known))[0],
        "known_documents": retained_bytes(lambda: sink.known_documents())[0],
        "lists_per_object": retained_bytes(lambda: lists_per_object(objects, known))[0],
        "objects_table": retained_bytes(lambda: objects_table(objects, known))[0],
    }
    return {name: value / docs for name, value in figures.items()}


def lists_per_object(objects: list[SourceObject], known: KnownDocuments) -> list[dict[str, Any]]:
    """Each object's row with its known documents as Python lists (what read tasks got before
    ``objects_table`` built them column-wise)."""
    grouped: dict[str, tuple[list[str], list[str]]] = {}
    for doc, (fingerprint, uri) in known.items():
        ids, fingerprints = grouped.setdefault(uri, ([], []))
        ids.append(doc)
        fingerprints.append(fingerprint)
    empty: tuple[list[str], list[str]] = ([], [])
    return [
        {
            "path": obj.path,
            "known_doc_ids": grouped.get(obj.path, empty)[0],
            "known_fingerprints": grouped.get(obj.path, empty)[1],
        }
        for obj in objects
    ]


def dict_of_str(known: KnownDocuments) -> dict[str, tuple[str, str]]:
    """The map as a dict of Python strings, each object's name one string shared by its documents (what the
    driver held before ``KnownDocuments``)."""
    uris = known._uris()
    names = uris.dictionary.to_pylist()
    table = known._rows
    pairs = zip(table[schema.DOC_FINGERPRINT].to_pylist(), [names[i] for i in uris.indices.to_pylist()])
    return dict(zip(table[schema.DOC_ID].to_pylist(), pairs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000, help="documents in the synthetic corpus")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per document")
    args = parser.parse_args(argv)
    db = tempfile.mkdtemp(prefix="lateline-driver-memory-")
    backfill = run_scenario(db, args.docs, args.chunks, unchanged=False)
    rerun = run_scenario(db, args.docs, args.chunks, unchanged=True)
    alone = alternatives(db, args.docs)
    print(f"Driver memory held per document ({args.docs:,} documents, {args.chunks} chunks each), in bytes:")
    print(f"  backfill into a new table: {backfill['bytes_per_doc']:.1f} ({backfill['seconds']:.0f} s)")
    print(
        f"  rerun, objects changed, documents unchanged: {rerun['bytes_per_doc']:.1f} ({rerun['seconds']:.0f} s), "
        f"of which the known-documents map {rerun['known_map_bytes_per_doc']:.1f}"
    )
    print("Each structure alone, against the plain Python one:")
    pairs = (("doc_id_set", "set_of_str"), ("known_documents", "dict_of_str"), ("objects_table", "lists_per_object"))
    for ours, plain in pairs:
        print(f"  {ours} {alone[ours]:.1f} vs {plain} {alone[plain]:.1f}: {alone[plain] / alone[ours]:.1f}x smaller")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
