"""The upgrade report: overlap and aggregates against hand-computed values, parity, query files, the files written."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from pipeline import schema
from pipeline.compare import (
    NO_RECORD,
    QueryFileError,
    TableSide,
    compare_report,
    document_parity,
    load_queries,
    overlap_at_k,
    sample_queries,
    table_side,
    write_report,
)
from pipeline.model import ModelIdentity
from pipeline.search import Hit
from pipeline.sink import table_record


def hit(chunk: str, score: float) -> Hit:
    """A hit for chunk id ``doc#i`` (the document id is the part before ``#``)."""
    return Hit(score, chunk.split("#")[0], chunk, 0, 1, "text")


def hits(*pairs: tuple[str, float]) -> list[Hit]:
    return [hit(chunk, score) for chunk, score in pairs]


# --- overlap_at_k ------------------------------------------------------------------------------------------
def test_overlap_matches_hand_computations() -> None:
    assert overlap_at_k(["a", "b", "c"], ["a", "c", "d"], 3) == pytest.approx(2 / 3)
    assert overlap_at_k(["a", "b", "c"], ["c", "b", "a"], 3) == 1.0  # order inside the top-k does not matter
    assert overlap_at_k(["a", "b", "c", "d"], ["d", "c", "x", "y"], 2) == 0.0  # only the first k count
    assert overlap_at_k(["a", "b", "c", "d"], ["b", "a", "y", "d"], 4) == pytest.approx(3 / 4)


def test_overlap_counts_repeated_ids_once() -> None:
    # top-2 distinct of [a, a, b] is {a, b}: several chunks of one document are one document
    assert overlap_at_k(["a", "a", "b"], ["b", "a"], 2) == 1.0
    assert overlap_at_k(["a", "a", "a"], ["a", "b", "c"], 3) == pytest.approx(1 / 3)


def test_overlap_with_fewer_hits_than_k() -> None:
    assert overlap_at_k(["a", "b"], ["b", "a"], 10) == 1.0  # both sides short: a small table still agrees
    assert overlap_at_k(["a", "b"], ["a", "b", "c", "d"], 10) == pytest.approx(2 / 4)  # one side finds more
    assert overlap_at_k(["a"], [], 5) == 0.0
    assert overlap_at_k([], [], 5) == 1.0
    with pytest.raises(ValueError, match="k: must be > 0"):
        overlap_at_k(["a"], ["a"], 0)


# --- compare_report --------------------------------------------------------------------------------------------
QUERIES = ["q1", "q2", "q3", "q4"]
OLD_HITS = [
    hits(("a#0", 0.9), ("b#0", 0.8), ("c#0", 0.7)),
    hits(("a#1", 0.6), ("a#0", 0.5), ("b#0", 0.4)),
    hits(("c#0", 0.5)),
    hits(("b#0", 0.9), ("a#0", 0.8), ("c#0", 0.7), ("d#0", 0.6)),  # the 4th hit is beyond k = 3
]
NEW_HITS = [
    hits(("a#0", 0.95), ("c#1", 0.85), ("d#0", 0.6)),
    hits(("a#1", 0.7), ("a#0", 0.65), ("b#0", 0.3)),
    [],
    hits(("d#0", 0.8), ("b#0", 0.75), ("e#0", 0.7), ("a#0", 0.5)),
]
OLD = TableSide("chunks", "mini@aaa", 10, 4, frozenset("abcx"))
NEW = TableSide("chunks__big", "big@bbb", 12, 5, frozenset("abcde"))


@pytest.fixture(scope="module")
def report() -> dict:
    return compare_report(QUERIES, OLD_HITS, NEW_HITS, OLD, NEW, k=3, score_bins=2)


def test_per_query_rows(report: dict) -> None:
    rows = report["per_query"]
    assert [row["query"] for row in rows] == QUERIES
    # q1 docs {a,b,c} vs {a,c,d}; q2 {a,b} vs {a,b} (2 distinct each); q3 one hit vs none; q4 top-3 only
    assert [row["doc_overlap"] for row in rows] == pytest.approx([2 / 3, 1.0, 0.0, 1 / 3])
    assert [row["chunk_overlap"] for row in rows] == pytest.approx([1 / 3, 1.0, 0.0, 1 / 3])
    assert [row["old_top1"] for row in rows] == [0.9, 0.6, 0.5, 0.9]
    assert [row["new_top1"] for row in rows] == [0.95, 0.7, None, 0.8]
    assert [(row["old_hits"], row["new_hits"]) for row in rows] == [(3, 3), (3, 3), (1, 0), (3, 3)]


