"""LanceDB writing: bounded commits of whole documents, idempotent by ``chunk_id``.

Contract:
- Only complete documents are committed (all ``chunk_count`` rows present), so a reader never sees half of a
  document's chunks, whatever block boundaries Ray chose.
- A commit happens every ``sink.commit_rows`` rows or ``sink.commit_seconds`` seconds, and at close.
- ``overwrite`` of an existing table is atomic (:class:`StagedOverwrite`): commits stage data files that no
  version references, and the table switches to them in one commit at close. Readers see the old table until
  then, and a run that fails leaves it whole.
- In a table that existed before the run (``upsert``), each commit is one ``merge_insert`` on ``chunk_id`` that
  also deletes the committed documents' old chunks that are no longer produced: a document is replaced
  atomically, and re-running a job never duplicates rows. A table created by this run is appended to.
- The table's schema metadata records the model identity and embedding settings. Writing with another model
  or other settings is refused with :class:`TableMismatch` (never two models' vectors in one table).
- A document id that arrives twice in one run is kept once; the other copy is reported as
  ``duplicate_doc_id``. That holds for a document the table keeps unchanged too (see :meth:`LanceSink.keep`):
  a second copy in another object is reported instead of replacing it.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.core import url_to_fs

from pipeline import schema
from pipeline.config import ConfigError, SinkConfig, redacted
from pipeline.docids import DocIdSet
from pipeline.known import KnownDocuments, read_known_documents
from pipeline.model import ModelIdentity
from pipeline.storage_options import NO_CREDENTIALS_HINT, as_s3fs_options

DELETE_BATCH = 500
DUPLICATE_SNIPPET_CHARS = 200
DUPLICATE_DETAIL = "this document id appeared more than once in the source; one copy was kept"


def duplicate_detail(location: str | None) -> str:
    """The dead-letter detail of a dropped copy of a duplicate id: ``line 12: this document id ...``."""
    return f"{location}: {DUPLICATE_DETAIL}" if location else DUPLICATE_DETAIL


def _copy_locations(chunks: pa.Table, doc: str) -> list[str | None]:
    """The ``location`` of each chunk-0 row of ``doc`` in ``chunks`` (one per copy, in row order); all None when
    ``chunks`` has no ``location`` column. Looked up only for duplicates, which are rare."""
    firsts = chunks.filter(pc.and_(pc.equal(chunks[schema.DOC_ID], doc), pc.equal(chunks[schema.CHUNK_INDEX], 0)))
    if schema.LOCATION not in chunks.column_names:
        return [None] * firsts.num_rows
    return firsts[schema.LOCATION].to_pylist()


class TableMismatch(RuntimeError):
    """The table was built with another model or other settings than this job's."""


