"""KnownDocuments: what a table holds (id -> fingerprint, object), as Arrow columns, read from real LanceDB."""

from __future__ import annotations

import lancedb
import pyarrow as pa

from pipeline import schema
from pipeline.known import KnownDocuments, read_known_documents

HELD = {"a": ("fa", "s3://x/1.jsonl"), "b": ("fb", "s3://x/1.jsonl"), "c": ("fc", "s3://x/2.jsonl")}


def test_reads_one_entry_per_document_from_its_first_chunk(tmp_path) -> None:
    rows = pa.table(
        {
            schema.DOC_ID: ["a", "a", "b", "c"],
            schema.CHUNK_INDEX: pa.array([0, 1, 0, 0], pa.int32()),
            schema.DOC_FINGERPRINT: ["fa", "fa", "fb", "fc"],
            schema.SOURCE_URI: ["s3://x/1.jsonl", "s3://x/1.jsonl", "s3://x/1.jsonl", "s3://x/2.jsonl"],
        }
    )
    known = read_known_documents(lancedb.connect(str(tmp_path)).create_table("chunks", rows))
    assert dict(known.items()) == HELD
    assert len(known) == 3 and sorted(known) == ["a", "b", "c"]
    assert len(read_known_documents(None)) == 0 and not read_known_documents(None)


def test_object_names_are_held_once_per_object() -> None:
    many = {f"doc-{i}": (f"{i:032x}", f"s3://bucket/part-{i // 250}.jsonl") for i in range(5_000)}
    known = KnownDocuments.from_mapping(many)
    uris = known._rows[schema.SOURCE_URI]
    assert pa.types.is_dictionary(uris.type) and len(uris.chunk(0).dictionary) == 20
    assert known.nbytes < 70 * len(many)  # ids, fingerprints, a 4-byte index per document
    assert dict(known.items()) == many


def test_counts_and_selects_by_object() -> None:
    known = KnownDocuments.from_mapping(HELD)
    assert known.docs_per_object() == {"s3://x/1.jsonl": 2, "s3://x/2.jsonl": 1}
    assert sorted(known.in_objects({"s3://x/1.jsonl"})) == ["a", "b"]
    assert sorted(known.in_objects({"s3://x/1.jsonl"}, inside=False)) == ["c"]
    assert list(known.in_objects([])) == [] and sorted(known.in_objects([], inside=False)) == ["a", "b", "c"]
    empty = KnownDocuments()
    assert empty.docs_per_object() == {} and list(empty.in_objects({"x"})) == []


def test_groups_documents_by_the_objects_given_in_their_order() -> None:
    known = KnownDocuments.from_mapping(HELD)
    offsets, ids, fingerprints = known.grouped_by(["s3://x/2.jsonl", "s3://x/9.jsonl", "s3://x/1.jsonl"])
    assert offsets.tolist() == [0, 1, 1, 3]
    assert ids.to_pylist() == ["c", "a", "b"] and fingerprints.to_pylist() == ["fc", "fa", "fb"]
    offsets, ids, _ = KnownDocuments().grouped_by(["s3://x/1.jsonl"])
    assert offsets.tolist() == [0, 0] and ids.to_pylist() == []


def test_batches_do_not_change_what_is_listed(monkeypatch) -> None:
    from pipeline import known as module

    monkeypatch.setattr(module, "ITER_BATCH", 2)
    known = KnownDocuments.from_mapping(HELD)
    assert dict(known.items()) == HELD and list(known) == ["a", "b", "c"]
