"""Aliases: one name (``sink.table``) that serves a table, switched atomically by promote and rollback.

An alias ``<name>`` is a small LanceDB table ``<name>__alias`` beside the tables. It holds the alias' history,
one row per change: ``seq``, ``action`` (``initial``, ``promote`` or ``rollback``), ``table``, ``at`` (UTC,
ISO 8601) and ``note``. Appending a row is one Lance commit, so a switch is atomic: a reader sees the old or
the new serving table, never anything in between. The serving table is the top of a stack replayed from the
history (promote pushes, rollback pops). Without an alias table, ``<name>`` is itself the table, which is how
every table starts.

Jobs that read or write the serving table call :func:`follow`: it points ``sink.table`` at the serving table
and, with ``sink.follow_alias`` (the default), adopts the model, chunking and embedding settings the serving
table records. That is how a promote switches searches and scheduled index jobs without editing their configs.
Old tables stay (for rollback) until ``lateline retire`` drops them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from pipeline.config import ChunkingConfig, ConfigError, EmbeddingConfig, JobConfig, ModelConfig
from pipeline.lock import TableLock, TableLocked
from pipeline.sink import HELPER_SUFFIXES as SINK_HELPER_SUFFIXES
from pipeline.sink import connect, did_you_mean, read_table_record, table_names

ALIAS_SUFFIX = "__alias"
HELPER_SUFFIXES = SINK_HELPER_SUFFIXES
HISTORY_SCHEMA = pa.schema(
    [
        pa.field("seq", pa.int64()),
        pa.field("action", pa.string()),
        pa.field("table", pa.string()),
        pa.field("at", pa.string()),
        pa.field("note", pa.string()),
    ]
)


class AliasError(RuntimeError):
    """A promote or rollback that cannot happen (missing table, nothing to roll back to, ...)."""


@dataclass(frozen=True)
class AliasState:
    """An alias as its history leaves it: ``serving`` is ``stack[-1]``; ``history`` rows oldest first."""

    name: str
    stack: tuple[str, ...]
    history: tuple[dict[str, Any], ...]

    @property
    def serving(self) -> str:
        return self.stack[-1] if self.stack else self.name


def replay(name: str, history: list[dict[str, Any]]) -> AliasState:
    """PURE: the alias after applying ``history`` (rows in any order; ``seq`` orders them)."""
    rows = sorted(history, key=lambda row: row["seq"])
    stack: list[str] = []
    for row in rows:
        if row["action"] in {"initial", "promote"}:
            stack.append(row["table"])
        elif row["action"] == "rollback" and len(stack) > 1:
            stack.pop()
    return AliasState(name, tuple(stack), tuple(rows))


def alias_state(db: Any, name: str) -> AliasState:
    """The alias ``name`` in the LanceDB connection ``db`` (an empty history when it was never promoted)."""
    if name + ALIAS_SUFFIX not in table_names(db):
        return AliasState(name, (), ())
    return replay(name, db.open_table(name + ALIAS_SUFFIX).to_arrow().to_pylist())


def serving_table(db: Any, name: str) -> str:
    """The table the alias ``name`` serves; ``name`` itself when there is no alias."""
    return alias_state(db, name).serving


def served_tables(db: Any, name: str | None = None) -> dict[str, str]:
    """Every table an alias of ``db`` serves (promoted at least once) -> that alias; with ``name``, also the
    table ``name`` serves (before its first promote, the table of that name: searches use it)."""
    aliases = [t.removesuffix(ALIAS_SUFFIX) for t in table_names(db) if t.endswith(ALIAS_SUFFIX)]
    served = {alias_state(db, alias).serving: alias for alias in aliases}
    return served if name is None else {serving_table(db, name): name, **served}


def in_family(table: str, name: str) -> bool:
    """Whether ``table`` is named as one of the alias ``name``'s tables: ``name`` or ``name__*``."""
    return table == name or table.startswith(name + "__")


def model_tables(db: Any, name: str) -> list[str]:
    """Tables that belong to the alias ``name`` (:func:`in_family`), without helper tables."""
    return sorted(t for t in table_names(db) if in_family(t, name) and not t.endswith(HELPER_SUFFIXES))


