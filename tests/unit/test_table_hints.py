"""Messages for a table that is not there name the closest table of vectors (never a helper table)."""

from __future__ import annotations

from pathlib import Path

import lancedb
import pyarrow as pa

from pipeline.sink import connect, did_you_mean, missing_table


def _tables(path: Path, names: list[str]) -> None:
    db = lancedb.connect(str(path))
    for name in names:
        db.create_table(name, pa.table({"x": [1]}))


def test_a_typo_names_the_closest_table_of_vectors(tmp_path: Path) -> None:
    _tables(tmp_path, ["chunks", "chunks__alias", "chunks__objects", "chunks__minilm_v2"])
    db = connect(str(tmp_path))
    assert did_you_mean(db, "chunkz") == " (did you mean 'chunks'?)"
    assert did_you_mean(db, "chunks__minilm_v3") == " (did you mean 'chunks__minilm_v2'?)"
    assert "__objects" not in did_you_mean(db, "chunks__objcts"), "helper tables are not named"
    assert did_you_mean(db, "embeddings_of_everything") == "", "nothing close: no guess"


def test_an_alias_whose_original_table_is_gone_is_still_suggested(tmp_path: Path) -> None:
    _tables(tmp_path, ["docs__alias", "docs__v2", "docs__v2__objects"])
    assert did_you_mean(connect(str(tmp_path)), "dcs") == " (did you mean 'docs'?)"


def test_missing_table_message_creates_nothing(tmp_path: Path) -> None:
    _tables(tmp_path / "db", ["chunks"])
    message = missing_table(str(tmp_path / "db"), "chunk")
    assert message == f"sink.table: no table 'chunk' at {str(tmp_path / 'db')!r} (did you mean 'chunks'?); " + (
        "run `lateline index` first"
    )
    absent = tmp_path / "nowhere"
    assert missing_table(str(absent), "chunks").startswith("sink.table: no table 'chunks' at ")
    assert not absent.exists(), "a reading command's message must not create the database"