def test_overlap_aggregates(report: dict) -> None:
    # docs [0, 1/3, 2/3, 1]: p10 at rank 0.3 -> 0.3 * 1/3; chunks [0, 1/3, 1/3, 1]
    assert report["overlap"]["doc"] == pytest.approx({"mean": 0.5, "median": 0.5, "p10": 0.1, "min": 0.0})
    assert report["overlap"]["chunk"] == pytest.approx({"mean": 5 / 12, "median": 1 / 3, "p10": 0.1, "min": 0.0})


def test_score_distributions(report: dict) -> None:
    scores = report["scores"]
    # old top-3 scores (10): .4 .5 .5 .6 .7 .7 .8 .8 .9 .9; p5 at rank 0.45, p95 at rank 8.55
    old = scores["old"]["top_k"]
    assert old["count"] == 10
    assert [old[s] for s in ("mean", "p5", "p50", "p95")] == pytest.approx([0.68, 0.445, 0.7, 0.9])
    # new (9): .3 .6 .65 .7 .7 .75 .8 .85 .95; p5 at rank 0.4, p95 at rank 7.6
    new = scores["new"]["top_k"]
    assert new["count"] == 9
    assert [new[s] for s in ("mean", "p5", "p50", "p95")] == pytest.approx([0.7, 0.42, 0.7, 0.91])
    assert scores["old"]["top1"]["mean"] == pytest.approx(0.725)
    assert scores["new"]["top1"]["count"] == 3  # q3 has no new hit
    assert scores["new"]["top1"]["mean"] == pytest.approx((0.95 + 0.7 + 0.8) / 3)
    # shared edges over both sides: top-k .3 .. .95, top-1 .5 .. .95, two bins each
    assert scores["bin_edges"]["top_k"] == pytest.approx([0.3, 0.625, 0.95])
    assert (old["histogram"], new["histogram"]) == ([4, 6], [2, 7])
    assert scores["bin_edges"]["top1"] == pytest.approx([0.5, 0.725, 0.95])
    assert (scores["old"]["top1"]["histogram"], scores["new"]["top1"]["histogram"]) == ([2, 2], [1, 2])


def test_row_and_document_parity(report: dict) -> None:
    assert report["rows"] == pytest.approx({"old": 10, "new": 12, "difference": 2, "ratio": 1.2})
    assert report["documents"] == {
        "old": 4,
        "new": 5,
        "missing_in_new": 1,
        "missing_in_new_examples": ["x"],
        "missing_in_old": 2,
        "missing_in_old_examples": ["d", "e"],
    }
    assert report["tables"]["old"] == {"name": "chunks", "model": "mini@aaa", "rows": 10, "documents": 4}
    assert report["tables"]["same_model"] is False
    assert (report["k"], report["queries"]) == (3, 4)


def test_document_parity_lists_sorted_examples_and_full_counts() -> None:
    old_ids = frozenset(f"doc{i:02d}" for i in range(40))
    new_ids = frozenset(f"doc{i:02d}" for i in range(15, 40)) | {"zeta", "alpha"}
    parity = document_parity(
        TableSide("old", "m", 40, len(old_ids), old_ids), TableSide("new", "m", 27, len(new_ids), new_ids)
    )
    assert parity["missing_in_new"] == 15
    assert parity["missing_in_new_examples"] == [f"doc{i:02d}" for i in range(15)]
    assert parity["missing_in_old"] == 2
    assert parity["missing_in_old_examples"] == ["alpha", "zeta"]
    many = TableSide("new", "m", 0, 0, frozenset())
    assert len(document_parity(TableSide("old", "m", 40, 40, old_ids), many)["missing_in_new_examples"]) == 20


