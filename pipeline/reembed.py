"""Re-embed: build another model's vectors for a whole table from the chunks it already stores.

``run_reembed`` reads the serving table (or ``--from``) at one pinned version, rebuilds each document's text
from its chunks (:func:`pipeline.chunking.rebuild_text`) and embeds it with the job's model into a new table
(``<alias>__<model>-<settings digest>`` unless named), never the one being read. Object storage is not read.

- Same chunker settings: the stored chunks are kept (same ``chunk_id`` s and char offsets); only token offsets
  are recomputed for the new tokenizer. Another chunker: the rebuilt text is chunked afresh.
- Fingerprints are computed from the stored content hash and the new settings, exactly as an index run over
  the source would, so once the new table is promoted, unchanged documents stay unchanged.
- Resumable like a backfill: whole-document commits, and a rerun skips documents the new table already holds
  with the same fingerprint. Failing documents are dead-lettered (``<new table>__deadletter``). A complete
  run removes from the new table documents the source table no longer holds, and carries the object
  manifest over, so the first index after a promote does not even download unchanged objects.
- The serving table is only read, so searches keep using it until ``lateline promote``.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from pipeline import schema
from pipeline.aliases import in_family, served_tables, serving_table
from pipeline.chunking import rebuild_text
from pipeline.config import JobConfig
from pipeline.deadletters import DeadLetterLog, carry_dead_letters
from pipeline.docids import DocIdSet, FingerprintIndex
from pipeline.fingerprint import document_fingerprint, settings_digest
from pipeline.known import KnownDocuments
from pipeline.lock import TableLock
from pipeline.manifest import ObjectManifest, object_digest
from pipeline.model import ModelIdentity
from pipeline.sink import (
    LanceSink,
    connect,
    did_you_mean,
    read_table_record,
    recorded_sections,
    sql_list,
    table_names,
)
from pipeline.sources import fingerprinted
from pipeline.stages import Stopwatch, report, resolve_known

STORED_COLUMNS = [
    schema.DOC_ID,
    schema.CHUNK_INDEX,
    schema.CHUNK_COUNT,
    schema.TEXT,
    schema.CHAR_START,
    schema.CHAR_END,
    schema.SOURCE_URI,
    schema.METADATA,
    schema.CONTENT_SHA256,
]
_int_list = pa.list_(pa.int32())
# Documents rebuilt from a table: the reader's columns plus the chunk ranges to keep (null: chunk afresh).
STORED_DOCUMENTS = pa.schema(
    [*list(schema.DOCUMENTS), pa.field(schema.CHAR_STARTS, _int_list), pa.field(schema.CHAR_ENDS, _int_list)]
)


class ReembedError(RuntimeError):
    """The re-embed cannot start: no source table, or one that cannot be re-embedded."""


class NothingToReembed(ReembedError):
    """The table already holds this model's vectors with these settings (e.g. after its promote): done."""


@dataclass(frozen=True)
class StoredTable:
    """The table being re-embedded, as read tasks open it: its Lance dataset URI at a pinned version."""

    uri: str
    version: int
    storage_options: dict[str, Any]
    keep_spans: bool
    batch_docs: int = 1_000


def target_name(alias: str, identity: ModelIdentity, settings: dict, vector_dtype: str = "float32") -> str:
    """The default name of a re-embed's table: ``<alias>__<model name>-<first 8 of the settings digest>``, with
    ``-float16`` when it stores float16 vectors (a table holds one vector dtype)."""
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", identity.name).strip("-") or "model"
    dtype = "" if vector_dtype == "float32" else f"-{vector_dtype}"
    return f"{alias}__{model}-{settings_digest(settings)[:8]}{dtype}"


