"""Dead letters: records that could not be indexed, kept in the LanceDB table ``<table>__deadletter``.

One row per failed record: ``run_id``, ``recorded_at`` (UTC), ``source_uri``, ``doc_id`` (when known),
``reason`` (a code such as ``invalid_json``), ``detail`` (where: ``line 12: ...``; what went wrong) and
``snippet`` (the start of the raw record). A run replaces the entries of every object it read, so the table
always shows what is broken *now*; ``lateline deadletter replay`` re-reads the objects listed there.

An unchanged object whose letters all have a :data:`SETTLED_REASONS` reason and come from the run its manifest
entry names is not read again (:mod:`pipeline.manifest`): read again, it would get the same letters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from pipeline import schema
from pipeline.sink import connect, delete_in, table_names

SUFFIX = "__deadletter"

DEAD_LETTERS = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
        pa.field(schema.SOURCE_URI, pa.string()),
        pa.field(schema.DOC_ID, pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("snippet", pa.string()),
    ]
)


# Reasons decided by an object's bytes, the reading settings and lateline's readers alone (all three are in the
# manifest's key: pipeline.manifest.object_digest): an unchanged object read again gets the same letters. The
# others may pass on another read (a store or model failure), depend on the tokenizer's files (``no_tokens``,
# ``tokenize_failed``: the model's fingerprint does not cover them) or on other objects (``duplicate_doc_id``),
# so an object with one of them is read again by every run.
SETTLED_REASONS = frozenset(
    {
        "invalid_json",
        "invalid_utf8",
        "missing_id",
        "missing_text",
        "non_string_text",
        "empty_text",
        "too_large",
    }
)


@dataclass(frozen=True)
class ObjectLetters:
    """The dead letters one object has in the table: how many, from which runs, for which reasons, and the
    document ids they name (a skipped object's bad documents keep the rows they had, as if it were read)."""

    count: int
    run_ids: frozenset[str]
    reasons: frozenset[str]
    doc_ids: frozenset[str] = frozenset()

    def settled_by(self, run_id: str | None) -> bool:
        """Whether these letters are all from run ``run_id`` and would come back the same from a new read."""
        return self.run_ids == {run_id} and self.reasons <= SETTLED_REASONS


def dead_letter_table_name(table: str) -> str:
    return f"{table}{SUFFIX}"


class DeadLetterLog:
    """Buffers dead letters of one run and writes them to the dead-letter table."""

    def __init__(self, uri: str, table: str, run_id: str, storage_options: dict[str, Any] | None = None) -> None:
        self.db = connect(uri, storage_options)
        self.name = dead_letter_table_name(table)
        self.run_id = run_id
        self.pending: list[dict[str, Any]] = []
        self.written = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Queue skip rows (``error``, ``error_detail``, ``snippet``, ``source_uri``, ``doc_id``)."""
        now = datetime.now(timezone.utc)
        self.pending.extend(
            {
                "run_id": self.run_id,
                "recorded_at": now,
                schema.SOURCE_URI: row.get(schema.SOURCE_URI),
                schema.DOC_ID: row.get(schema.DOC_ID) or None,
                "reason": row.get(schema.ERROR),
                "detail": row.get(schema.ERROR_DETAIL),
                "snippet": row.get(schema.SNIPPET),
            }
            for row in rows
        )

    def flush(self) -> None:
        if not self.pending:
            return
        data = pa.Table.from_pylist(self.pending, schema=DEAD_LETTERS)
        if self.name in table_names(self.db):
            self.db.open_table(self.name).add(data)
        else:
            self.db.create_table(self.name, data=data, schema=DEAD_LETTERS)
        self.written += data.num_rows
        self.pending = []

    def by_object(self) -> dict[str, ObjectLetters]:
        """The letters in the table (written by any run), by source URI."""
        return _letters_by_object(self.db, self.name)

    def replace_for(self, source_uris: list[str]) -> None:
        """Flush, then drop entries of earlier runs for the objects this run read."""
        self.flush()
        if self.name not in table_names(self.db) or not source_uris:
            return
        delete_in(self.db.open_table(self.name), schema.SOURCE_URI, source_uris, also=f"run_id != '{self.run_id}'")

    def withdraw(self) -> None:
        """Drop every letter of this run, queued or written: for a run whose rows were never published (an
        ``overwrite`` given up), so that the table keeps describing what is broken in the table as it is."""
        self.pending = []
        if self.written and self.name in table_names(self.db):
            self.db.open_table(self.name).delete(f"run_id = '{self.run_id}'")
        self.written = 0


def carry_dead_letters(
    uri: str, source_table: str, target_table: str, storage_options: dict[str, Any] | None = None
) -> int:
    """Copy ``source_table``'s dead letters to ``target_table``, replacing what it held for the same objects.
    A re-embed reads no source objects, so without this the table it builds would list none of the source's
    broken records once promoted, until the next ``index`` read them again. Returns the letters copied."""
    letters = read_dead_letters(uri, source_table, storage_options)
    if not letters.num_rows:
        return 0
    db = connect(uri, storage_options)
    name = dead_letter_table_name(target_table)
    if name not in table_names(db):
        db.create_table(name, data=letters, schema=DEAD_LETTERS)
        return letters.num_rows
    table = db.open_table(name)
    delete_in(table, schema.SOURCE_URI, sorted({u for u in letters[schema.SOURCE_URI].to_pylist() if u}))
    table.add(letters)
    return letters.num_rows


def letters_by_object(uri: str, table: str, storage_options: dict[str, Any] | None = None) -> dict[str, ObjectLetters]:
    """The dead letters ``table`` has, by source URI (connects: the database must exist)."""
    return _letters_by_object(connect(uri, storage_options), dead_letter_table_name(table))


def _letters_by_object(db: Any, name: str) -> dict[str, ObjectLetters]:
    if name not in table_names(db):
        return {}
    columns = [schema.SOURCE_URI, "run_id", "reason", schema.DOC_ID]
    found: dict[str, list[dict[str, Any]]] = {}
    for row in db.open_table(name).search().select(columns).limit(None).to_arrow().to_pylist():
        if row[schema.SOURCE_URI]:
            found.setdefault(row[schema.SOURCE_URI], []).append(row)
    return {
        uri: ObjectLetters(
            len(rows),
            frozenset(r["run_id"] for r in rows),
            frozenset(r["reason"] for r in rows),
            frozenset(r[schema.DOC_ID] for r in rows if r[schema.DOC_ID]),
        )
        for uri, rows in found.items()
    }


def read_dead_letters(uri: str, table: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """All dead letters of ``table`` (an empty table when there are none)."""
    db = connect(uri, storage_options)
    name = dead_letter_table_name(table)
    if name not in table_names(db):
        return DEAD_LETTERS.empty_table()
    return db.open_table(name).to_arrow()
