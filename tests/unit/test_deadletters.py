"""Dead letters follow a re-embedded table (real LanceDB in a temp dir)."""

from __future__ import annotations

from pipeline import schema
from pipeline.deadletters import DeadLetterLog, carry_dead_letters, read_dead_letters


def letter(uri: str, reason: str) -> dict:
    return {schema.SOURCE_URI: uri, schema.DOC_ID: None, schema.ERROR: reason, schema.ERROR_DETAIL: "line 1: x"}


def test_a_reembedded_table_lists_the_source_tables_dead_letters_once(tmp_path) -> None:
    db = str(tmp_path / "db")
    old = DeadLetterLog(db, "chunks", "run-1")
    old.add([letter("s3://b/a.jsonl", "invalid_json"), letter("s3://b/b.jsonl", "missing_text")])
    old.flush()
    assert carry_dead_letters(db, "chunks", "chunks__new") == 2
    assert carry_dead_letters(db, "chunks", "chunks__new") == 2, "a resumed re-embed carries them again"
    carried = read_dead_letters(db, "chunks__new").sort_by(schema.SOURCE_URI)
    assert carried.to_pylist() == read_dead_letters(db, "chunks").sort_by(schema.SOURCE_URI).to_pylist()


def test_a_table_without_dead_letters_carries_none(tmp_path) -> None:
    assert carry_dead_letters(str(tmp_path / "db"), "chunks", "chunks__new") == 0
    assert read_dead_letters(str(tmp_path / "db"), "chunks__new").num_rows == 0