# --- read tasks ------------------------------------------------------------------------------------------
def read_stored_documents(
    fragments: pa.Table, stored: StoredTable, digest: str, known: Any = None, stats: Any = None
) -> Iterator[pa.Table]:
    """Ray task body: the documents whose first chunk lies in the given fragments (column ``fragment_id``), as
    ``STORED_DOCUMENTS`` tables with fingerprints; documents ``known`` holds unchanged become markers."""
    import lance

    watch = Stopwatch()
    dataset = lance.dataset(stored.uri, version=stored.version, storage_options=stored.storage_options or None)
    known = resolve_known(known) or {}

    def fetch(doc_ids: list[str]) -> pa.Table:
        return dataset.to_table(columns=STORED_COLUMNS, filter=f"{schema.DOC_ID} IN ({sql_list(doc_ids)})")

    for fragment in fragments["fragment_id"].to_pylist():
        batches = dataset.get_fragment(fragment).to_batches(columns=STORED_COLUMNS, batch_size=8_192)
        for docs in documents_from_batches(batches, fetch, stored.keep_spans, stored.batch_docs):
            rows = [fingerprinted(doc, digest, known) for doc in docs]
            report(stats, {"docs_in": len(rows), **watch.elapsed("read")})
            yield pa.Table.from_pylist(rows, schema=STORED_DOCUMENTS)
            watch.restart()


def documents_from_batches(
    batches: Any, fetch: Callable[[list[str]], pa.Table], keep_spans: bool, batch_docs: int
) -> Iterator[list[dict[str, Any]]]:
    """Group stored chunk rows into documents, ``batch_docs`` at a time. A document belongs to the fragment
    holding its chunk 0; one whose other chunks lie elsewhere is completed with ``fetch(doc_ids)`` (rows of
    those documents), so every document is produced exactly once and whole."""
    pending: dict[str, dict[int, dict[str, Any]]] = {}
    ready: list[dict[str, Any]] = []
    for batch in batches:
        for row in batch.to_pylist():
            pending.setdefault(row[schema.DOC_ID], {})[row[schema.CHUNK_INDEX]] = row
        for doc_id in [d for d, chunks in pending.items() if _complete(chunks)]:
            ready.append(rebuild_document(pending.pop(doc_id), keep_spans))
        while len(ready) >= batch_docs:
            yield ready[:batch_docs]
            ready = ready[batch_docs:]
    owned = [doc_id for doc_id, chunks in pending.items() if 0 in chunks]
    if owned:
        for row in fetch(owned).to_pylist():
            pending[row[schema.DOC_ID]][row[schema.CHUNK_INDEX]] = row
        ready.extend(rebuild_document(pending[doc_id], keep_spans) for doc_id in owned)
    for start in range(0, len(ready), batch_docs):
        yield ready[start : start + batch_docs]


def _complete(chunks: dict[int, dict[str, Any]]) -> bool:
    return 0 in chunks and len(chunks) == chunks[0][schema.CHUNK_COUNT]


def rebuild_document(chunks: dict[int, dict[str, Any]], keep_spans: bool) -> dict[str, Any]:
    """PURE: a ``STORED_DOCUMENTS`` row from a document's stored chunks (``chunk_index -> row``)."""
    ordered = [chunks[index] for index in sorted(chunks)]
    first = ordered[0]
    starts = [c[schema.CHAR_START] for c in ordered]
    ends = [c[schema.CHAR_END] for c in ordered]
    return {
        schema.DOC_ID: first[schema.DOC_ID],
        schema.TEXT: rebuild_text([(c[schema.CHAR_START], c[schema.CHAR_END], c[schema.TEXT]) for c in ordered]),
        schema.SOURCE_URI: first[schema.SOURCE_URI],
        schema.METADATA: first[schema.METADATA],
        schema.ERROR: None,
        schema.ERROR_DETAIL: None,
        schema.SNIPPET: None,
        schema.DOC_FINGERPRINT: None,
        schema.CONTENT_SHA256: first[schema.CONTENT_SHA256],
        schema.CHAR_STARTS: starts if keep_spans else None,
        schema.CHAR_ENDS: ends if keep_spans else None,
    }