def table_record(identity: ModelIdentity, settings: dict, sections: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a table records about how its vectors were made: the model identity, the embedding settings, and
    the config sections that write more rows like them (``model``, ``chunking``, ``embedding``,
    ``sink.vector_dtype``; what an alias hands to the jobs that follow it)."""
    return {"model": identity.to_json(), "settings": settings, "config": sections or {}}


def recorded_sections(config: Any) -> dict[str, Any]:
    """The parts of a job config a table records (see :func:`table_record`)."""
    # Secret-looking storage options are masked (the record is readable by anyone who can read the table);
    # credentials belong in the environment.
    return {
        "model": redacted(config)["model"],
        "chunking": config.chunking.model_dump(),
        "embedding": config.embedding.model_dump(),
        "vector_dtype": config.sink.vector_dtype,
    }


def read_table_record(table: Any) -> dict[str, Any] | None:
    """The record stored with ``table`` by lateline, or ``None`` for a table lateline did not create."""
    raw = (table.schema.metadata or {}).get(schema.TABLE_METADATA_KEY)
    return json.loads(raw) if raw else None


def check_model(table_name: str, stored: dict[str, Any] | None, identity: ModelIdentity) -> None:
    """Raise :class:`TableMismatch` when ``stored`` (a table's record) holds another model's vectors (or none)."""
    if stored is None:
        raise TableMismatch(
            f"table {table_name!r} was not written by lateline (no model record); use another sink.table"
        )
    model = stored["model"]
    # The document prefix is a setting (check_compatible names it), not a property of the model's vectors space.
    same_model = all(model.get(k) == getattr(identity, k) for k in ("fingerprint", "dim", "pooling"))
    if not same_model:
        raise TableMismatch(
            f"table {table_name!r} holds vectors of model {model['name']}@{model['fingerprint']} (dim {model['dim']}), "
            f"this job uses {identity.label} (dim {identity.dim}). Use the table's model "
            f"(--set model.name_or_path=...); to move the table to the new model, build its vectors beside it "
            f"with `lateline reembed --config <new-model.yaml>` and switch with `lateline promote`."
        )


def check_compatible(table_name: str, stored: dict[str, Any] | None, identity: ModelIdentity, settings: dict) -> None:
    """:func:`check_model`, and the same chunking/embedding settings (what writing needs)."""
    check_model(table_name, stored, identity)
    stored_dtype = stored["model"].get("dtype", "float32")
    if stored_dtype != identity.dtype:
        raise TableMismatch(
            f"table {table_name!r} stores {stored_dtype} vectors; this job asks for {identity.dtype} "
            f"(sink.vector_dtype). Keep sink.vector_dtype={stored_dtype}, or rebuild with --set sink.mode=overwrite."
        )
    differences = settings_differences(stored.get("settings") or {}, settings)
    if differences:
        raise TableMismatch(
            f"table {table_name!r} was built with other chunking/embedding settings: {'; '.join(differences)}. "
            f"Set these keys as the table has them, rebuild it with --set sink.mode=overwrite, or use another "
            f"sink.table."
        )


# The settings a table records (see pipeline.fingerprint.embedding_settings) and the config key behind each.
CONFIG_KEY_OF_SETTING = {
    "chunker.strategy": "chunking.strategy",
    "chunker.size": "chunking.size",
    "chunker.overlap": "chunking.overlap",
    "chunker.sentences_per_chunk": "chunking.sentences_per_chunk",
    "chunker.min_tokens": "chunking.min_tokens",
    "pooling.mode": "embedding.mode",
    "pooling.document_prefix": "embedding.document_prefix",
    "pooling.window_overlap": "embedding.window_overlap",
    "pooling.sentence_pooling": "embedding.mode",  # naive chunks of a CLS model: follows the mode
    "model.name": "model.name_or_path",
    "model.fingerprint": "model.name_or_path",
    "model.max_length": "model.max_length",
}
# Settings whose value is ``name@vN``: the version is lateline's, not the user's to set.
VERSIONED_SETTINGS = ("chunker.strategy", "pooling.mode")
# Settings that differ only along with another one (their config key's line says it all).
FOLLOWING_SETTINGS = ("pooling.sentence_pooling", "model.fingerprint")


def settings_differences(stored: dict, current: dict) -> list[str]:
    """PURE: one ``config.key: table VALUE, this job VALUE`` line per setting that differs between a table's
    recorded settings and a job's (both nested dicts as :func:`pipeline.fingerprint.embedding_settings` makes
    them); a setting one side lacks shows as ``unused``. Versioned values show without their version, unless
    only the version differs: lateline's chunker or pooling changed, and the table must be rebuilt. Empty when
    they are equal."""
    flat_stored, flat_current = _flatten(stored), _flatten(current)
    lines, following = [], []
    for key in sorted(flat_stored.keys() | flat_current.keys()):
        table_value, job_value = flat_stored.get(key, _UNUSED), flat_current.get(key, _UNUSED)
        if table_value != job_value:
            (following if key in FOLLOWING_SETTINGS else lines).append(_difference(key, table_value, job_value))
    return lines or following


def _difference(key: str, table_value: Any, job_value: Any) -> str:
    shown = CONFIG_KEY_OF_SETTING.get(key, key)
    if key in VERSIONED_SETTINGS and isinstance(table_value, str) and isinstance(job_value, str):
        table_value, _, table_version = table_value.partition("@")
        job_value, _, job_version = job_value.partition("@")
        if table_value == job_value:
            return (
                f"{shown}: the table's {table_value!r} is lateline's {table_version}, this lateline's is "
                f"{job_version} (rebuild the table)"
            )
    return f"{shown}: table {_show(table_value)}, this job {_show(job_value)}"


_UNUSED = object()


def _show(value: Any) -> str:
    return "unused" if value is _UNUSED else repr(value) if isinstance(value, str) else str(value)


def _flatten(settings: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# LanceDB reports object-store failures as a Rust debug dump: the words that give the cause away, and the cause.
STORE_FAILURES = (
    ("NoSuchBucket", "the bucket does not exist"),
    ("InvalidAccessKeyId", "the access key is not known there"),
    ("SignatureDoesNotMatch", "the secret key does not match the access key"),
    ("AccessDenied", "access denied"),
    ("tcp connect error", "the endpoint cannot be reached"),
    ("dns error", "the endpoint's host name does not resolve"),
    ("BadScheme", "an http:// endpoint needs allow_http: 'true' in the storage options (or AWS_ALLOW_HTTP=true)"),
    (
        "Failed to get AWS credentials",
        f"{NO_CREDENTIALS_HINT} (or give aws_access_key_id and aws_secret_access_key in the storage options)",
    ),
    (
        "Failed to resolve region",
        "the bucket's region could not be found: give aws_region in the storage options (or AWS_REGION), and "
        "aws_endpoint for an S3-compatible store",
    ),
)


class SinkUnreachable(ConfigError):
    """The sink's database cannot be opened: a wrong URI, bucket, endpoint or credentials."""


def store_failure(exc: BaseException) -> str:
    """A one-line cause of an object-store error: a known cause, else the start of the message."""
    text = str(exc)
    for needle, cause in STORE_FAILURES:
        if needle in text:
            return cause
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def connect(uri: str, storage_options: dict[str, Any] | None = None) -> Any:
    """A LanceDB connection (local path or object-store URI). Raises :class:`SinkUnreachable` (a
    :class:`ConfigError`, naming ``sink.uri`` and the cause) when the database cannot be reached."""
    try:
        return lancedb.connect(uri, storage_options=storage_options or None)
    except (OSError, ValueError, RuntimeError) as exc:
        raise SinkUnreachable(
            f"sink.uri: cannot open the LanceDB database at {uri!r}: {store_failure(exc)} "
            "(check sink.uri and sink.storage_options)"
        ) from exc


def open_table(uri: str, name: str, storage_options: dict[str, Any] | None = None) -> Any:
    """Open an existing table; ``None`` when it does not exist. A local database directory that does not exist
    is not created (connecting would create it, and a reading command writes nothing)."""
    if "://" not in uri and not Path(uri).expanduser().exists():
        return None
    db = connect(uri, storage_options)
    return db.open_table(name) if name in table_names(db) else None


def missing_table(uri: str, name: str, storage_options: dict[str, Any] | None = None) -> str:
    """The message for ``sink.table`` naming no table at ``uri``, with the closest table's name when there is
    one. Creates nothing."""
    hint = ""
    if "://" in uri or Path(uri).expanduser().exists():
        with contextlib.suppress(Exception):  # only a hint: the message must come out whatever the store says
            hint = did_you_mean(connect(uri, storage_options), name)
    return f"sink.table: no table {name!r} at {uri!r}{hint}; run `lateline index` first"


# Tables lateline keeps beside a table of vectors (its alias history, dead letters and object manifest).
HELPER_SUFFIXES = ("__alias", "__deadletter", "__objects")  # the alias' first


def table_names(db: Any) -> list[str]:
    listing = db.list_tables() if hasattr(db, "list_tables") else db.table_names()
    return list(getattr(listing, "tables", listing))


def did_you_mean(db: Any, name: str) -> str:
    """`` (did you mean 'chunks'?)`` naming the table of vectors or alias at ``db`` closest to a mistyped ``name``
    (helper tables left out), else ``""``. Never raises: it only decorates an error message."""
    try:
        names = table_names(db)
    except Exception:
        return ""
    # Tables of vectors and the aliases (whose own name may hold no table once its original is retired).
    aliases = [t.removesuffix(HELPER_SUFFIXES[0]) for t in names if t.endswith(HELPER_SUFFIXES[0])]
    tables = sorted({*aliases, *(t for t in names if not t.endswith(HELPER_SUFFIXES))})
    close = difflib.get_close_matches(name, tables, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def sql_list(values: list[str]) -> str:
    """A SQL ``IN`` list of string literals."""
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)


def delete_in(table: Any, column: str, values: list[str], also: str = "") -> None:
    """Delete the rows whose ``column`` is one of ``values`` (and that match the SQL condition ``also``), in
    statements of at most ``DELETE_BATCH`` values."""
    for start in range(0, len(values), DELETE_BATCH):
        table.delete(f"{also + ' AND ' if also else ''}{column} IN ({sql_list(values[start : start + DELETE_BATCH])})")


class StagedOverwrite:
    """An overwrite of an existing table as one Lance commit. :meth:`stage` writes rows as data files of the
    table's dataset that no version references yet; :meth:`publish` makes exactly those files the table (an
    ``Overwrite`` commit; with none staged, an empty table). Until then every reader sees the old table.

    A run that fails before :meth:`publish` leaves the old table whole, and :meth:`discard` deletes its staged
    files. Only a driver killed outright leaves them: they are referenced by no version, and Lance's cleanup in
    ``lateline maintain`` can delete them once they are 7 days old (it cannot tell younger ones from a write
    still in progress).
    """

    def __init__(self, table: Any, storage_options: dict[str, Any] | None) -> None:
        dataset = table.to_lance()
        self.uri = dataset.uri
        self.read_version = dataset.version
        self.replaced_rows = dataset.count_rows()  # for the run's header: what the overwrite will replace
        self.file_version = dataset.data_storage_version  # the table's file format, kept across the rebuild
        self.storage_options = storage_options or None
        self.fragments: list[Any] = []

    def stage(self, data: pa.Table, table_schema: pa.Schema) -> None:
        import lance.fragment

        self.fragments += lance.fragment.write_fragments(
            data,
            self.uri,
            schema=table_schema,
            mode="overwrite",  # nothing is committed here; it lets the schema differ (another model's dimension)
            data_storage_version=self.file_version,
            storage_options=self.storage_options,
        )

    def publish(self, table_schema: pa.Schema) -> None:
        import lance

        lance.LanceDataset.commit(
            self.uri,
            lance.LanceOperation.Overwrite(table_schema, self.fragments),
            read_version=self.read_version,
            storage_options=self.storage_options,
        )

    def discard(self) -> int:
        """Delete the staged files; returns how many. Refuses (``RuntimeError``) once the table has moved past
        the version the overwrite started from: a :meth:`publish` that failed may still have committed them."""
        import lance

        version = lance.dataset(self.uri, storage_options=self.storage_options).version
        if version != self.read_version:
            raise RuntimeError(
                f"table at {self.uri} is at version {version}, not {self.read_version}: staged files kept"
            )
        fs, root = url_to_fs(self.uri, **as_s3fs_options(self.storage_options or {}))
        paths = [f"{root.rstrip('/')}/data/{file.path}" for fragment in self.fragments for file in fragment.files]
        if paths:
            fs.rm(paths)
        self.fragments = []
        return len(paths)


class LanceSink:
    """Writes :class:`~pipeline.stages.EmbedChunks` output (skip rows removed) to one LanceDB table."""

    def __init__(
        self,
        config: SinkConfig,
        identity: ModelIdentity,
        settings: dict,
        on_commit: Any = None,
        sections: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.on_commit = on_commit  # called after every commit (dead letters, lock heartbeat)
        self.schema = schema.chunk_schema(identity.dim, config.vector_dtype).with_metadata(
            {schema.TABLE_METADATA_KEY: json.dumps(table_record(identity, settings, sections))}
        )
        self.db = connect(config.uri, config.storage_options)
        self.table = self._open(identity, settings)
        if self.table is not None and schema.CONTENT_SHA256 not in self.table.schema.names:
            # A table from before content hashes were stored: keep writing its columns.
            self.schema = pa.schema([f for f in self.schema if f.name != schema.CONTENT_SHA256], self.schema.metadata)
        self.created_here = self.table is None
        self.partial: dict[str, list[pa.Table]] = defaultdict(list)
        self.ready: list[pa.Table] = []
        self.ready_rows = 0
        # Every id this run wrote or keeps: ~16 bytes an id, not ~100 as a set of str (see pipeline.docids).
        self.seen_docs = DocIdSet()
        self.kept_docs = DocIdSet()
        # Called just before a staged overwrite is published: the runner drops the old table's object manifest
        # there, so that a crash never leaves the new table beside the old table's manifest.
        self.before_publish: Callable[[], None] | None = None
        self.last_commit = time.monotonic()
        self.stats = {"rows_written": 0, "docs_written": 0, "commits": 0, "write_s": 0.0}

    def _open(self, identity: ModelIdentity, settings: dict) -> Any:
        exists = self.config.table in table_names(self.db)
        # ``overwrite`` stages every commit and replaces the table in one commit at close: searches keep the old
        # table whole until the new one is complete, and a run that fails leaves the old one.
        self.staged = None
        if exists and self.config.mode == "overwrite":
            self.staged = StagedOverwrite(self.db.open_table(self.config.table), self.config.storage_options)
        if not exists or self.staged is not None:
            return None
        table = self.db.open_table(self.config.table)
        check_compatible(self.config.table, read_table_record(table), identity, settings)
        return table

    def known_documents(self) -> KnownDocuments:
        """``doc_id -> (doc_fingerprint, source_uri)`` of every document the table holds (empty when new)."""
        return read_known_documents(self.table)

    def delete_documents(self, doc_ids: list[str]) -> int:
        """Remove every chunk of ``doc_ids`` (one commit per ``DELETE_BATCH`` documents); returns the count."""
        if self.table is None:
            return 0
        delete_in(self.table, schema.DOC_ID, doc_ids)
        return len(doc_ids)

    def keep_documents(self, doc_ids: DocIdSet) -> None:
        """Take ``doc_ids`` as the documents the table keeps as they are (to start with, those whose rows do not
        pass through the pipeline): another copy of one of these ids is a duplicate. The set is used, not
        copied, and :meth:`keep` adds to it: an ``index`` run passes its tally of unchanged ids, which is then
        the same set, held once."""
        self.kept_docs = doc_ids

    def keep(self, skip_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Note the documents the table keeps as they are (the ``unchanged`` rows among ``skip_rows``), so that
        another copy of the same id arriving later is a duplicate, not a replacement. Returns ``skip_rows`` with
        each ``unchanged`` row whose id this run already took (written, partly arrived, or kept) turned into a
        ``duplicate_doc_id`` row: the copy taken first stays."""
        unchanged = [row[schema.DOC_ID] for row in skip_rows if row[schema.ERROR] == schema.UNCHANGED]
        taken = {doc for doc, was_taken in zip(unchanged, self._taken(unchanged)) if was_taken}
        rows = []
        for row in skip_rows:
            doc = row[schema.DOC_ID]
            if row[schema.ERROR] == schema.UNCHANGED and doc in taken:
                detail = duplicate_detail(row.get(schema.LOCATION))
                row = {**row, schema.ERROR: "duplicate_doc_id", schema.ERROR_DETAIL: detail}
            elif row[schema.ERROR] == schema.UNCHANGED:
                taken.add(doc)  # a second copy in the same batch is a duplicate too
                self.kept_docs.add(doc)
            rows.append(row)
        return rows

    def _taken(self, docs: list[str]) -> list[bool]:
        """Whether this run already took each of ``docs``: written, partly arrived, or kept."""
        found = self.seen_docs.contains(docs) | self.kept_docs.contains(docs)
        return [bool(hit) or doc in self.partial for doc, hit in zip(docs, found)]

    def write(self, chunks: pa.Table) -> list[dict[str, Any]]:
        """Queue chunk rows; commit when a bound is reached. Returns rows of duplicate documents dropped.
        ``chunks`` may carry a ``location`` column (where each row's record sits in its object): a dropped
        copy's dead letter names it. Only the stored schema's columns are kept."""
        complete, duplicates = self._complete_documents(chunks.select(self.schema.names).cast(self.schema), chunks)
        if complete.num_rows:
            self.ready.append(complete)
            self.ready_rows += complete.num_rows
        if self.ready_rows >= self.config.commit_rows or (
            self.ready_rows and time.monotonic() - self.last_commit >= self.config.commit_seconds
        ):
            self.commit()
        return duplicates

    def _complete_documents(self, chunks: pa.Table, located: pa.Table) -> tuple[pa.Table, list[dict[str, Any]]]:
        counts = chunks.group_by(schema.DOC_ID).aggregate([(schema.CHUNK_ID, "count"), (schema.CHUNK_COUNT, "max")])
        docs, arrived, expected_counts = (counts.column(i).to_pylist() for i in range(3))
        earlier = self.seen_docs.contains(docs) | self.kept_docs.contains(docs)
        whole, duplicates, held = [], [], []
        for doc, count, expected, taken in zip(docs, arrived, expected_counts, earlier):
            if taken or count > expected or self._repeats_held(doc, chunks):
                duplicates.append(doc)
            elif count == expected and doc not in self.partial:
                whole.append(doc)
            else:
                held.append(doc)
        complete = chunks.filter(pc.is_in(chunks[schema.DOC_ID], pa.array(whole, pa.string())))
        self.seen_docs.update(whole)
        released = [self._hold(doc, chunks) for doc in held]
        complete = pa.concat_tables([complete, *[t for t in released if t is not None]])
        return complete, self._duplicate_rows(duplicates, chunks, located)

    def _repeats_held(self, doc: str, chunks: pa.Table) -> bool:
        """Whether ``chunks`` bring a chunk of ``doc`` that is already held: a second copy, not the rest."""
        if doc not in self.partial:
            return False
        held = {i for part in self.partial[doc] for i in part[schema.CHUNK_INDEX].to_pylist()}
        incoming = chunks.filter(pc.equal(chunks[schema.DOC_ID], doc))[schema.CHUNK_INDEX].to_pylist()
        return not held.isdisjoint(incoming)

    def _hold(self, doc: str, chunks: pa.Table) -> pa.Table | None:
        """Keep a document's rows until all its chunks arrived; then release them."""
        self.partial[doc].append(chunks.filter(pc.equal(chunks[schema.DOC_ID], doc)))
        parts = pa.concat_tables(self.partial[doc])
        if parts.num_rows < parts[schema.CHUNK_COUNT][0].as_py():
            return None
        del self.partial[doc]
        self.seen_docs.add(doc)
        return parts

    def _duplicate_rows(self, docs: list[str], chunks: pa.Table, located: pa.Table) -> list[dict[str, Any]]:
        """One ``duplicate_doc_id`` row per dropped copy, counted by its chunk 0: a copy whose chunks span
        several blocks is reported once, in the block that holds its first chunk. Its detail starts with the
        copy's location when ``located`` (the incoming rows, before the stored columns were selected) has one."""
        rows = []
        for doc in docs:
            of_doc = chunks.filter(pc.equal(chunks[schema.DOC_ID], doc))
            firsts = of_doc.filter(pc.equal(of_doc[schema.CHUNK_INDEX], 0))
            texts = firsts[schema.TEXT].to_pylist()
            copies = list(zip(firsts[schema.SOURCE_URI].to_pylist(), texts, _copy_locations(located, doc)))
            if not self._taken([doc])[0]:  # both copies in one block: keep the first
                self.ready.append(self._first_copy(of_doc))
                self.ready_rows += self.ready[-1].num_rows
                self.seen_docs.add(doc)
                copies = copies[1:]
            rows.extend(
                {
                    schema.DOC_ID: doc,
                    schema.SOURCE_URI: uri,
                    schema.ERROR: "duplicate_doc_id",
                    schema.ERROR_DETAIL: duplicate_detail(location),
                    schema.SNIPPET: (text or "")[:DUPLICATE_SNIPPET_CHARS],  # the dropped copy's first chunk
                }
                for uri, text, location in copies
            )
        return rows

    @staticmethod
    def _first_copy(rows: pa.Table) -> pa.Table:
        fingerprint = rows[schema.DOC_FINGERPRINT][0]
        same = rows.filter(pc.equal(rows[schema.DOC_FINGERPRINT], fingerprint))
        first_positions: list[int] = []
        seen: set[str] = set()
        for position, chunk in enumerate(same[schema.CHUNK_ID].to_pylist()):
            if chunk not in seen:
                seen.add(chunk)
                first_positions.append(position)
        return same.take(first_positions)

    def commit(self) -> None:
        """Write everything queued in one LanceDB commit (in an ``overwrite``, stage it for the one at close)."""
        if not self.ready:
            return
        started = time.perf_counter()
        data = pa.concat_tables(self.ready)
        if self.staged is not None:
            self.staged.stage(data, self.schema)
        elif self.table is None:
            self.table = self._create(data)
        elif self.created_here:
            self.table.add(data)
        else:
            docs = pc.unique(data[schema.DOC_ID]).to_pylist()
            (
                self.table.merge_insert(schema.CHUNK_ID)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(f"{schema.DOC_ID} IN ({sql_list(docs)})")
                .execute(data)
            )
        self.stats["rows_written"] += data.num_rows
        self.stats["docs_written"] += len(pc.unique(data[schema.DOC_ID]))
        self.stats["commits"] += 1
        self.stats["write_s"] += time.perf_counter() - started
        self.ready, self.ready_rows, self.last_commit = [], 0, time.monotonic()
        if self.on_commit is not None:
            self.on_commit()

    def _create(self, data: pa.Table) -> Any:
        return self.db.create_table(self.config.table, data=data, schema=self.schema)

    def close(self) -> dict[str, Any]:
        """Commit what is left (an ``overwrite`` replaces the table now, with an empty one when it wrote nothing);
        return write counters with the table's row count and version.

        Rows of documents still incomplete here mean a stage lost rows: that is a bug, reported as an error.
        """
        self.commit()
        if self.partial:
            raise RuntimeError(f"incomplete documents at the end of the run: {sorted(self.partial)[:10]}")
        published = {}
        if self.staged is not None:
            if self.before_publish is not None:
                self.before_publish()
            self.staged.publish(self.schema)
            self.table, self.staged, published = self.db.open_table(self.config.table), None, {"published": True}
        return {**self.stats, **published, **self.table_state()}

    def table_state(self) -> dict[str, Any]:
        """``table_rows`` and ``table_version`` of the table as it is now (0 and ``None`` before it exists)."""
        if self.table is None:
            return {"table_rows": 0, "table_version": None}
        return {"table_rows": self.table.count_rows(), "table_version": self.table.version}

    def abandon(self) -> dict[str, Any]:
        """Give up a staged ``overwrite``: the table stays as it was and the staged files are deleted (see
        :meth:`StagedOverwrite.discard`). Returns the write counters, ``published: False``, and the kept table's
        row count and version."""
        staged, self.staged, self.ready, self.ready_rows = self.staged, None, [], 0
        if staged is not None:
            staged.discard()
        kept = self.db.open_table(self.config.table)
        return {**self.stats, "published": False, "table_rows": kept.count_rows(), "table_version": kept.version}
