"""sources.py: records become documents or skipped rows with a reason; local files, dirs and globs are listed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.config import SourceConfig
from pipeline.fingerprint import document_fingerprint
from pipeline.known import KnownDocuments
from pipeline.sources import (
    SourceError,
    content_hash,
    fingerprinted,
    list_source_objects,
    list_uris,
    objects_table,
    read_object,
    read_objects,
    record_to_document,
    relative_id,
    skipped,
)

URI = "s3://bucket/docs/part-0.jsonl"


def jsonl_source(**kwargs) -> SourceConfig:
    return SourceConfig(uri="unused", format="jsonl", **kwargs)


def read_all(source: SourceConfig) -> list[dict]:
    return [row for obj in list_source_objects(source) for row in read_object(obj.path, obj.root, source)]


# --- record_to_document / skipped -----------------------------------------------------------------------


def test_good_record_becomes_a_document_with_metadata() -> None:
    source = jsonl_source(metadata_fields=("title", "lang"))
    row = record_to_document({"id": 7, "text": "Hello.", "title": "Größe", "other": 1}, URI, "line 1", source)
    assert row[schema.DOC_ID] == "7"  # ids are strings
    assert row[schema.TEXT] == "Hello."
    assert row[schema.SOURCE_URI] == URI
    assert json.loads(row[schema.METADATA]) == {"title": "Größe", "lang": None}
    assert "Größe" in row[schema.METADATA]  # kept readable, not \u-escaped
    assert row[schema.ERROR] is None and row[schema.ERROR_DETAIL] is None
    assert row[schema.LOCATION] == "line 1", "where the record sits, for a duplicate's dead letter"
    assert set(row) == set(schema.DOCUMENTS.names)


def test_custom_id_and_text_fields() -> None:
    source = jsonl_source(id_field="doc", text_field="body")
    row = record_to_document({"doc": "a", "body": "text"}, URI, "line 1", source)
    assert (row[schema.DOC_ID], row[schema.TEXT]) == ("a", "text")
    assert record_to_document({"id": "a", "text": "t"}, URI, "line 1", source)[schema.ERROR] == "missing_id"


@pytest.mark.parametrize(
    ("record", "reason", "doc_id"),
    [
        ({"text": "no id"}, "missing_id", None),
        ({"id": None, "text": "null id"}, "missing_id", None),
        ({"id": "   ", "text": "blank id"}, "missing_id", None),
        ({"id": "a"}, "missing_text", "a"),
        ({"id": "a", "text": None}, "missing_text", "a"),
        ({"id": "a", "text": 42}, "non_string_text", "a"),
        ({"id": "a", "text": ["a", "list"]}, "non_string_text", "a"),
        ({"id": "a", "text": ""}, "empty_text", "a"),
        ({"id": "a", "text": " \n\t "}, "empty_text", "a"),
        ({"id": 0, "text": "x" * 11}, "too_large", "0"),
    ],
)
def test_bad_records_are_skipped_with_their_reason(record: dict, reason: str, doc_id: str | None) -> None:
    row = record_to_document(record, URI, "line 9", jsonl_source(max_doc_chars=10))
    assert row[schema.ERROR] == reason
    assert row[schema.DOC_ID] == doc_id
    assert row[schema.TEXT] is None and row[schema.METADATA] is None
    assert row[schema.SOURCE_URI] == URI
    assert row[schema.ERROR_DETAIL].startswith("line 9: ")
    assert row[schema.SNIPPET] == json.dumps(record, default=str)  # the raw record, for the dead letters
    assert row[schema.DOC_FINGERPRINT] is None


def test_a_missing_field_is_reported_with_the_fields_the_record_has_and_a_null_one_as_null() -> None:
    row = record_to_document({"id": "x1", "content": "words", "lang": None}, URI, "row 3", jsonl_source())
    assert row[schema.ERROR_DETAIL] == "row 3: no 'text' field (fields: id, content, lang)"
    row = record_to_document({}, URI, "line 1", jsonl_source())
    assert row[schema.ERROR_DETAIL] == "line 1: no 'id' field (no fields)"
    row = record_to_document({"id": "x1", "text": None}, URI, "line 2", jsonl_source())
    assert (row[schema.ERROR], row[schema.ERROR_DETAIL]) == ("missing_text", "line 2: 'text' is null")
    row = record_to_document({"id": "  ", "text": "words"}, URI, "line 4", jsonl_source())
    assert (row[schema.ERROR], row[schema.ERROR_DETAIL]) == ("missing_id", "line 4: 'id' is blank")


def test_text_at_the_size_limit_is_kept() -> None:
    row = record_to_document({"id": "a", "text": "x" * 10}, URI, "line 1", jsonl_source(max_doc_chars=10))
    assert row[schema.ERROR] is None


def test_skipped_row_carries_reason_detail_and_a_short_snippet() -> None:
    row = skipped(URI, "invalid_json", "line 3: bad", b"  {broken \xff" + b"x" * 500, "d1")
    assert row[schema.ERROR] == "invalid_json"
    assert row[schema.DOC_ID] == "d1"
    assert row[schema.TEXT] is None
    assert row[schema.ERROR_DETAIL] == "line 3: bad"
    assert row[schema.SNIPPET].startswith("{broken \ufffd")  # undecodable bytes shown, not fatal
    assert len(row[schema.SNIPPET]) <= 200
    assert set(row) == set(schema.DOCUMENTS.names)
    assert skipped(URI, "unreadable_source", "gone")[schema.SNIPPET] is None


@pytest.mark.parametrize(
    ("uri", "root", "expected"),
    [
        ("file:///data/docs/a.md", "file:///data/docs", "a.md"),
        ("file:///data/docs/sub/b.txt", "file:///data/docs", "sub/b.txt"),
        ("s3://bucket/prefix/x/y.md", "s3://bucket/prefix", "x/y.md"),
        ("s3://bucket/prefix/x.md", "s3://bucket/prefix/x.md", "x.md"),  # a single file: its name
        ("s3://other/z.md", "s3://bucket/prefix", "z.md"),
    ],
)
def test_relative_id(uri: str, root: str, expected: str) -> None:
    assert relative_id(uri, root) == expected


def test_content_hash_is_stable_and_sensitive() -> None:
    assert content_hash("text", '{"a": 1}') == content_hash("text", '{"a": 1}')
    assert content_hash("text", '{"a": 1}') != content_hash("text", '{"a": 2}')
    assert content_hash("text", None) != content_hash("text.", None)
    assert len(content_hash("é", None)) == 64


def test_fingerprinted_marks_documents_the_table_already_holds_as_unchanged() -> None:
    source = jsonl_source(metadata_fields=("title",))
    doc = record_to_document({"id": "a", "text": "Text.", "title": "T"}, URI, "line 1", source)
    expected = document_fingerprint(content_hash("Text.", doc[schema.METADATA]), "settings")
    fresh = fingerprinted(doc, "settings", {})
    assert fresh[schema.DOC_FINGERPRINT] == expected
    assert (fresh[schema.TEXT], fresh[schema.ERROR]) == ("Text.", None)
    known = fingerprinted(doc, "settings", {"a": expected})
    assert known[schema.ERROR] == schema.UNCHANGED
    assert known[schema.TEXT] is None  # no tokenizing, no forward
    assert known[schema.DOC_FINGERPRINT] == expected
    stale = fingerprinted(doc, "other settings", {"a": expected})
    assert stale[schema.ERROR] is None and stale[schema.TEXT] == "Text."
    assert doc[schema.TEXT] == "Text." and doc[schema.DOC_FINGERPRINT] is None  # the input is not mutated
    bad = skipped(URI, "empty_text", "line 2: empty", "{}", "b")
    assert fingerprinted(bad, "settings", {"b": expected}) == bad


# --- reading local files --------------------------------------------------------------------------------


def test_each_object_row_carries_only_the_known_documents_of_that_object(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"id": f"{name}1", "text": f"Text of {name}."}) + "\n")
    source = SourceConfig(uri=str(tmp_path), format="jsonl")
    objects = list_source_objects(source)
    fingerprints = {}
    for obj in objects:
        for doc in read_object(obj.path, obj.root, source):
            fingerprints[doc[schema.DOC_ID]] = (fingerprinted(doc, "d", {})[schema.DOC_FINGERPRINT], obj.path)
    known = KnownDocuments.from_mapping({**fingerprints, "gone": ("f", "/elsewhere/c.jsonl")})
    table = objects_table(objects, known)
    rows = table.to_pylist()
    assert [(r["known_doc_ids"], r["known_fingerprints"]) for r in rows] == [
        (["a1"], [fingerprints["a1"][0]]),
        (["b1"], [fingerprints["b1"][0]]),
    ]
    assert all(set(r) >= {"path", "root", "size", "etag"} for r in rows)
    assert objects_table(objects)["known_doc_ids"].to_pylist() == [[], []]

    docs = [d for t in read_objects(table, source, "d") for d in t.to_pylist()]
    assert [(d[schema.DOC_ID], d[schema.ERROR]) for d in docs] == [("a1", schema.UNCHANGED), ("b1", schema.UNCHANGED)]
    # A document that moved to another object is not looked up there: it is embedded again, with its new uri.
    moved = objects_table(objects, KnownDocuments.from_mapping({"a1": (fingerprints["a1"][0], objects[1].path)}))
    docs = [d for t in read_objects(moved, source, "d") for d in t.to_pylist()]
    assert [(d[schema.DOC_ID], d[schema.ERROR]) for d in docs] == [("a1", None), ("b1", None)]


def test_jsonl_file_yields_documents_and_skipped_rows_in_line_order(tmp_path: Path) -> None:
    path = tmp_path / "part.jsonl"
    path.write_bytes(
        b'{"id": "a", "text": "First doc.", "title": "A"}\n'
        b"\n"
        b"{not json\n"
        b'\xff\xfe{"id": "b", "text": "bad bytes"}\n'
        b"[1, 2, 3]\n"
        b"   \n"
        b'{"id": "c", "text": "Caf\xc3\xa9 \xf0\x9f\x91\x8d"}\n'
        b'{"id": "d"}\n'
    )
    rows = read_all(SourceConfig(uri=str(path), format="jsonl", metadata_fields=("title",)))
    assert [(r[schema.DOC_ID], r[schema.ERROR]) for r in rows] == [
        ("a", None),
        (None, "invalid_json"),
        (None, "invalid_utf8"),
        (None, "invalid_json"),
        ("c", None),
        ("d", "missing_text"),
    ]
    details = [r[schema.ERROR_DETAIL] for r in rows]
    assert details[1].startswith("line 3: ") and rows[1][schema.SNIPPET] == "{not json"
    assert details[2].startswith("line 4: ")
    assert details[3].startswith("line 5: ") and "list" in details[3]
    assert details[5].startswith("line 8: ")
    assert [rows[0][schema.LOCATION], rows[4][schema.LOCATION]] == ["line 1", "line 7"], "good records' lines"
    assert rows[4][schema.TEXT] == "Café 👍"
    assert json.loads(rows[0][schema.METADATA]) == {"title": "A"}
    assert all(r[schema.SOURCE_URI] == f"file://{path}" for r in rows)


def test_gzipped_jsonl_is_read(tmp_path: Path) -> None:
    path = tmp_path / "part.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"id": 1, "text": "zipped"}\n{"id": 2, "text": "too"}\n'))
    rows = read_all(SourceConfig(uri=str(tmp_path), format="jsonl"))
    assert [(r[schema.DOC_ID], r[schema.TEXT]) for r in rows] == [("1", "zipped"), ("2", "too")]


def test_parquet_file_yields_documents_with_metadata(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": ["p1", "p2", "p3"],
            "text": ["Parquet text one.", None, "Third, with ünïcode."],
            "title": ["One", "Two", None],
            "ignored": [1, 2, 3],
        }
    )
    pq.write_table(table, tmp_path / "docs.parquet")
    source = SourceConfig(uri=str(tmp_path), format="parquet", metadata_fields=("title", "absent"), read_batch_docs=2)
    rows = read_all(source)
    assert [(r[schema.DOC_ID], r[schema.ERROR]) for r in rows] == [("p1", None), ("p2", "missing_text"), ("p3", None)]
    assert rows[1][schema.ERROR_DETAIL].startswith("row 2: ")
    assert rows[2][schema.LOCATION] == "row 3", "rows are counted across read batches"
    assert json.loads(rows[0][schema.METADATA]) == {"title": "One", "absent": None}
    assert rows[2][schema.TEXT] == "Third, with ünïcode."


def test_a_parquet_file_without_the_text_column_names_all_its_columns(tmp_path: Path) -> None:
    table = pa.table({"id": ["p1"], "body": ["The text is here."], "title": ["One"]})
    pq.write_table(table, tmp_path / "docs.parquet")
    [row] = read_all(SourceConfig(uri=str(tmp_path), format="parquet", metadata_fields=("title",)))
    assert row[schema.ERROR] == "missing_text"
    assert row[schema.ERROR_DETAIL] == "row 1: no 'text' column (columns: id, body, title)"


def test_a_parquet_row_with_a_null_id_says_it_is_null_not_that_the_column_is_missing(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [None], "text": ["Some text."], "title": ["One"]}), tmp_path / "docs.parquet")
    [row] = read_all(SourceConfig(uri=str(tmp_path), format="parquet", metadata_fields=("title",)))
    assert row[schema.ERROR] == "missing_id"
    assert row[schema.ERROR_DETAIL] == "row 1: 'id' is null"


def test_unreadable_file_becomes_one_unreadable_source_row(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet")
    rows = read_all(SourceConfig(uri=str(path), format="parquet"))
    assert len(rows) == 1
    assert rows[0][schema.ERROR] == "unreadable_source"
    assert rows[0][schema.SOURCE_URI].endswith("broken.parquet")


@pytest.fixture
def text_tree(tmp_path: Path) -> Path:
    (tmp_path / "a.md").write_text("# A\n\nAlpha text.", encoding="utf-8")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "b.txt").write_text("Beta text: naïve café.", encoding="utf-8")
    (tmp_path / "sub" / "deeper" / "c.md").write_text("Gamma.", encoding="utf-8")
    (tmp_path / "sub" / "data.json").write_text("{}")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden.md").write_text("hidden")
    return tmp_path


def test_directory_of_text_files_ids_are_relative_paths(text_tree: Path) -> None:
    source = SourceConfig(uri=str(text_tree), format="text")
    objects = list_source_objects(source)
    assert [o.path for o in objects] == sorted(o.path for o in objects)
    rows = read_all(source)
    assert {r[schema.DOC_ID]: r[schema.TEXT] for r in rows} == {
        "a.md": "# A\n\nAlpha text.",
        "sub/b.txt": "Beta text: naïve café.",
        "sub/deeper/c.md": "Gamma.",
    }
    assert all(r[schema.ERROR] is None and r[schema.LOCATION] == "file" for r in rows)
    assert all(o.size is not None and o.size > 0 for o in objects)


def test_include_patterns_choose_the_files(text_tree: Path) -> None:
    rows = read_all(SourceConfig(uri=str(text_tree), format="text", include=("*.txt",)))
    assert [r[schema.DOC_ID] for r in rows] == ["sub/b.txt"]


def test_glob_lists_matching_files_with_ids_relative_to_the_glob_root(text_tree: Path) -> None:
    source = SourceConfig(uri=f"{text_tree}/sub/*/*.md", format="text")
    rows = read_all(source)
    assert [r[schema.DOC_ID] for r in rows] == ["deeper/c.md"]
    rows = read_all(SourceConfig(uri=f"{text_tree}/sub/*.txt", format="text"))
    assert [r[schema.DOC_ID] for r in rows] == ["b.txt"]


def test_single_text_file_id_is_its_name(text_tree: Path) -> None:
    rows = read_all(SourceConfig(uri=str(text_tree / "sub" / "b.txt"), format="text"))
    assert [r[schema.DOC_ID] for r in rows] == ["b.txt"]


def test_text_file_with_invalid_utf8_is_skipped_with_its_id(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe not utf8")
    rows = read_all(SourceConfig(uri=str(tmp_path), format="text"))
    assert [(r[schema.DOC_ID], r[schema.ERROR]) for r in rows] == [("bad.txt", "invalid_utf8")]


def test_an_empty_text_file_is_reported_as_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text(" \n\n")
    [row] = read_all(SourceConfig(uri=str(tmp_path), format="text"))
    assert (row[schema.DOC_ID], row[schema.ERROR]) == ("empty.md", "empty_text")
    assert row[schema.ERROR_DETAIL] == "file: empty or only whitespace" and row[schema.SNIPPET] is None


def test_too_large_ascii_text_file_is_skipped_as_too_large(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("a" * 100)
    rows = read_all(SourceConfig(uri=str(tmp_path), format="text", max_doc_chars=10))
    assert [(r[schema.DOC_ID], r[schema.ERROR]) for r in rows] == [("big.txt", "too_large")]


def test_too_large_non_ascii_text_file_is_skipped_as_too_large(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("é" * 100, encoding="utf-8")  # 200 bytes, 100 chars; the cut is at byte 41
    rows = read_all(SourceConfig(uri=str(tmp_path), format="text", max_doc_chars=10))
    assert [(r[schema.DOC_ID], r[schema.ERROR]) for r in rows] == [("big.txt", "too_large")]


def test_nonexistent_path_raises_source_error_naming_the_uri(tmp_path: Path) -> None:
    uri = str(tmp_path / "nowhere")
    with pytest.raises(SourceError, match=r"source\.uri") as info:
        list_source_objects(SourceConfig(uri=uri, format="jsonl"))
    assert uri in str(info.value)


def test_empty_directory_raises_source_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a jsonl file")
    with pytest.raises(SourceError, match="no jsonl files") as info:
        list_source_objects(SourceConfig(uri=str(tmp_path), format="jsonl"))
    assert str(tmp_path) in str(info.value)


def test_a_uri_from_a_list_is_named_as_such_and_the_include_patterns_are_said(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("markdown, not jsonl")
    with pytest.raises(SourceError) as info:
        list_uris(SourceConfig(uri=str(tmp_path), format="jsonl"), [str(tmp_path)])
    message = str(info.value)
    assert message.startswith("URI: no jsonl files found") and "*.jsonl" in message and "source.include" in message


def test_glob_matching_nothing_raises_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"\*\.parquet"):
        list_source_objects(SourceConfig(uri=f"{tmp_path}/*.parquet", format="parquet"))