def test_verdict_checks_and_thresholds(report: dict) -> None:
    verdict = report["verdict"]
    checks = {check["check"]: check for check in verdict["checks"]}
    assert verdict["passed"] is False
    assert verdict["same_documents"] is False and checks["same_documents"]["passed"] is False
    assert verdict["row_change"] == pytest.approx(0.2) and checks["row_parity"]["passed"] is False
    # exactly at the 0.5 default: passes (pairwise float summation would give 0.49999999999999994)
    assert verdict["mean_doc_overlap"] == 0.5 and checks["doc_overlap"]["passed"] is True
    assert checks["new_answers"]["value"] == 1 and checks["new_answers"]["passed"] is False  # q3
    loose = compare_report(QUERIES, OLD_HITS, NEW_HITS, OLD, NEW, 3, max_row_change=0.25, min_mean_doc_overlap=0.6)
    loose_checks = {check["check"]: check for check in loose["verdict"]["checks"]}
    assert loose_checks["row_parity"]["passed"] is True and loose_checks["row_parity"]["threshold"] == 0.25
    assert loose_checks["doc_overlap"]["passed"] is False and loose_checks["doc_overlap"]["threshold"] == 0.6
    noise = compare_report(QUERIES, OLD_HITS, NEW_HITS, OLD, NEW, 3, min_mean_doc_overlap=0.5 + 1e-12)
    assert noise["verdict"]["checks"][2]["passed"] is True  # within CHECK_TOLERANCE of the threshold


def test_row_parity_is_reported_but_not_applied_to_tables_chunked_differently() -> None:
    rechunked = dataclasses.replace(NEW, doc_ids=OLD.doc_ids, documents=OLD.documents, chunker='{"size": 64}')
    report = compare_report(QUERIES, OLD_HITS, OLD_HITS, OLD, rechunked, 3)
    rows = {check["check"]: check for check in report["verdict"]["checks"]}["row_parity"]
    assert report["tables"]["same_chunking"] is False
    assert rows["passed"] is True and rows["value"] == 0.2 and "chunked differently" in rows["rule"]
    assert report["verdict"]["passed"] is True
    same_chunker = compare_report(QUERIES, OLD_HITS, OLD_HITS, OLD, dataclasses.replace(rechunked, chunker=""), 3)
    assert same_chunker["verdict"]["passed"] is False, "the same chunker: 12 rows for 10 is a failure"


def test_identical_tables_pass() -> None:
    same = compare_report(QUERIES, OLD_HITS, OLD_HITS, OLD, OLD, k=3)
    assert same["verdict"]["passed"] is True
    assert same["overlap"]["doc"]["min"] == 1.0 and same["overlap"]["chunk"]["mean"] == 1.0
    assert same["rows"]["difference"] == 0 and same["tables"]["same_model"] is True


def test_no_queries_gives_nulls_and_fails_the_overlap_check() -> None:
    empty = compare_report([], [], [], OLD, OLD, k=5)
    assert empty["overlap"]["doc"] == {"mean": None, "median": None, "p10": None, "min": None}
    assert empty["scores"]["old"]["top_k"]["count"] == 0 and empty["scores"]["bin_edges"]["top_k"] == []
    assert empty["verdict"]["passed"] is False
    with pytest.raises(ValueError, match="one hit list per query"):
        compare_report(["q"], [], [], OLD, OLD, k=5)


# --- table_side on a real LanceDB table ---------------------------------------------------------------------------
def _chunk_rows(doc_chunks: dict[str, int], dim: int) -> dict[str, list]:
    rows: dict[str, list] = {name: [] for name in schema.chunk_schema(dim).names}
    for doc, count in doc_chunks.items():
        for index in range(count):
            row = {name: None for name in rows}
            row.update({schema.DOC_ID: doc, schema.CHUNK_ID: schema.chunk_id(doc, index)})
            row.update({schema.CHUNK_INDEX: index, schema.CHUNK_COUNT: count, schema.VECTOR: [0.5] * dim})
            for name in rows:
                rows[name].append(row[name])
    return rows


def test_table_side_reads_rows_documents_and_model(tmp_path: Path) -> None:
    identity = ModelIdentity("tiny", "abc123", 4, "mean", 512, "float32", "")
    table_schema = schema.chunk_schema(4).with_metadata(
        {schema.TABLE_METADATA_KEY: json.dumps(table_record(identity, {"chunker": {"strategy": "tokens@v1"}}))}
    )
    db = lancedb.connect(tmp_path / "db")
    data = pa.table(_chunk_rows({"a": 3, "b": 2, "c": 1}, 4), schema=table_schema)
    side = table_side(db.create_table("chunks", data=data, schema=table_schema), "chunks")
    chunker = '{"strategy": "tokens@v1"}'
    assert side == TableSide("chunks", "tiny@abc123", 6, 3, frozenset({"a", "b", "c"}), chunker)


