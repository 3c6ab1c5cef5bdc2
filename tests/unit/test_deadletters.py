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


def test_the_plain_listing_escapes_control_characters_of_a_record(capsys) -> None:
    from jobs.deadletter import _list

    row = {
        "reason": "invalid_utf8",
        "source_uri": "file:///docs/bin\x07.txt",
        "doc_id": None,
        "detail": "file: bad byte",
        "snippet": "\x00\x01 text\tand\nmore \x1b[2J naïve",
    }
    _list([row], as_json=False)
    out = capsys.readouterr().out
    escaped = "\\x00\\x01 text and more \\x1b[2J naïve"
    assert out == f"invalid_utf8       file:///docs/bin\\x07.txt  -  file: bad byte  | {escaped}\n"