def promote(
    db: Any,
    uri: str,
    name: str,
    table: str,
    note: str = "",
    storage_options: dict | None = None,
    check: Callable[[], list[str]] | None = None,
) -> AliasState:
    """Make ``table`` the one the alias ``name`` serves (one atomic commit). The first promote also records the
    table that served until then (``name`` itself) so that :func:`rollback` can return to it.

    Holds ``table``'s writer lock throughout (a running ``reembed`` into it makes this raise ``TableLocked``)
    and runs ``check`` under it: any problems it returns abort the promote with :class:`AliasError`."""
    if table not in table_names(db):
        raise AliasError(
            f"no table {table!r} at {uri!r}{did_you_mean(db, table)} to promote (`lateline reembed --config <this "
            "config>` builds one; to "
            f"serve the table that served before the last promote, use `lateline rollback`; or name one with --table)"
        )
    if table.endswith(HELPER_SUFFIXES):
        raise AliasError(f"{table!r} is one of lateline's helper tables, not a table of vectors: it cannot be served")
    with (
        TableLock(uri, table, f"promote-{table}", storage_options),
        TableLock(uri, name + ALIAS_SUFFIX, f"promote-{table}", storage_options),
    ):
        problems = check() if check else []
        if problems:
            raise AliasError(f"not promoting {table!r}: " + "; ".join(problems))
        state = alias_state(db, name)
        if state.serving == table:  # (before a first promote, the table named like the alias serves)
            raise AliasError(f"alias {name!r} already serves {table!r}")
        rows = []
        if not state.history and name in table_names(db) and table != name:
            rows.append(_row(0, "initial", name, "the table that served before the first promote"))
        rows.append(_row(_next_seq(state) + len(rows), "promote", table, note))
        _append(db, name, rows)
        return alias_state(db, name)


def rollback(db: Any, uri: str, name: str, note: str = "", storage_options: dict | None = None) -> AliasState:
    """Serve again the table that served before the last promote (one atomic commit)."""
    with TableLock(uri, name + ALIAS_SUFFIX, "rollback", storage_options):
        state = alias_state(db, name)
        if len(state.stack) < 2:
            raise AliasError(f"alias {name!r} has no earlier table to roll back to (serving {state.serving!r})")
        previous = state.stack[-2]
        if previous not in table_names(db):
            raise AliasError(f"alias {name!r} would roll back to {previous!r}, which no longer exists")
        try:  # a table being written (a re-embed resumed into it) is not served: searches would see it change
            TableLock(uri, previous, "rollback-check", storage_options).refuse_if_held()
        except TableLocked as exc:
            raise TableLocked(f"alias {name!r} would roll back to {previous!r}, but that {exc}") from None
        _append(db, name, [_row(_next_seq(state), "rollback", previous, note)])
        return alias_state(db, name)


def _next_seq(state: AliasState) -> int:
    return max((row["seq"] for row in state.history), default=-1) + 1


def _row(seq: int, action: str, table: str, note: str) -> dict[str, Any]:
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"seq": seq, "action": action, "table": table, "at": at, "note": note}


def _append(db: Any, name: str, rows: list[dict[str, Any]]) -> None:
    data = pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA)
    if name + ALIAS_SUFFIX in table_names(db):
        db.open_table(name + ALIAS_SUFFIX).add(data)
    else:
        db.create_table(name + ALIAS_SUFFIX, data=data, schema=HISTORY_SCHEMA)


def follow(config: JobConfig) -> tuple[JobConfig, str | None]:
    """``config`` pointed at the table its ``sink.table`` serves, and a line saying so (``None`` when the name
    is not an alias). With ``sink.follow_alias`` the serving table's recorded model, chunking, embedding and
    vector dtype replace the config's, so jobs keep writing vectors like the ones the table holds."""
    if _local_path_missing(config.sink.uri):  # nothing there yet (and connecting would create the directory)
        return config, None
    db = connect(config.sink.uri, config.sink.storage_options)
    state = alias_state(db, config.sink.table)
    if not state.history:  # not an alias (yet): the name is the table
        return config, None
    serving = state.serving
    if serving not in table_names(db):
        raise AliasError(
            f"sink.table: alias {config.sink.table!r} serves {serving!r}, which no longer exists at "
            f"{config.sink.uri!r}; `lateline rollback` (or promote another table) first"
        )
    followed = pointed_at(config, db, serving, adopt=config.sink.follow_alias)
    line = f"sink.table {config.sink.table!r} is an alias serving {serving!r}"
    if not config.sink.follow_alias:
        return followed, f"{line} (sink.follow_alias: false: this config's model and settings must be the table's)"
    # The config's own model, chunking and embedding (--set ones included) give way to the table's: say so.
    model = followed.model.name_or_path
    return followed, f"{line}: its model ({model}), chunking and embedding settings replace this config's"


def _local_path_missing(uri: str) -> bool:
    path = uri.removeprefix("file://")
    return "://" not in path and not Path(path).expanduser().exists()


