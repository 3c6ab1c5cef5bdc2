"""maintain says what it did: fragments merged, indexes built once, then new rows added to them; the vector index
is retrained only when the table outgrew it, its kind changed, or when asked."""

from __future__ import annotations

import warnings
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import MaintainConfig, parse_config
from pipeline.maintain import MAX_VECTOR_SEGMENTS, IndexState, compaction_action, maintain, vector_retrain_reason

RNG = np.random.default_rng(0)


def test_compaction_reports_the_merge_or_that_there_was_nothing_to_merge() -> None:
    assert compaction_action(12, 1) == "compacted 12 fragments into 1"
    assert compaction_action(1, 1) == "compaction: nothing to merge (1 fragment)"
    assert compaction_action(3, 3) == "compaction: nothing to merge (3 fragments)"
    assert compaction_action(4, 2, vector_segments=2) == (
        "compacted 4 fragments into 2; the vector index's 2 segments keep their fragments apart until it is retrained"
    )


def test_the_vector_index_is_retrained_only_for_growth_piled_up_segments_or_another_kind() -> None:
    settings = MaintainConfig(ann_index="ivf_pq", ann_retrain_growth=2.0)
    index = IndexState("vector_idx", "IvfPq", unindexed_rows=100, segments=3)
    assert vector_retrain_reason(index, rows=1_999, trained_rows=1_000, settings=settings) is None
    assert vector_retrain_reason(index, rows=2_000, trained_rows=1_000, settings=settings) == (
        "2,000 rows, 2.0x the 1,000 it was trained on that remain (maintain.ann_retrain_growth 2)"
    )
    piled = IndexState("vector_idx", "IvfPq", 0, segments=MAX_VECTOR_SEGMENTS)
    assert vector_retrain_reason(piled, 1_500, 1_000, settings) == (
        f"{MAX_VECTOR_SEGMENTS} segments, one per update (searches visit each)"
    )
    assert vector_retrain_reason(index, 1_500, 1_000, MaintainConfig(ann_index="hnsw")) == (
        "it was ivf_pq, maintain.ann_index is 'hnsw'"
    )
    assert vector_retrain_reason(index, 1_500, "OSError: gone", settings) == (
        "the rows it was trained on cannot be read (OSError: gone)"
    )
    assert vector_retrain_reason(index, 1_500, 0, settings) == (
        "none of the rows it was trained on remain (1,500 rows now)"
    )
    every_run = MaintainConfig(ann_retrain_growth=1.0)
    assert vector_retrain_reason(index, 1_000, 1_000, every_run) is not None, "1 retrains on every run"


def test_maintain_retrain_growth_below_one_is_refused() -> None:
    with pytest.raises(Exception, match="ann_retrain_growth"):
        parse_config({"source": {"uri": "x", "format": "jsonl"}, "maintain": {"ann_retrain_growth": 0.5}})


def _rows(part: int, n: int = 150) -> pa.Table:
    vectors = pa.array(RNG.standard_normal(n * 8).astype(np.float32))
    chunk_ids = [f"c{part}-{i}" for i in range(n)]
    texts = ["late chunking pools spans"] * n
    return pa.table({"chunk_id": chunk_ids, "text": texts, "vector": pa.FixedSizeListArray.from_arrays(vectors, 8)})


def _config(db: Path, **keys):
    return parse_config({"source": {"uri": "x", "format": "jsonl"}, "sink": {"uri": str(db)}, "maintain": keys})


def _index_uuids(table) -> dict[str, str]:
    return {index.name: index.index_uuid for index in table.list_indices()}


def test_maintain_with_no_retention_says_so_in_its_own_words_and_builds_every_index(tmp_path, capsys) -> None:
    db = lancedb.connect(str(tmp_path / "db"))
    table = db.create_table("chunks", _rows(0))
    table.add(_rows(1))
    keys = {"retain_versions_hours": 0, "ann_min_rows": 100, "ann_index": "hnsw"}
    config = _config(tmp_path / "db", **keys)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = maintain(config)
    assert not [w for w in caught if issubclass(w.category, UserWarning)], "Lance's warning names its own argument"
    assert "maintain.retain_versions_hours is 0, so every version but the latest is removed" in capsys.readouterr().err
    assert report["actions"] == [
        "compacted 2 fragments into 1",
        "chunk_id index built",
        "hnsw vector index built on 300 rows",
        "text full-text index built",
    ]
    assert report["after"] | {"indexes": None} == {"rows": 300, "versions": 1, "fragments": 1, "indexes": None}
    assert report["after"]["indexes"] == ["chunk_id_idx", "text_idx", "vector_idx"]
    reopened = db.open_table("chunks")
    assert reopened.search("spans", query_type="fts").limit(1).to_list(), "the full-text index answers"
    # Below the threshold later (rows deleted, or the threshold raised), the index built before is said kept.
    fewer = _config(tmp_path / "db", **keys | {"ann_min_rows": 1000})
    kept = "vector index kept, not retrained: 300 rows < maintain.ann_min_rows 1,000 (--rebuild-indexes drops it)"
    assert kept in maintain(fewer)["actions"]
    dropped = maintain(fewer, rebuild_indexes=True)["actions"]
    assert "vector index dropped: 300 rows < maintain.ann_min_rows, --rebuild-indexes (search is exact again)" in (
        dropped
    )
    assert "vector_idx" not in _index_uuids(db.open_table("chunks")), "the way back to an exact search"


