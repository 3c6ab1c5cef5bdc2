"""LanceSink keeps one copy of a document id and reports every other copy once (real LanceDB in a temp dir)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import schema
from pipeline.config import SinkConfig
from pipeline.docids import DocIdSet
from pipeline.model import ModelIdentity
from pipeline.sink import LanceSink, read_table_record

DIM = 4
IDENTITY = ModelIdentity("tiny", "f00d", DIM, "mean", 32, "float32", "")


@pytest.fixture
def sink(tmp_path) -> LanceSink:
    return LanceSink(SinkConfig(uri=str(tmp_path / "db"), commit_rows=1_000), IDENTITY, {"chunker": "test"})


def chunks(doc: str, uri: str, indexes: list[int], count: int) -> pa.Table:
    """Rows of chunks ``indexes`` of a ``count``-chunk copy of ``doc`` read from ``uri``."""
    rows = [
        {
            schema.CHUNK_ID: schema.chunk_id(doc, i),
            schema.DOC_ID: doc,
            schema.CHUNK_INDEX: i,
            schema.CHUNK_COUNT: count,
            schema.TEXT: f"chunk {i} of {doc}",
            schema.CHAR_START: i,
            schema.CHAR_END: i + 1,
            schema.TOKEN_START: i,
            schema.TOKEN_END: i + 1,
            schema.VECTOR: [1.0, 0.0, 0.0, 0.0],
            schema.MODEL: IDENTITY.label,
            schema.DOC_FINGERPRINT: f"fp-{uri}",
            schema.SOURCE_URI: uri,
            schema.METADATA: None,
            schema.CONTENT_SHA256: "c",
        }
        for i in indexes
    ]
    return pa.Table.from_pylist(rows, schema=schema.chunk_schema(DIM))


def marker(doc: str, uri: str) -> dict:
    return {schema.DOC_ID: doc, schema.SOURCE_URI: uri, schema.ERROR: schema.UNCHANGED}


def stored(sink: LanceSink) -> dict[str, set[str]]:
    """doc id -> the source URIs its stored rows name."""
    sink.close()
    table = sink.table.to_arrow()
    owners: dict[str, set[str]] = {}
    for doc, uri in zip(table[schema.DOC_ID].to_pylist(), table[schema.SOURCE_URI].to_pylist()):
        owners.setdefault(doc, set()).add(uri)
    return owners


def reasons(rows: list[dict]) -> list[tuple[str, str]]:
    return [(row[schema.SOURCE_URI], row[schema.ERROR]) for row in rows if row[schema.ERROR] != schema.UNCHANGED]


def test_a_copy_after_an_unchanged_marker_is_the_duplicate(sink: LanceSink) -> None:
    assert reasons(sink.keep([marker("x", "a")])) == []
    assert reasons(sink.write(chunks("x", "b", [0, 1], 2))) == [("b", "duplicate_doc_id")]
    sink.write(chunks("y", "b", [0], 1))
    assert stored(sink) == {"y": {"b"}}  # x stays as the table holds it: not written again


def test_the_kept_set_handed_over_is_shared_not_copied(sink: LanceSink) -> None:
    unchanged = DocIdSet(["y"])  # an index run's tally of unchanged ids
    sink.keep_documents(unchanged)
    assert reasons(sink.keep([marker("x", "a")])) == []
    assert "x" in unchanged, "the sink's kept ids and the handed-over set are one set"
    assert reasons(sink.write(chunks("y", "b", [0], 1))) == [("b", "duplicate_doc_id")]


def test_a_marker_after_a_written_copy_is_the_duplicate(sink: LanceSink) -> None:
    assert sink.write(chunks("x", "b", [0, 1], 2)) == []
    assert reasons(sink.keep([marker("x", "a")])) == [("a", "duplicate_doc_id")]
    assert stored(sink) == {"x": {"b"}}


def test_a_marker_after_part_of_a_copy_is_the_duplicate_and_the_copy_completes(sink: LanceSink) -> None:
    assert sink.write(chunks("x", "b", [0], 2)) == []  # held until its second chunk arrives
    assert reasons(sink.keep([marker("x", "a")])) == [("a", "duplicate_doc_id")]
    assert sink.write(chunks("x", "b", [1], 2)) == []
    assert stored(sink) == {"x": {"b"}}  # closing would raise on a document left incomplete


def test_the_same_marker_twice_is_one_kept_copy_and_one_duplicate(sink: LanceSink) -> None:
    rows = sink.keep([marker("x", "a"), marker("x", "a")])
    assert [row[schema.ERROR] for row in rows] == [schema.UNCHANGED, "duplicate_doc_id"]


def test_a_duplicate_copy_split_over_blocks_is_reported_once(sink: LanceSink) -> None:
    sink.keep([marker("x", "a")])
    reported = sink.write(chunks("x", "b", [0, 1], 3)) + sink.write(chunks("x", "b", [2], 3))
    assert reasons(reported) == [("b", "duplicate_doc_id")]


def test_a_second_copy_arriving_while_the_first_is_held_is_the_duplicate(sink: LanceSink) -> None:
    assert sink.write(chunks("x", "a", [0], 2)) == []
    assert reasons(sink.write(chunks("x", "b", [0, 1], 2))) == [("b", "duplicate_doc_id")]
    assert sink.write(chunks("x", "a", [1], 2)) == []
    assert stored(sink) == {"x": {"a"}}


def test_two_copies_in_one_block_keep_the_first(sink: LanceSink) -> None:
    block = pa.concat_tables([chunks("x", "a", [0, 1], 2), chunks("x", "b", [0, 1], 2)])
    [dropped] = sink.write(block)
    assert (dropped[schema.SOURCE_URI], dropped[schema.ERROR]) == ("b", "duplicate_doc_id")
    assert dropped[schema.SNIPPET] == "chunk 0 of x", "the dropped copy's start, for the dead letter"
    assert stored(sink) == {"x": {"a"}}


def located(table: pa.Table, *locations: str) -> pa.Table:
    """``table`` with a ``location`` column as the pipeline brings it (one value per row, in row order)."""
    return table.append_column(schema.LOCATION, pa.array(locations, pa.string()))


def test_a_dropped_copy_is_named_by_its_location(sink: LanceSink) -> None:
    block = pa.concat_tables(
        [
            located(chunks("x", "a", [0, 1], 2), "line 1", "line 1"),
            located(chunks("x", "b", [0, 1], 2), "row 7", "row 7"),
        ]
    )
    [dropped] = sink.write(block)
    assert dropped[schema.SOURCE_URI] == "b"
    assert dropped[schema.ERROR_DETAIL].startswith("row 7: this document id appeared more than once")
    [later] = sink.write(located(chunks("x", "c", [0], 1), "line 12"))
    assert later[schema.ERROR_DETAIL].startswith("line 12: ")
    assert stored(sink) == {"x": {"a"}}, "locations are not stored"
    assert schema.LOCATION not in sink.table.schema.names


def test_an_unchanged_copy_after_a_written_one_is_named_by_its_location(sink: LanceSink) -> None:
    sink.write(chunks("x", "a", [0], 1))
    [row] = sink.keep([{**marker("x", "b"), schema.LOCATION: "line 3"}])
    assert (row[schema.ERROR], row[schema.ERROR_DETAIL].split(":")[0]) == ("duplicate_doc_id", "line 3")


def test_without_locations_the_detail_is_the_plain_one(sink: LanceSink) -> None:
    sink.write(chunks("x", "a", [0], 1))
    [dropped] = sink.write(chunks("x", "b", [0], 1))
    assert dropped[schema.ERROR_DETAIL] == "this document id appeared more than once in the source; one copy was kept"


def replacing_sink(tmp_path, commit_rows: int = 1_000) -> tuple[LanceSink, LanceSink]:
    """A table holding document "old", then a sink that overwrites it (nothing written yet)."""
    config = SinkConfig(uri=str(tmp_path / "db"), commit_rows=1_000)
    first = LanceSink(config, IDENTITY, {"chunker": "test"})
    first.write(chunks("old", "a", [0], 1))
    first.close()
    overwrite = config.model_copy(update={"mode": "overwrite", "commit_rows": commit_rows})
    return first, LanceSink(overwrite, IDENTITY, {"chunker": "test"})


def readers_see(sink: LanceSink) -> list[str]:
    """The doc ids a search opening the table now would find."""
    return sorted(set(sink.db.open_table("chunks").to_arrow()[schema.DOC_ID].to_pylist()))


def test_overwrite_replaces_the_table_in_one_commit_at_close(tmp_path) -> None:
    _, replacing = replacing_sink(tmp_path, commit_rows=1)
    for doc in ("new", "newer", "newest"):  # each block is a commit of its own
        replacing.write(chunks(doc, "b", [0, 1], 2))
    assert replacing.stats["commits"] == 3
    assert readers_see(replacing) == ["old"], "until the run is done, searches see the old table whole"
    seen_before_publish = []
    replacing.before_publish = lambda: seen_before_publish.append(readers_see(replacing))
    written = replacing.close()
    assert seen_before_publish == [["old"]], "the hook runs once, just before the new table replaces the old"
    assert readers_see(replacing) == ["new", "newer", "newest"]
    assert (written["published"], written["table_rows"], written["docs_written"]) == (True, 6, 3)
    table = replacing.db.open_table("chunks")
    assert len(set(table.to_arrow()[schema.CHUNK_ID].to_pylist())) == 6, "every staged block once"
    assert read_table_record(table)["model"]["name"] == "tiny", "the new table keeps lateline's record"


def data_files(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "db" / "chunks.lance" / "data").iterdir())


def test_an_abandoned_overwrite_deletes_what_it_staged(tmp_path) -> None:
    _, abandoned = replacing_sink(tmp_path, commit_rows=1)
    before = data_files(tmp_path)
    abandoned.write(chunks("new", "b", [0, 1], 2))
    abandoned.write(chunks("newer", "b", [0], 1))
    assert len(data_files(tmp_path)) == len(before) + 2
    abandoned.abandon()
    assert data_files(tmp_path) == before
    assert readers_see(abandoned) == ["old"]


def test_staged_files_are_never_deleted_once_the_table_moved_on(tmp_path) -> None:
    _, replacing = replacing_sink(tmp_path, commit_rows=1)
    replacing.write(chunks("new", "b", [0, 1], 2))
    replacing.staged.publish(replacing.schema)  # as if publish committed, then failed before the sink knew
    with pytest.raises(RuntimeError, match="staged files kept"):
        replacing.staged.discard()
    assert readers_see(replacing) == ["new"], "the published table is whole"


def test_an_overwrite_that_fails_or_is_abandoned_leaves_the_old_table(tmp_path) -> None:
    _, failed = replacing_sink(tmp_path, commit_rows=1)
    failed.write(chunks("new", "b", [0, 1], 2))  # committed (staged), then the run dies: no close
    assert readers_see(failed) == ["old"]
    _, abandoned = replacing_sink(tmp_path, commit_rows=1)
    abandoned.write(chunks("new", "b", [0, 1], 2))
    abandoned.before_publish = lambda: pytest.fail("an abandoned overwrite publishes nothing")
    written = abandoned.abandon()
    assert (written["published"], written["table_rows"]) == (False, 1)
    assert readers_see(abandoned) == ["old"]
    again = LanceSink(SinkConfig(uri=str(tmp_path / "db")), IDENTITY, {"chunker": "test"})
    again.write(chunks("more", "c", [0], 1))
    again.close()
    assert readers_see(again) == ["more", "old"], "the table works on as before; staged files are never read"


def test_an_overwrite_may_change_the_tables_schema(tmp_path) -> None:
    _, float32_sink = replacing_sink(tmp_path)
    config = float32_sink.config.model_copy(update={"vector_dtype": "float16"})
    replacing = LanceSink(config, IDENTITY, {"chunker": "test"})
    replacing.write(chunks("new", "b", [0, 1], 2))
    replacing.close()
    table = replacing.db.open_table("chunks")
    assert table.schema.field(schema.VECTOR).type.value_type == pa.float16()
    assert readers_see(replacing) == ["new"]


def test_overwrite_that_writes_nothing_leaves_an_empty_table(tmp_path) -> None:
    _, replacing = replacing_sink(tmp_path)
    assert replacing.close()["table_rows"] == 0
    assert replacing.db.open_table("chunks").count_rows() == 0
