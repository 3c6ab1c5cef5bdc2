"""maintain says what compaction did: fragments merged, or nothing to merge."""

from __future__ import annotations

from pipeline.maintain import compaction_action


def test_compaction_reports_the_merge_or_that_there_was_nothing_to_merge() -> None:
    assert compaction_action(12, 1) == "compacted 12 fragments into 1"
    assert compaction_action(1, 1) == "compaction: nothing to merge (1 fragment)"
    assert compaction_action(3, 3) == "compaction: nothing to merge (3 fragments)"


def test_maintain_with_no_retention_says_so_in_its_own_words_and_builds_every_index(tmp_path, capsys) -> None:
    import warnings

    import lancedb
    import numpy as np
    import pyarrow as pa

    from pipeline.config import parse_config
    from pipeline.maintain import maintain

    rng = np.random.default_rng(0)
    db = lancedb.connect(str(tmp_path / "db"))

    def rows(part: int, n: int = 150) -> pa.Table:
        vectors = pa.array(rng.standard_normal(n * 8).astype(np.float32))
        chunk_ids = [f"c{part}-{i}" for i in range(n)]
        texts = ["late chunking pools spans"] * n
        return pa.table({"chunk_id": chunk_ids, "text": texts, "vector": pa.FixedSizeListArray.from_arrays(vectors, 8)})

    table = db.create_table("chunks", rows(0))
    table.add(rows(1))
    keys = {"retain_versions_hours": 0, "ann_min_rows": 100, "ann_index": "hnsw"}
    config = parse_config(
        {"source": {"uri": "x", "format": "jsonl"}, "sink": {"uri": str(tmp_path / "db")}} | {"maintain": keys}
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = maintain(config)
    assert not [w for w in caught if issubclass(w.category, UserWarning)], "Lance's warning names its own argument"
    assert "maintain.retain_versions_hours is 0, so every version but the latest is removed" in capsys.readouterr().err
    assert report["actions"] == [
        "compacted 2 fragments into 1",
        "chunk_id index",
        "hnsw vector index",
        "text full-text index",
    ]
    assert report["after"] | {"indexes": None} == {"rows": 300, "versions": 1, "fragments": 1, "indexes": None}
    assert report["after"]["indexes"] == ["chunk_id_idx", "text_idx", "vector_idx"]
    reopened = db.open_table("chunks")
    assert reopened.search("spans", query_type="fts").limit(1).to_list(), "the full-text index answers"
    # Below the threshold later (rows deleted, or the threshold raised), the index built before is said kept.
    fewer = parse_config(config.model_dump() | {"maintain": keys | {"ann_min_rows": 1000}})
    assert "vector index kept, not retrained: 300 rows < maintain.ann_min_rows 1,000" in maintain(fewer)["actions"]