def test_a_second_maintain_adds_the_new_rows_to_the_indexes_it_built_and_retrains_only_when_outgrown(
    tmp_path,
) -> None:
    db = lancedb.connect(str(tmp_path / "db"))
    table = db.create_table("chunks", _rows(0, 300))  # (LanceDB trains no partitions on fewer than 256 vectors)
    config = _config(tmp_path / "db", retain_versions_hours=0, ann_min_rows=100)
    maintain(config)
    built = _index_uuids(db.open_table("chunks"))

    table.add(_rows(1, 50))
    report = maintain(config)
    assert report["actions"][1:] == [
        "chunk_id index: 50 new rows added",
        "ivf_pq vector index: 50 new rows added",
        "text full-text index: 50 new rows added",
    ]
    table = db.open_table("chunks")
    for index in table.list_indices():
        stats = table.index_stats(index.name)
        assert (stats.num_indexed_rows, stats.num_unindexed_rows) == (350, 0), index.name
    assert table.index_stats("vector_idx").num_indices == 2, "the new rows are a segment of the trained index"
    assert report["after"]["versions"] == 1, "retain_versions_hours 0 still leaves only the latest version"
    assert maintain(config)["actions"][1:] == [
        "chunk_id index up to date",
        "ivf_pq vector index up to date",
        "text full-text index up to date",
    ]

    table.add(_rows(2, 250))  # 600 rows: twice the 300 the vector index was trained on
    actions = maintain(config)["actions"]
    assert actions[2] == (
        "ivf_pq vector index retrained: 600 rows, 2.0x the 300 it was trained on that remain "
        "(maintain.ann_retrain_growth 2)"
    )
    table = db.open_table("chunks")
    assert table.index_stats("vector_idx").num_indices == 1
    assert _index_uuids(table)["vector_idx"] != built["vector_idx"]

    kept = _index_uuids(table)
    actions = maintain(config, rebuild_indexes=True)["actions"]
    assert actions[1:] == [
        "chunk_id index rebuilt: --rebuild-indexes",
        "ivf_pq vector index retrained: --rebuild-indexes",
        "text full-text index rebuilt: --rebuild-indexes",
    ]
    assert set(_index_uuids(db.open_table("chunks")).values()).isdisjoint(kept.values())


def test_without_compaction_an_index_missing_rows_is_rebuilt(tmp_path) -> None:
    db = lancedb.connect(str(tmp_path / "db"))
    table = db.create_table("chunks", _rows(0, 300))
    config = _config(tmp_path / "db", compact=False, ann_min_rows=100, fts=False)
    assert maintain(config)["actions"] == ["chunk_id index built", "ivf_pq vector index built on 300 rows"]
    assert maintain(config)["actions"] == ["chunk_id index up to date", "ivf_pq vector index up to date"]
    table.add(_rows(1, 20))
    assert maintain(config)["actions"] == [
        "chunk_id index rebuilt: 20 rows it does not cover, and maintain.compact is false (nothing adds them)",
        "ivf_pq vector index retrained: 20 rows it does not cover, and maintain.compact is false (nothing adds them)",
    ]
    table = db.open_table("chunks")
    assert table.index_stats("vector_idx").num_unindexed_rows == 0


def test_another_kind_of_vector_index_is_replaced(tmp_path) -> None:
    db = lancedb.connect(str(tmp_path / "db"))
    db.create_table("chunks", _rows(0, 300))
    maintain(_config(tmp_path / "db", ann_min_rows=100, fts=False))
    actions = maintain(_config(tmp_path / "db", ann_min_rows=100, fts=False, ann_index="hnsw"))["actions"]
    assert actions[2] == "hnsw vector index retrained: it was ivf_pq, maintain.ann_index is 'hnsw'"
    assert {i.name: i.index_type for i in db.open_table("chunks").list_indices()}["vector_idx"] == "IvfHnswSq"
    none = maintain(_config(tmp_path / "db", ann_min_rows=100, fts=False, ann_index="none"))["actions"]
    assert none[2] == "vector index kept: maintain.ann_index is 'none' (--rebuild-indexes drops it)"