# --- the driver ------------------------------------------------------------------------------------------
def carry_manifest(
    config: JobConfig, source: str, source_key: str, digest: str, dead_objects: set[str], run_id: str
) -> int:
    """Copy the source table's object manifest to the new table (``config.sink.table``) under the new settings
    (``digest``: their :func:`~pipeline.manifest.object_digest`), except entries not recorded under the source
    table's own key ``source_key`` (another reader version or other reading settings: the source table would
    read them again too) and objects with a dead-lettered document: the first index after a promote then skips
    unchanged objects without downloading them, as it did before. An object with the source table's dead
    letters (carried with their run ids by :func:`~pipeline.deadletters.carry_dead_letters`) no longer matches
    its entry's run id here, so that index reads it once. Returns the rows copied."""
    sink = config.sink
    rows = ObjectManifest(sink.uri, source, sink.storage_options).load()
    carried = [
        {**row, "settings_digest": digest, "run_id": run_id}
        for path, row in rows.items()
        if path not in dead_objects and row["settings_digest"] == source_key
    ]
    ObjectManifest(sink.uri, sink.table, sink.storage_options).record(carried)
    return len(carried)


def open_source(config: JobConfig, source: str | None) -> tuple[str, Any, dict[str, Any]]:
    """``(name, table, record)`` of the table to re-embed: the one ``source`` (default ``sink.table``) serves
    when it is an alias, else ``source`` itself."""
    db = connect(config.sink.uri, config.sink.storage_options)
    name = serving_table(db, source or config.sink.table)
    if name not in table_names(db):
        where = "--from" if source else "sink.table"
        raise ReembedError(
            f"{where}: no table {name!r} at {config.sink.uri!r}{did_you_mean(db, name)} to re-embed; "
            "run `lateline index`"
        )
    table = db.open_table(name)
    record = read_table_record(table)
    if record is None:
        raise ReembedError(f"table {name!r} was not written by lateline (no model record); it cannot be re-embedded")
    if schema.CONTENT_SHA256 not in table.schema.names:
        raise ReembedError(
            f"table {name!r} was written before lateline stored content hashes ({schema.CONTENT_SHA256}); "
            "rebuild it once with `lateline index --set sink.mode=overwrite`, then re-embed"
        )
    return name, table, record