def _recorded_sections(table: str, model: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """The model, chunking and embedding sections ``table`` records, validated; a ``ConfigError`` naming the
    table and the keys when this version refuses them (never the values: the model's options may hold secrets)."""
    try:
        return {
            "model": ModelConfig.model_validate(model, context={"recorded": True}),
            "chunking": ChunkingConfig.model_validate(sections["chunking"]),
            "embedding": EmbeddingConfig.model_validate(sections["embedding"]),
        }
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False))
        raise ConfigError(
            f"sink.table: the table {table!r} records settings this version of lateline refuses ({problems}); "
            "re-embed it with a current config, or set sink.follow_alias: false"
        ) from None


def pointed_at(config: JobConfig, db: Any, table: str, adopt: bool = True) -> JobConfig:
    """``config`` with ``sink.table = table``; with ``adopt``, also the model, chunking, embedding and vector
    dtype ``table`` records (a table without a record keeps the config's)."""
    sink: dict[str, Any] = {"table": table}
    updates: dict[str, Any] = {}
    record = read_table_record(db.open_table(table)) if table in table_names(db) else None
    sections = (record or {}).get("config") or {}
    if adopt and sections:
        # The record masks secret-looking model storage options; the job's own options fill them in.
        recorded = {k: v for k, v in sections["model"].get("storage_options", {}).items() if v != "***"}
        model = {**sections["model"], "storage_options": {**recorded, **config.model.storage_options}}
        updates = _recorded_sections(table, model, sections)
        sink["vector_dtype"] = sections.get("vector_dtype", "float32")
    return config.model_copy(update={**updates, "sink": config.sink.model_copy(update=sink)})


MISSING_DOCUMENTS = "missing_documents"  # the one promotion problem ``--force`` may override


def promotion_problems(db: Any, uri: str, name: str, table: str) -> list[tuple[str, str]]:
    """Why ``table`` should not serve the alias ``name`` yet, as ``(kind, message)`` pairs (none: it may). It
    must exist, be lateline's, hold rows, and hold every document the serving table holds. (That no job writes
    it is checked by :func:`promote` holding its lock.)"""
    from pipeline.compare import table_side

    if table not in table_names(db):
        return [("missing_table", f"no table {table!r} at {uri!r} (lateline reembed builds it)")]
    candidate = db.open_table(table)
    if read_table_record(candidate) is None:
        return [("not_lateline", f"table {table!r} was not written by lateline (no model record)")]
    problems = []
    new = table_side(candidate, table)
    if new.rows == 0:
        problems.append(("empty", f"table {table!r} is empty"))
    serving = serving_table(db, name)
    if serving != table and serving in table_names(db):
        old = table_side(db.open_table(serving), serving)
        missing = sorted(old.doc_ids - new.doc_ids)
        if missing:
            message = (
                f"table {table!r} lacks {len(missing)} of the {old.documents} documents {serving!r} serves "
                f"(e.g. {missing[:5]}); finish `lateline reembed` (it resumes) or check its dead letters"
            )
            problems.append((MISSING_DOCUMENTS, message))
    return problems


def check_retirable(
    db: Any, uri: str, name: str, tables: list[str], storage_options: dict[str, Any] | None = None
) -> None:
    """Raise :class:`AliasError` unless every one of ``tables`` exists, is a table of vectors (a helper table
    goes with its table) and is not what the alias ``name``, or any other alias, serves; :class:`TableLocked`
    when a job is writing one of them (checked for all before any is dropped, and by a dry run alike)."""
    serving = served_tables(db, name)
    for table in tables:
        if table not in table_names(db):
            raise AliasError(f"--table: no table {table!r} at {uri!r}{did_you_mean(db, table)}")
        if table.endswith(HELPER_SUFFIXES):
            raise AliasError(
                f"--table: {table!r} is one of lateline's helper tables; it is dropped with the table it belongs to"
            )
        if table in serving:
            raise AliasError(f"table {table!r} is what alias {serving[table]!r} serves; promote or roll back first")
    for table in tables:
        try:
            TableLock(uri, table, "retire-check", storage_options).refuse_if_held()
        except TableLocked as exc:
            raise TableLocked(f"{table!r} cannot be retired: {exc}") from None


def retire(db: Any, uri: str, name: str, tables: list[str], storage_options: dict | None = None) -> list[str]:
    """Drop ``tables`` of the alias ``name`` with their dead-letter and manifest tables (each under its writer
    lock); returns them. The serving table is refused with :class:`AliasError` (see :func:`check_retirable`)."""
    check_retirable(db, uri, name, tables, storage_options)
    for table in tables:
        with TableLock(uri, table, f"retire-{table}", storage_options):
            for helper in ("", "__deadletter", "__objects"):
                if table + helper in table_names(db):
                    db.drop_table(table + helper)
    return tables