def test_table_side_of_an_empty_foreign_table(tmp_path: Path) -> None:
    db = lancedb.connect(tmp_path / "db")
    side = table_side(db.create_table("other", schema=schema.chunk_schema(4)), "other")
    assert side == TableSide("other", NO_RECORD, 0, 0, frozenset())


# --- write_report ---------------------------------------------------------------------------------------------
def test_write_report_writes_json_markdown_and_png(report: dict, tmp_path: Path) -> None:
    paths = write_report(report, tmp_path / "out")
    assert set(paths) == {"json", "markdown", "chart"}
    assert json.loads(paths["json"].read_text()) == report
    png = paths["chart"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    markdown = paths["markdown"].read_text()
    assert "chunks (mini@aaa) vs chunks__big (big@bbb)" in markdown
    assert "| documents only here | 1 | 2 |" in markdown
    assert "FAIL: new_answers" in markdown


def test_write_report_of_an_empty_comparison(tmp_path: Path) -> None:
    empty = compare_report([], [], [], OLD, TableSide("new", "m@1", 0, 0, frozenset()), k=5)
    paths = write_report(empty, tmp_path)
    assert json.loads(paths["json"].read_text()) == empty
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- query files ------------------------------------------------------------------------------------------------
def test_load_queries_from_jsonl_and_text(tmp_path: Path) -> None:
    jsonl = tmp_path / "queries.jsonl"
    jsonl.write_text('{"_id": "1", "text": "how to sort"}\n\n{"query": "  open a file  "}\n')
    assert load_queries(jsonl) == ["how to sort", "open a file"]
    text = tmp_path / "queries.txt"
    text.write_text("first query\n\n   \n  second query \n")
    assert load_queries(text) == ["first query", "second query"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("q.jsonl", b'{"text": "ok"}\nnot json\n', "line 2: not JSON"),
        ("q.jsonl", b'{"text": "ok"}\n\n{"_id": "3", "title": "no text"}\n', "line 3: expected an object"),
        ("q.jsonl", b'["a list"]\n', "line 1: expected an object"),
        ("q.jsonl", b'{"text": "   "}\n', "line 1: expected an object"),
        ("q.txt", b"fine\nbad \xff byte\n", "line 2: not valid UTF-8"),
        ("q.txt", b"\n  \n", "no queries"),
    ],
)
def test_query_file_errors_name_file_and_line(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(QueryFileError) as error:
        load_queries(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_missing_query_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(QueryFileError, match=r"absent\.txt: cannot read"):
        load_queries(tmp_path / "absent.txt")


# --- sample_queries ----------------------------------------------------------------------------------------------
TEXTS = [
    "Sorting a list in place. Use list.sort() for that.",
    "Too short. But then a longer sentence follows here.",
    "Exceptions are caught with try and except! More text.",
    "Sorting a list in place. A duplicate first sentence.",
    "# Heading\n\nA heading alone is too short to become a query.",
    "Format a float with two decimals using an f-string\nwrapped over lines. Rest.",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen",
]


def test_sample_queries_takes_first_sentences_cut_and_distinct() -> None:
    assert sorted(sample_queries(TEXTS, 100)) == [
        "Exceptions are caught with try and except!",
        "Format a float with two decimals using an f-string wrapped over lines.",
        "Sorting a list in place.",
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",
    ]
    assert sample_queries(["a b c d e f"], 1, max_words=4) == ["a b c d"]


def test_sample_queries_is_deterministic_and_respects_n() -> None:
    texts = [f"Document number {i} talks about topic {i % 7}. Then more." for i in range(50)]
    first = sample_queries(texts, 10, seed=3)
    assert len(first) == 10 and len(set(first)) == 10
    assert sample_queries(texts, 10, seed=3) == first
    shuffled = texts[:]
    random.Random(1).shuffle(shuffled)
    assert sample_queries(shuffled, 10, seed=3) == first  # a table scan's row order does not matter
    assert sample_queries(texts, 10, seed=4) != first
    assert sample_queries(texts, 0) == []
    assert len(sample_queries(texts, 500)) == 50
    with pytest.raises(ValueError, match="n: must be >= 0"):
        sample_queries(texts, -1)