def run_reembed(
    config: JobConfig, source: str | None = None, target: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Re-embed the table ``source`` (default ``sink.table``; an alias stands for the table it serves) with
    ``config``'s model and chunking into ``target`` (default :func:`target_name` of ``sink.table``, or of
    ``source`` when that is not one of ``sink.table``'s tables); returns the run summary (also written to
    disk). A target some alias serves is refused (unless it is the source: then there is nothing to do).

    Raises :class:`ReembedError`, ``TableMismatch`` or ``TableLocked`` before any work when it cannot start.
    """
    from pipeline import runner

    source_name, table, record = open_source(config, source)
    context = runner.prepare(config, "reembed", [], limit)
    family = config.sink.table if source is None or in_family(source, config.sink.table) else source
    named = target is not None
    target = target or target_name(family, context.identity, context.settings, config.sink.vector_dtype)
    if target == source_name:
        raise NothingToReembed(
            f"the target is the source table {source_name!r}, which already holds {context.identity.label} "
            "vectors with these settings; nothing to re-embed (pass --to to rebuild into another table)"
        )
    served = served_tables(connect(config.sink.uri, config.sink.storage_options), config.sink.table)
    if target in served:  # a complete re-embed deletes what its source lacks: searches would lose documents
        raise ReembedError(
            f"{'--to' if named else 'the default target'} {target!r} is the table alias {served[target]!r} "
            f"serves, and this re-embeds {source_name!r} into it; name a table no alias serves with --to"
        )
    dataset = table.to_lance()
    stored = StoredTable(
        dataset.uri,
        table.version,
        dict(config.sink.storage_options),
        keep_spans=record["settings"].get("chunker") == context.settings["chunker"],
        batch_docs=config.source.read_batch_docs,
    )
    fragments = [fragment.fragment_id for fragment in dataset.get_fragments()]
    target_config = config.model_copy(update={"sink": config.sink.model_copy(update={"table": target})})
    context = dataclasses.replace(context, config=target_config)
    with TableLock(config.sink.uri, target, context.run_id, config.sink.storage_options) as lock:
        runner.note_interrupted_run(config, "reembed", lock)
        dead_letters = DeadLetterLog(config.sink.uri, target, context.run_id, config.sink.storage_options)

        def on_commit() -> None:
            dead_letters.flush()
            lock.refresh()

        sink = LanceSink(
            target_config.sink, context.identity, context.settings, on_commit, recorded_sections(target_config)
        )
        source_key = object_digest(settings_digest(record["settings"]), config.source)
        summary = _execute(context, sink, dead_letters, stored, fragments, source_name, source_key)
    return summary


def _execute(
    context: Any,
    sink: LanceSink,
    dead_letters: DeadLetterLog,
    stored: StoredTable,
    fragments: list[int],
    source: str,
    source_key: str,
) -> dict[str, Any]:
    from pipeline import runner

    config, started_at, started = context.config, datetime.now(timezone.utc), time.monotonic()
    digest = settings_digest(context.settings)
    known = sink.known_documents() if config.sink.mode == "upsert" else KnownDocuments()
    tally = runner.Tally("reembed", config.runtime.progress_seconds, started=started)
    runner.log(
        f"reembed: {source} (version {stored.version}, {len(fragments)} fragments, "
        f"{'keeping its chunks' if stored.keep_spans else 'chunking afresh'}) -> {config.sink.uri}/"
        f"{config.sink.table} ({len(known):,} documents there) with {context.identity.label}"
    )

    # Stored fragments are not source objects, so the resume map goes whole to each reader: as NumPy arrays,
    # which the readers on a node share from the object store instead of each unpickling a dict.
    fingerprints = FingerprintIndex((doc, fingerprint) for doc, (fingerprint, _) in known.items())
    done = None if context.limit is not None else stored_documents_done(stored, digest, fingerprints)
    if done is not None:
        tally.unchanged.update(done)
        held = f"{config.sink.table} already holds all {len(done):,} documents of {source} with these settings"
        runner.log(
            f"reembed: {held if len(done) else f'{source} holds no documents'}; nothing to embed (Ray not started)"
        )

    def build(actors: Any, stats: Any) -> Any:
        import ray

        from pipeline.plan import build_reembed_dataset

        known_ref = ray.put(fingerprints)
        return build_reembed_dataset(config, stored, fragments, digest, actors, stats, known_ref, context.limit)

    def finish(outcome: dict[str, Any]) -> None:
        if context.limit is not None:
            return
        outcome["deleted"] = sink.delete_documents(sorted(runner.absent_documents(known, sink, tally)))
        key = object_digest(digest, config.source)
        carry_manifest(config, source, source_key, key, tally.dead_objects, context.run_id)
        carry_dead_letters(config.sink.uri, source, config.sink.table, config.sink.storage_options)

    summary_source = {
        "table": source,
        "version": stored.version,
        "fragments": len(fragments),
        "kept_chunks": stored.keep_spans,
    }
    plan = build if fragments and done is None else None
    return runner.execute_job(context, sink, dead_letters, tally, plan, finish, started_at, summary_source)


def stored_documents_done(stored: StoredTable, digest: str, known: FingerprintIndex) -> DocIdSet | None:
    """The ids of the stored table's documents when ``known`` (the target's ``doc_id -> fingerprint``) holds
    every one of them with the fingerprint this re-embed would give it (content hash and ``digest``): then there
    is nothing to embed, and Ray need not start. ``None`` at the first document missing or different, or one
    without a stored content hash. Reads only the pinned version's first chunks' ids and content hashes."""
    if not len(known):
        return None
    import lance

    dataset = lance.dataset(stored.uri, version=stored.version, storage_options=stored.storage_options or None)
    batches = dataset.to_batches(columns=[schema.DOC_ID, schema.CONTENT_SHA256], filter=f"{schema.CHUNK_INDEX} = 0")
    done = DocIdSet()
    for batch in batches:
        for doc_id, content in zip(batch[schema.DOC_ID].to_pylist(), batch[schema.CONTENT_SHA256].to_pylist()):
            if content is None or known.get(doc_id) != document_fingerprint(content, digest):
                return None
            done.add(doc_id)
    return done
