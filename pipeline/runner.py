"""Run an index plan: validate, list, stream through Ray into the sink, print progress, write the run summary.

Jobs: ``index`` (a whole source; removes documents gone from it), ``backfill`` (a prefix, glob or list of
URIs; never removes anything) and ``replay`` (the objects listed in the dead-letter table). All are
incremental and resumable: a document whose fingerprint the table already holds costs no tokenizing and no
forward pass, commits hold whole documents, and re-running after a crash (even ``kill -9``) neither loses
nor duplicates rows.

Exit codes (:data:`EXIT_CODES`): 0 ok; 1 the run failed; 2 the configuration, source or table does not fit
(nothing written); 3 the failure budget was exceeded, or every record read was dead-lettered (what could be
written was committed, except by an ``overwrite``, which is then not published at all); 4 another job holds
the table; 130 interrupted by Ctrl-C, 143 by SIGTERM (``ray job stop``, Kubernetes, ``kill``; the job's command
installs :func:`pipeline.interrupts.sigterm_interrupts`): in both the summary's status is ``interrupted``. An
``overwrite`` of an existing table is all or nothing: it does not resume, and until it is published the table
stays as it was.

The run summary (``<runtime.summary_dir>/<run_id>/summary.json``, path printed) satisfies
``docs_in == docs_written + docs_skipped_unchanged + docs_dead_lettered``. It is written when the job starts
(``status: running``) and rewritten at every progress line, so a run that dies without a word (``kill -9``, or
Ray's local node dying, which ends the driver at once with exit 1) leaves one with its last counts; the next
run that takes over its lock marks it ``interrupted`` and says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute

from pipeline import schema
from pipeline.allocator import allocator_environment, bundled_jemalloc, environment
from pipeline.config import ConfigError, JobConfig, RuntimeConfig, redacted
from pipeline.deadletters import SETTLED_REASONS, DeadLetterLog
from pipeline.docids import DocIdSet, batched
from pipeline.fingerprint import embedding_settings, settings_digest
from pipeline.interrupts import keeping_sigterm_handler
from pipeline.known import KnownDocuments
from pipeline.lock import TableLock
from pipeline.manifest import ObjectManifest, object_digest
from pipeline.model import ModelIdentity, check_window, describe_model
from pipeline.plan import ActorPlan, build_dataset, size_actor_pool
from pipeline.sink import LanceSink, recorded_sections
from pipeline.sources import SourceObject, list_source_objects, outside_source
from pipeline.stages import ALLOCATOR, COMPUTE_DTYPE, RunStats, split_skips

# 130 and 143: what a shell reports for a command ended by Ctrl-C (128 + SIGINT) and by SIGTERM (128 + 15).
EXIT_CODES = {
    "ok": 0,
    "failed": 1,
    "config": 2,
    "failure_budget_exceeded": 3,
    "locked": 4,
    "interrupted": 130,
    "terminated": 143,
}
SKIP_EXAMPLES = 20


def log(message: str) -> None:
    """Progress and status lines go to stderr, so stdout stays for results."""
    print(message, file=sys.stderr, flush=True)


def new_run_id() -> str:
    """A unique id that sorts by start time (microseconds: a no-change run can take less than a second)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class Tally:
    """What reached the driver: chunk and token counts, unchanged documents, dead letters by reason."""

    job: str
    every: float
    started: float = field(default_factory=time.monotonic)
    cpu_started: float = field(default_factory=time.process_time)  # the driver's CPU clock when the run began
    chunks: int = 0
    tokens: int = 0
    unchanged: DocIdSet = field(default_factory=DocIdSet)  # compact: a run may find millions unchanged
    dead_lettered: Counter = field(default_factory=Counter)
    dead_doc_ids: set[str] = field(default_factory=set)
    unreadable_objects: set[str] = field(default_factory=set)
    dead_objects: set[str] = field(default_factory=set)
    unsettled_objects: set[str] = field(default_factory=set)  # with a letter not in SETTLED_REASONS
    dead_letters_kept: int = 0  # letters of the objects skipped as unchanged: they stay in the table
    docs_by_object: Counter = field(default_factory=Counter)
    objects_skipped: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    sizes: dict[str, int | None] = field(default_factory=dict)  # the objects this run reads -> bytes listed
    arrived: Counter = field(default_factory=Counter)  # source_uri -> its records that reached the driver
    object_rows: dict[str, float] = field(default_factory=dict)  # source_uri -> records its reader reported
    object_rows_seen: int = 0  # how many of the stats actor's object counts were fetched (see RunStats.poll)
    _done: set[str] = field(default_factory=set, repr=False)  # objects whose every record arrived
    _done_weight: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)  # heartbeat thread
    _first_done: tuple[float, float] | None = field(default=None, repr=False)  # (time, share) first seen > 0
    # source.metadata_fields to watch, and those a written document had a value for: a field no document has is
    # most likely misspelt, and would be stored as null in every row without a word.
    metadata_fields: tuple[str, ...] = ()
    metadata_valued: set[str] = field(default_factory=set)

    def add_arrivals(self, batch: pa.Table) -> None:
        """Count the records of an :class:`EmbedChunks` output by object: one per skipped record, one per
        document (its chunk 0). Call it once per output batch, before the sink drops duplicates."""
        first_chunks = pa.compute.fill_null(pa.compute.equal(batch[schema.CHUNK_INDEX], 0), False)
        records = batch.filter(pa.compute.or_(pa.compute.is_valid(batch[schema.ERROR]), first_chunks))
        paths = records[schema.SOURCE_URI].to_pylist()
        with self._lock:
            self.arrived.update(paths)
            for path in set(paths):
                self._settle(path)

    def add_object_rows(self, reported: list[tuple[str, float]]) -> None:
        """Record objects' record counts as their readers reported them (new ones from ``RunStats.poll``)."""
        with self._lock:
            self.object_rows_seen += len(reported)
            for path, rows in reported:
                self.object_rows[path] = rows
                self._settle(path)

    def _settle(self, path: str) -> None:
        """Count ``path`` as done, or no longer done, by what is known of it now (work per object, not per run:
        the progress line must not cost O(objects) every few seconds)."""
        if path not in self.sizes:
            return
        done = path in self.object_rows and self.arrived[path] >= self.object_rows[path]
        if done != (path in self._done):
            (self._done.add if done else self._done.discard)(path)
            self._done_weight += self._weight(path) if done else -self._weight(path)

    @cached_property
    def _mean_size(self) -> float:
        listed = [size for size in self.sizes.values() if size]
        return sum(listed) / len(listed) if listed else 1

    def _weight(self, path: str) -> float:
        return self.sizes[path] or self._mean_size

    @cached_property
    def _total_weight(self) -> float:
        return sum(self._weight(path) for path in self.sizes)

    def done_fraction(self) -> float | None:
        """Share of this run's objects, by listed bytes, whose every record reached the driver: an object counts
        once its reader has reported its record count (:meth:`add_object_rows`) and that many arrived. An
        object listed without a size weighs the mean listed size (1 when none has one). ``None`` when the run
        reads no objects. ``sizes`` must not change once counting has begun."""
        if not self.sizes:
            return None
        with self._lock:
            return self._done_weight / self._total_weight

    def add_chunks(self, chunks: pa.Table) -> None:
        self.chunks += chunks.num_rows
        firsts = chunks.filter(pa.compute.equal(chunks[schema.CHUNK_INDEX], 0))
        self.docs_by_object.update(firsts[schema.SOURCE_URI].to_pylist())
        if len(self.metadata_valued) < len(self.metadata_fields):
            self._note_metadata(firsts[schema.METADATA].to_pylist())
        self.tokens += int((chunks[schema.TOKEN_END].to_numpy() - chunks[schema.TOKEN_START].to_numpy()).sum())

    def _note_metadata(self, documents_metadata: list[str | None]) -> None:
        """Record which watched metadata fields have a value (parsing stops once every one has)."""
        for text in documents_metadata:
            if len(self.metadata_valued) == len(self.metadata_fields):
                return
            values = json.loads(text) if text else {}
            self.metadata_valued.update(name for name in self.metadata_fields if values.get(name) is not None)

    def add_skips(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Count skip rows; return the dead letters among them (everything but ``unchanged``)."""
        dead = []
        for row in rows:
            if row[schema.ERROR] == schema.UNCHANGED:
                self.unchanged.add(row[schema.DOC_ID])
                self.docs_by_object[row[schema.SOURCE_URI]] += 1
                continue
            dead.append(row)
            self.dead_objects.add(row[schema.SOURCE_URI])
            if row[schema.ERROR] not in SETTLED_REASONS:
                self.unsettled_objects.add(row[schema.SOURCE_URI])
            self.dead_lettered[row[schema.ERROR]] += 1
            if row.get(schema.DOC_ID):
                self.dead_doc_ids.add(row[schema.DOC_ID])
            if row[schema.ERROR] == "unreadable_source":
                self.unreadable_objects.add(row[schema.SOURCE_URI])
            if len(self.examples) < SKIP_EXAMPLES:
                self.examples.append(dead_letter_example(row))
        return dead

    def print_progress(self, docs_written: int, counters: dict[str, float], streaming: bool = False) -> None:
        """One progress line. ``counters`` are the stages' (from :meth:`RunStats.poll`): model tokens (through
        the model, windows and special tokens included) show work that has not reached the driver yet. The
        objects' record counts (:meth:`add_object_rows`) give the share of the source done and a time left (see
        :meth:`time_left`). While ``streaming`` and before anything has come out, it says what the run waits
        for: the actors loading the model, then the first block's forward passes."""
        elapsed = time.monotonic() - self.started
        tokens = int(counters.get("forward_tokens", 0))
        line = (
            f"{self.job}: {docs_written:,} docs written, {len(self.unchanged):,} unchanged, "
            f"{sum(self.dead_lettered.values()):,} dead-lettered, {self.chunks:,} chunks, "
            f"{tokens:,} model tokens ({tokens / max(elapsed, 1e-9):,.0f}/s), {elapsed:,.0f}s elapsed"
        )
        if streaming and not (tokens or self.arrived):
            line += ", starting: " + (
                "the first block is in the model" if counters.get("model_load_s") else "actors loading the model"
            )
        done = self.done_fraction()
        if done is not None:
            line += f", {math.floor(done * 100)}% of the source's objects done"  # 100% only when all are
            left = self.time_left(done)
            if left is not None:
                line += f", about {_duration(left)} left"
        log(line)

    def time_left(self, done: float, now: float | None = None) -> float | None:
        """Seconds left at the rate since the first share done was seen, so Ray's start, model loading and the
        first block's forward do not slow the rate. ``None`` until the share has moved past the first one seen
        (the rate since the start would overstate what is left many times over), and once everything is done."""
        if not 0 < done < 1:
            return None
        now = time.monotonic() if now is None else now
        if self._first_done is None:
            self._first_done = (now, done)
        since, done_then = self._first_done
        if done > done_then and now > since:
            return (1 - done) * (now - since) / (done - done_then)
        return None


def dead_letter_example(row: dict[str, Any]) -> dict[str, Any]:
    """A skip row as the summary shows it: the dead-letter table's names (``reason``, ``detail``), no id as
    ``None``."""
    return {
        schema.SOURCE_URI: row.get(schema.SOURCE_URI),
        schema.DOC_ID: row.get(schema.DOC_ID) or None,
        "reason": row.get(schema.ERROR),
        "detail": row.get(schema.ERROR_DETAIL),
        "snippet": row.get(schema.SNIPPET),
    }


def _table_now(sink: LanceSink, known: KnownDocuments) -> str:
    """What the run header says of the target table."""
    if sink.staged is not None:
        return f"an overwrite of its {sink.staged.replaced_rows:,} rows, replaced when the run is done"
    return f"{len(known):,} documents there"


def _plural(count: int, noun: str) -> str:
    """``1 jsonl object``, ``3 jsonl objects``."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _duration(seconds: float) -> str:
    """``45s``, ``12m``, ``3h05m``."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class RunContext:
    """What a run is made of, gathered (and validated) before Ray starts."""

    config: JobConfig
    job: str
    run_id: str
    identity: ModelIdentity
    settings: dict
    objects: list[SourceObject]
    limit: int | None
    given: bool = False  # the job was given its objects (backfill URIs, replay), not source.uri's listing

    @property
    def origin(self) -> str:
        """Where the objects came from, for the log."""
        if not self.given:
            return self.config.source.uri
        return "the dead-letter table" if self.job == "replay" else "the given URIs"


def prepare(
    config: JobConfig, job: str, objects: list[SourceObject] | None, limit: int | None, run_id: str | None = None
) -> RunContext:
    """Describe the model, settle the settings and list the source. Raises ``SourceError`` on a bad source,
    ``ConfigError`` on a model that cannot be loaded or an ``overwrite`` by a job that must not remove anything."""
    if config.sink.mode == "overwrite" and job in ("backfill", "replay"):
        raise ConfigError(
            f"sink.mode: 'overwrite' would drop every document of table {config.sink.table!r} that this {job} "
            "does not read; a backfill or replay never removes anything (use sink.mode: upsert, or `lateline "
            "index` with overwrite to rebuild the table from the whole source)"
        )
    check_summary_dir(config)
    _, frame, max_length, identity = describe_model(config.model, config.embedding.document_prefix)
    check_window(config.embedding, config.model.name_or_path, frame, max_length)
    identity = dataclasses.replace(identity, dtype=config.sink.vector_dtype)
    settings = embedding_settings(config.chunking, config.embedding, identity)
    given = objects is not None
    objects = objects if given else list_source_objects(config.source)
    return RunContext(config, job, run_id or new_run_id(), identity, settings, objects, limit, given)


def run_index(
    config: JobConfig, limit: int | None = None, job: str = "index", objects: list[SourceObject] | None = None
) -> dict[str, Any]:
    """Run ``job`` over the source (or the given ``objects``); returns the run summary (also written to disk).

    Raises ``SourceError``, ``TableMismatch`` or ``TableLocked`` before any work when the source or the table
    do not fit; other errors propagate after the summary is written.
    """
    run_id = new_run_id()
    lock = TableLock(config.sink.uri, config.sink.table, run_id, config.sink.storage_options)
    # A second writer is turned away at once, not after describing the model (the driver's torch and
    # transformers imports) and listing the source; the lock is taken after those, so a bad model or source
    # writes nothing.
    lock.refuse_if_held()
    context = prepare(config, job, objects, limit, run_id)
    with lock:
        note_interrupted_run(config, job, lock)
        dead_letters = DeadLetterLog(config.sink.uri, config.sink.table, context.run_id, config.sink.storage_options)

        def on_commit() -> None:
            dead_letters.flush()
            lock.refresh()

        sections = recorded_sections(config)
        sink = LanceSink(config.sink, context.identity, context.settings, on_commit=on_commit, sections=sections)
        summary = _execute(context, sink, dead_letters)
    if config.maintain.after_run:  # after the lock is released: maintain takes it itself
        from pipeline.maintain import maintain

        summary["maintain"] = maintain(config)
        write_summary(config, context.run_id, summary)  # summary.json shows what maintain did too
    return summary


def _execute(context: RunContext, sink: LanceSink, dead_letters: DeadLetterLog) -> dict[str, Any]:
    config, started_at, started = context.config, datetime.now(timezone.utc), time.monotonic()
    digest = settings_digest(context.settings)
    objects_key = object_digest(digest, config.source)  # what the manifest's entries must match
    known = sink.known_documents() if config.sink.mode == "upsert" else KnownDocuments()
    manifest = ObjectManifest(config.sink.uri, config.sink.table, config.sink.storage_options)
    if config.sink.mode == "overwrite":  # the old table's record goes just before the new table replaces it
        sink.before_publish = manifest.clear
    # A replay re-reads the objects it is given on purpose. The manifest skips an object with dead letters only
    # when a new read would give the same ones: a run with a wrong setting (say source.text_field) dead-letters
    # objects the manifest may still hold from the run before it, and the corrected run must clear them.
    letters = dead_letters.by_object()
    skip = (
        set() if context.job == "replay" else manifest.unchanged(context.objects, digest, config.source, known, letters)
    )
    to_read = [obj for obj in context.objects if obj.path not in skip]
    # A --limit run stops early: it has no share of the source to show.
    sizes = {obj.path: obj.size for obj in to_read} if context.limit is None else {}
    tally = Tally(
        context.job,
        config.runtime.progress_seconds,
        started,
        objects_skipped=len(skip),
        sizes=sizes,
        metadata_fields=config.source.metadata_fields,
    )
    tally.unchanged.update(known.in_objects(skip))
    kept_letters = [letters[path] for path in skip if path in letters]
    tally.dead_letters_kept = sum(kept.count for kept in kept_letters)
    # Their bad documents keep their rows (under whatever object they came from), as when their object is read.
    tally.dead_doc_ids.update(doc_id for kept in kept_letters for doc_id in kept.doc_ids)
    sink.keep_documents(_kept_documents(context, known, to_read, tally))
    log(
        f"{context.job}: {_plural(len(context.objects), config.source.format + ' object')} from {context.origin} "
        f"({len(skip):,} unchanged since the last run) -> {config.sink.uri}/{config.sink.table} "
        f"({_table_now(sink, known)}) with {context.identity.label} ({config.embedding.mode} mode)"
    )

    if tally.dead_letters_kept:
        log(
            f"{context.job}: unchanged objects not read again keep their "
            f"{_plural(tally.dead_letters_kept, 'dead letter')} in the table (`lateline deadletter list`)"
        )
    if context.job == "backfill" and context.given and config.sink.delete_missing:
        warn_outside_source(config, context.objects)

    def build(actors: ActorPlan, stats: Any) -> Any:
        return build_dataset(config, to_read, digest, actors, stats, known, context.limit)

    def finish(outcome: dict[str, Any]) -> None:
        outcome["deleted"] = _delete_missing(context, sink, known, tally)
        if outcome["deleted"]:
            log(
                f"{context.job}: removed {_plural(outcome['deleted'], 'document')} gone from the source "
                "(sink.delete_missing)"
            )
        if config.sink.mode == "overwrite":  # (a table new to this run published nothing: clear here too)
            manifest.clear()
        if context.limit is None:
            dead_letters.replace_for([obj.path for obj in to_read])
            # Over the budget, objects with letters are left out: the next run reads them and fails again.
            within_budget = outcome["judged"] == "ok"
            manifest.record(_manifest_rows(context.run_id, to_read, objects_key, tally, within_budget))
        if _removes_missing(context):
            listed = {obj.path for obj in context.objects}
            outcome["objects_removed"] = manifest.forget(sorted(set(manifest.load()) - listed))
            dead_letters.replace_for(sorted(set(dead_letters.by_object()) - listed))  # what is broken now, not then

    return execute_job(context, sink, dead_letters, tally, build if to_read else None, finish, started_at)


def execute_job(
    context: RunContext,
    sink: LanceSink,
    dead_letters: DeadLetterLog,
    tally: Tally,
    build: Callable[[ActorPlan, Any], Any] | None,
    finish: Callable[[dict[str, Any]], None],
    started_at: datetime,
    summary_source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The frame every writing job shares: stream ``build``'s plan (none: nothing to read) into the sink,
    judge the failure budget, close the sink, run the job's ``finish`` (deletions, manifest: it finds the
    budget's verdict in ``outcome["judged"]`` and sets ``outcome["deleted"]`` and ``outcome["objects_removed"]``
    as each is done, so a later failure does not hide them) and flush the dead letters. A run whose every
    record was dead-lettered counts as over the budget. An ``overwrite`` over the budget is not published and
    ``finish`` is skipped: the table stays as it was. The summary (its ``source`` section replaced by
    ``summary_source`` when given) is written whatever happens; an error propagates after it, recorded in it
    and attached to it as ``run_summary``."""
    outcome: dict[str, Any] = {
        "status": "failed",
        "error": None,
        "written": dict(sink.stats),
        "deleted": 0,
        "objects_removed": 0,
    }
    actors, counters = None, {}
    failure: BaseException | None = None

    def report_running(reported_actors: ActorPlan | None, reported_counters: dict[str, float]) -> None:
        nonlocal actors, counters  # the latest, for the final summary: a run that fails or is stopped has no others
        # Counters only grow, and a failed poll gives none: merged, the summary keeps the last known of each.
        actors, counters = reported_actors, {**counters, **reported_counters}
        running = {**outcome, "status": "running", "written": dict(sink.stats)}
        summary = run_summary(context, actors, tally, running, counters, started_at, tally.started)
        write_summary(context.config, context.run_id, summary | ({"source": summary_source} if summary_source else {}))

    try:
        report_running(None, {})
        if build is not None:
            stream_into_sink(context, build, sink, dead_letters, tally, report_running)
        sink.commit()
        docs_written = sink.stats["docs_written"]
        warn_if_nothing_indexed(context.config, tally, docs_written)
        warn_about_empty_metadata(tally, docs_written)
        warn_about_duplicates(context.job, tally)
        status = budget_status(context.config, tally, docs_written)
        if nothing_indexed(tally, docs_written):  # a wrong setting, not a success, whatever the budget allows
            status = "failure_budget_exceeded"
        if sink.staged is not None and status != "ok":
            outcome["written"] = sink.abandon()
            dead_letters.withdraw()
            log(
                f"{context.job}: the overwrite is not published: {context.config.sink.table!r} keeps its "
                f"{outcome['written']['table_rows']:,} rows (and its dead letters; this run's examples are in "
                "the summary)"
            )
        else:
            outcome["written"] = sink.close()
            outcome["judged"] = status
            finish(outcome)
            outcome["written"].update(sink.table_state())  # finish may have deleted documents: a newer version
        dead_letters.flush()
        outcome["status"] = status
    except BaseException as exc:
        failure = exc
        outcome["error"] = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if isinstance(exc, KeyboardInterrupt):
            outcome["status"] = "interrupted"
        if sink.staged is not None:  # an overwrite that will not be published: its files and letters go
            _give_up_quietly(sink, dead_letters)
        else:  # what the commits so far wrote stays, and the summary says so
            outcome["written"] = {**outcome["written"], **sink.stats, **_table_state_quietly(sink)}
        raise
    finally:
        tally.print_progress(sink.stats["docs_written"], counters)
        summary = run_summary(context, actors, tally, outcome, counters, started_at, tally.started)
        if summary_source is not None:
            summary["source"] = summary_source
        summary["summary_path"] = str(write_summary(context.config, context.run_id, summary))
        log(f"{context.job}: {summary['status']}; run summary at {summary['summary_path']}")
        if failure is not None:  # for the job's entry point, which prints the head of every run's summary
            with contextlib.suppress(Exception):  # (an exception that takes no attributes must still propagate)
                failure.run_summary = summary
    return summary


def _table_state_quietly(sink: LanceSink) -> dict[str, Any]:
    """The table's rows and version for a failed run's summary; nothing when they cannot be read (the failure
    may be the store's)."""
    try:
        return sink.table_state()
    except Exception:
        return {}


def _give_up_quietly(sink: LanceSink, dead_letters: DeadLetterLog) -> None:
    """Give up a failed run's staged overwrite (its files, its dead letters) without hiding the failure that
    is propagating."""
    try:
        sink.abandon()
        dead_letters.withdraw()
    except Exception as exc:  # the run's own error matters more; say what could not be undone
        log(f"warning: could not remove what this overwrite staged ({type(exc).__name__}: {exc})")


def stream_into_sink(
    context: RunContext,
    build: Callable[[ActorPlan, Any], Any],
    sink: LanceSink,
    dead_letters: DeadLetterLog,
    tally: Tally,
    report: Callable[[ActorPlan, dict[str, float]], None],
) -> None:
    """Start (or join) Ray, build the plan (``build(actors, stats)``) and feed its output to the sink as it
    streams; ``report(actors, counters)`` is called with every progress line (the running summary), and once
    more with the final counters when the stream ends, however it ends: how the run learns its counters."""
    config = context.config
    starting = time.monotonic()
    ray = _init_ray(config.runtime)
    ray_start_s = time.monotonic() - starting
    cluster = ray.cluster_resources()
    actors = size_actor_pool(config.runtime, cluster.get("CPU", 1), cluster.get("GPU", 0))
    stats = ray.remote(num_cpus=0)(RunStats).remote()
    dataset = build(actors, stats)
    stop = threading.Event()
    progress = functools.partial(report, actors)
    heartbeat = threading.Thread(target=_heartbeat, args=(stop, tally, sink, ray, stats, progress), daemon=True)
    heartbeat.start()
    first_output_s = None
    try:
        for batch in outputs_as_they_come(dataset):
            tally.add_arrivals(batch)
            chunks, skips = split_skips(batch)
            if first_output_s is None and chunks.num_rows:
                first_output_s = time.monotonic() - tally.started
            tally.add_chunks(chunks)
            dead_letters.add(tally.add_skips(sink.keep(skips.to_pylist())))
            dead_letters.add(tally.add_skips(sink.write(chunks)))
    finally:
        stop.set()
        heartbeat.join()
        final = _poll(ray, stats, tally, timeout=10)  # short: a stopped job has seconds before it is killed
        counters = final | {"ray_start_s": ray_start_s, "first_output_s": first_output_s or 0.0}
        _report_quietly(progress, counters)
        with contextlib.suppress(Exception):  # never hide the error that may be propagating
            ray.kill(stats)  # the actor lives as long as the driver otherwise (eval and tests run many jobs)


def _report_quietly(report: Callable[[dict[str, float]], None], counters: dict[str, float]) -> bool:
    """Hand ``counters`` to ``report``; ``False``, said, when that failed: a report never stops the run and
    never hides an error that may be propagating."""
    try:
        report(counters)
    except Exception as exc:
        log(f"warning: the running summary could not be written ({type(exc).__name__}: {exc})")
        return False
    return True


def outputs_as_they_come(dataset: Any) -> Iterator[Any]:
    """The dataset's output blocks as pyarrow tables, each handed over as soon as Ray has produced it.

    Ray Data's default (one batch prefetched) holds every block back until the next one is ready, so the
    sink's writes, the progress line and ``first_output`` all lagged one block behind the actors: about 18 s
    per 256-document block on 2 CPUs, and the last two blocks arrived together at the end. The driver's work
    per block (the sink's buffer) is far smaller than an actor's, so there is nothing for a prefetch to hide.
    """
    return dataset.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0)


def _heartbeat(
    stop: threading.Event,
    tally: Tally,
    sink: LanceSink,
    ray: Any,
    stats: Any,
    report: Callable[[dict[str, float]], None] | None,
) -> None:
    """Print progress every ``tally.every`` seconds, whether or not output reached the driver, and hand the
    counters to ``report``. A report that fails is said once and not tried again: it never stops the run."""
    while not stop.wait(tally.every):
        counters = _poll(ray, stats, tally)
        tally.print_progress(sink.stats["docs_written"], counters, streaming=True)
        if report is not None and not _report_quietly(report, counters):
            report = None  # said once, not tried again


def _manifest_rows(
    run_id: str, objects: list[SourceObject], digest: str, tally: Tally, with_letters: bool
) -> list[dict[str, Any]]:
    """Objects read completely, with the number of documents they hold, but not those with a dead letter that
    another read might not give (see :data:`pipeline.deadletters.SETTLED_REASONS`), nor any with a dead letter
    unless ``with_letters``."""
    left_out = tally.dead_objects if not with_letters else tally.unsettled_objects
    return [
        {
            "source_uri": obj.path,
            "etag": obj.etag,
            "size": obj.size,
            "settings_digest": digest,
            "doc_count": tally.docs_by_object[obj.path],
            "run_id": run_id,
        }
        for obj in objects
        if obj.etag is not None and obj.path not in left_out
    ]


def _kept_documents(context: RunContext, known: KnownDocuments, to_read: list[SourceObject], tally: Tally) -> DocIdSet:
    """Documents the table keeps whatever this run reads, so that a copy of one of their ids in a read object
    is a duplicate, not a move. An ``index`` run lists the whole source: a document whose object is gone may
    have moved, so only the unchanged ones are kept, and the tally's set of them is returned itself (the sink
    and the tally then share it). A ``backfill`` or ``replay`` sees part of the source and cannot tell a move
    from a duplicate: it keeps every document of objects it does not read (the next ``index`` run moves what
    really moved)."""
    if context.job == "index":
        return tally.unchanged
    return DocIdSet(known.in_objects([obj.path for obj in to_read], inside=False))


PRESENCE_BATCH = 65_536  # ids looked up at once: bounds the digests held while checking a huge table


def absent_documents(doc_ids: Iterable[str], sink: LanceSink, tally: Tally) -> list[str]:
    """Those of ``doc_ids`` this run did not find in what it read: not written, not unchanged, not
    dead-lettered (a dead-lettered document keeps its stored rows). In the order given."""
    absent: list[str] = []
    for batch in batched(doc_ids, PRESENCE_BATCH):
        present = sink.seen_docs.contains(batch) | tally.unchanged.contains(batch)
        absent.extend(doc for doc, here in zip(batch, present) if not here and doc not in tally.dead_doc_ids)
    return absent


def _removes_missing(context: RunContext) -> bool:
    """Whether this run's listing is the whole source, so what it lacks is gone: a complete ``index`` run
    with ``sink.delete_missing``."""
    return context.job == "index" and context.config.sink.delete_missing and context.limit is None


def _delete_missing(context: RunContext, sink: LanceSink, known: KnownDocuments, tally: Tally) -> int:
    """Remove documents gone from the source (see ``_removes_missing``), never those whose object could not be
    read this time."""
    if not _removes_missing(context):
        return 0
    readable = known.in_objects(tally.unreadable_objects, inside=False)
    return sink.delete_documents(sorted(absent_documents(readable, sink, tally)))


FIELD_OF_REASON = {"missing_text": "source.text_field", "missing_id": "source.id_field"}


def nothing_indexed(tally: Tally, docs_written: int) -> bool:
    """Whether records were read and every one was dead-lettered for what it is (a copy dropped as
    ``duplicate_doc_id`` is not: its id is indexed from another copy)."""
    duplicates = tally.dead_lettered.get("duplicate_doc_id", 0)
    return bool(sum(tally.dead_lettered.values())) and not (docs_written or len(tally.unchanged) or duplicates)


def warn_if_nothing_indexed(config: JobConfig, tally: Tally, docs_written: int) -> None:
    """A run whose every record was dead-lettered usually has a wrong setting, not bad data: say so, naming
    the setting when the reason points at one (such a run exits as over the failure budget, whatever it is;
    an ``overwrite`` is then not published)."""
    if not nothing_indexed(tally, docs_written):
        return
    dead = sum(tally.dead_lettered.values())
    note = bad_records_note(config, tally.dead_lettered)
    log(f"warning: every one of the {dead:,} records read was dead-lettered {note}")


def warn_about_empty_metadata(tally: Tally, docs_written: int) -> None:
    """Name the ``source.metadata_fields`` that not one document written by this run had a value for."""
    empty = [name for name in tally.metadata_fields if name not in tally.metadata_valued]
    if docs_written and empty:
        names = ", ".join(repr(name) for name in empty)
        log(
            f"warning: source.metadata_fields: {names} had no value in any of the {docs_written:,} documents this "
            "run wrote (stored as null); a misspelt field name looks like this"
        )


def warn_outside_source(config: JobConfig, objects: list[SourceObject]) -> None:
    """A backfill of objects outside ``source.uri``: the next ``index`` removes their documents; say so now."""
    outside = outside_source(config.source, objects)
    if outside:
        log(
            f"warning: this backfill reads {_plural(len(outside), 'object')} outside source.uri "
            f"({config.source.uri!r}), e.g. {outside[0].path!r}: the next `lateline index` removes their documents "
            "(sink.delete_missing); move them under source.uri, or widen it"
        )


def warn_about_duplicates(job: str, tally: Tally) -> None:
    """Say what dropped ``duplicate_doc_id`` copies cost and what to do: each was read and embedded before its
    id was found taken. A backfill or replay keeps the copies of objects it does not read, so documents that
    moved to the objects it reads all come out as duplicates: ``index`` over the whole source moves them."""
    duplicates = tally.dead_lettered.get("duplicate_doc_id", 0)
    if not duplicates:
        return
    copies = f"{duplicates:,} {'copy' if duplicates == 1 else 'copies'}"
    head = (
        f"warning: {copies} dropped as duplicate_doc_id, embedded for nothing (`lateline deadletter list` names each)"
    )
    if job not in ("backfill", "replay"):  # index; a reembed reads a table, whose ids are unique
        advice = (
            "their ids are indexed from another record (in another object or earlier in the same one); every run "
            "reads them again until one copy of each id is gone"
        )
    else:
        advice = (
            f"a {job} keeps what the table holds from objects it does not read. If these documents moved to the "
            "objects read here, run `lateline index` over the whole source: it embeds each moved document once "
            "and removes the copies whose objects are gone"
        )
    log(f"{head}; {advice}")


def bad_records_note(config: JobConfig, reasons: Counter) -> str:
    """``(missing_text 60); check source.text_field='body'``: the reasons counted, and the setting they point
    at when they point at one."""
    counted = ", ".join(f"{reason} {count:,}" for reason, count in reasons.most_common())
    fields = [
        f"{FIELD_OF_REASON[r]}={getattr(config.source, FIELD_OF_REASON[r].split('.')[1])!r}"
        for r in reasons
        if r in FIELD_OF_REASON
    ]
    return f"({counted})" + (f"; check {', '.join(fields)}" if fields else "")


def budget_status(config: JobConfig, tally: Tally, docs_written: int) -> str:
    dead = sum(tally.dead_lettered.values())
    docs_in = docs_written + len(tally.unchanged) + dead
    limit, fraction = config.runtime.max_dead_letters, config.runtime.max_dead_letter_fraction
    if (limit is not None and dead > limit) or (fraction is not None and docs_in and dead / docs_in > fraction):
        log(
            f"{_plural(dead, 'dead letter')}: over the failure budget ({_budget(limit, fraction)}); "
            "see `lateline deadletter list`"
        )
        return "failure_budget_exceeded"
    return "ok"


def _budget(limit: int | None, fraction: float | None) -> str:
    """The failure budget's settings that are set, as config keys."""
    parts = [f"runtime.max_dead_letters: {limit}"] if limit is not None else []
    parts += [f"runtime.max_dead_letter_fraction: {fraction}"] if fraction is not None else []
    return ", ".join(parts)


def _init_ray(runtime: RuntimeConfig) -> Any:
    """Connect to ``RAY_ADDRESS`` when set, else start (or reuse) a local Ray, its processes on the allocator of
    ``runtime.cpu_allocator`` (see :mod:`pipeline.allocator`). Raises ``ConfigError`` for ``jemalloc`` where
    Ray ships none."""
    import ray

    # Ray starts its workers with fork+exec, which is safe for LanceDB's runtime; their warnings are noise here.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        # A Ray this job starts runs its workers at nice 15 by default, below the driver: on a small machine the
        # driver's streaming loop then takes its CPU from the embedding actor, the critical path. Equal priority
        # measured 1.2x faster end to end on 2 cores. A cluster's own setting is left alone.
        system_config = None if address else {"worker_niceness": 0}
        quiet_ray_notices(local=not address)
        started_here = {} if address else allocator_environment(runtime.cpu_allocator, bundled_jemalloc(), os.environ)
        # the processes ray.init starts inherit the environment; the driver keeps its own, and its SIGTERM handler
        with environment(started_here), keeping_sigterm_handler():
            ray.init(
                address=address,
                logging_level=logging.WARNING,
                log_to_driver=True,
                include_dashboard=False,
                _system_config=system_config,
            )
        _RAY_CONNECTED_HERE.append(True)
    return ray


_RAY_CONNECTED_HERE: list[bool] = []  # non-empty once _init_ray has started or joined Ray in this process


def disconnect_ray() -> None:
    """End this process's Ray session if a job here started or joined it (one another caller began, e.g. a
    test's, is left alone): its workers' forwarded lines stop, and a local Ray's processes go, now rather than
    at exit."""
    if _RAY_CONNECTED_HERE:
        import ray

        _RAY_CONNECTED_HERE.clear()
        with contextlib.suppress(Exception):  # never hide the error that may be propagating
            ray.shutdown()


# Ray notices printed on every run with nothing for a lateline user to act on (the runbook explains both):
# logger -> the start of the message dropped. Other messages of these loggers still show.
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_NOTICES = {
    # A local cluster uses token authentication, Ray's default (RAY_AUTH_MODE=disabled opts out).
    TOKEN_AUTH_LOGGER: "Token authentication is enabled for this Ray cluster",
    # Ray Data's bars are off unless runtime.ray_progress_bars; its hint names a Python API instead.
    "ray.data._internal.progress": "Progress bars disabled. To enable",
}


class _DropNotice(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_ray_notices(local: bool) -> None:
    """Drop :data:`RAY_NOTICES` (the token-auth one only for a cluster this job starts itself). Idempotent."""
    for name, start in RAY_NOTICES.items():
        if name == TOKEN_AUTH_LOGGER and not local:
            continue
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.start == start for f in logger.filters):
            logger.addFilter(_DropNotice(start))


def _poll(ray: Any, stats: Any, tally: Tally, timeout: float = 30) -> dict[str, float]:
    """The stages' counters; the object record counts reported since the last poll go to ``tally``. A failed
    poll gives no counters and keeps the counts known so far (the share done does not fall back)."""
    try:
        counters, reported = ray.get(stats.poll.remote(tally.object_rows_seen), timeout=timeout)
    except Exception:
        return {}
    tally.add_object_rows(reported)
    return counters


def _actors_section(actors: ActorPlan | None, counters: dict[str, float]) -> dict[str, Any] | None:
    """The actor pool as planned, the dtypes its actors computed in (``{dtype: actors}``) and the allocators
    they ran with (``{allocator: actors}``); an actor that restarted counts again."""
    if actors is None:
        return None

    def by_kind(prefix: str) -> dict[str, int]:
        return {k[len(prefix) :]: int(v) for k, v in counters.items() if k.startswith(prefix)}

    return {**actors.__dict__, "compute_dtypes": by_kind(COMPUTE_DTYPE), "allocators": by_kind(ALLOCATOR)}


GIVEN_SHOWN = 100  # objects a summary names of those a job was given (``objects`` counts them all)


def run_summary(
    context: RunContext,
    actors: ActorPlan | None,
    tally: Tally,
    outcome: dict[str, Any],
    counters: dict[str, float],
    started_at: datetime,
    started: float,
) -> dict[str, Any]:
    config, written, wall = context.config, outcome["written"], time.monotonic() - started
    dead = sum(tally.dead_lettered.values())
    docs_written = written.get("docs_written", 0)
    padded = counters.get("forward_padded_tokens", 0)
    return {
        "run_id": context.run_id,
        "job": context.job,
        "status": outcome["status"],
        "error": outcome["error"],
        "started_at": started_at.isoformat(),
        "wall_s": round(wall, 3),
        "source": {
            "uri": config.source.uri,
            "format": config.source.format,
            "objects": len(context.objects),
            # what a backfill or replay was given to read (source.uri's listing otherwise: not repeated here)
            "given_objects": [obj.path for obj in context.objects[:GIVEN_SHOWN]] if context.given else None,
            "objects_skipped_unchanged": tally.objects_skipped,
            "dead_letters_kept": tally.dead_letters_kept,
            "objects_removed": outcome["objects_removed"],
            "limit": context.limit,
        },
        "table": {
            "uri": config.sink.uri,
            "name": config.sink.table,
            "rows": written.get("table_rows"),
            "version": written.get("table_version"),
            "commits": written.get("commits", 0),
            **({"overwrite_published": written["published"]} if "published" in written else {}),
        },
        "model": context.identity.to_json(),
        "settings": context.settings,
        "actors": _actors_section(actors, counters),
        "counts": {
            "docs_in": docs_written + len(tally.unchanged) + dead,
            "docs_read": int(counters.get("docs_in", 0)),
            "docs_written": docs_written,
            "docs_skipped_unchanged": len(tally.unchanged),
            "docs_dead_lettered": dead,
            "dead_lettered_by_reason": dict(tally.dead_lettered),
            "docs_deleted": outcome["deleted"],
            "chunks_out": tally.chunks,
            "rows_written": written.get("rows_written", 0),
            "document_tokens": int(counters.get("tokens", 0)),
            "forward_tokens": int(counters.get("forward_tokens", 0)),
            "forward_passes": int(counters.get("forward_forwards", 0)),
        },
        "time_s": {
            "wall": round(wall, 3),
            "read": round(counters.get("read_s", 0), 3),
            "chunk": round(counters.get("chunk_s", 0), 3),
            "ray_start": round(counters.get("ray_start_s", 0), 3),
            "first_output": round(counters.get("first_output_s", 0), 3),
            "model_load": round(counters.get("model_load_s", 0), 3),
            "embed": round(counters.get("embed_s", 0), 3),
            "write": round(written.get("write_s", 0), 3),
        },
        # CPU seconds, all threads of each process: the driver's since the run began (Ray's start, the plan's
        # executor loop, the writes), the workers' summed over their steps. ``embed`` against ``time_s.embed``
        # times the actors' threads shows how busy they kept their cores.
        "cpu_s": {
            "driver": round(time.process_time() - tally.cpu_started, 3),
            **{step: round(counters.get(f"{step}_cpu_s", 0), 3) for step in ("read", "chunk", "model_load", "embed")},
        },
        "throughput": {
            "tokens_per_s": round(counters.get("tokens", 0) / wall, 1) if wall else None,
            "docs_per_s": round(docs_written / wall, 2) if wall else None,
            "chunks_per_s": round(tally.chunks / wall, 2) if wall else None,
        },
        "padding_waste": round(1 - counters.get("forward_tokens", 0) / padded, 4) if padded else None,
        "dead_letter_examples": tally.examples,
        "config": redacted(config),
    }


def check_summary_dir(config: JobConfig) -> None:
    """Raise ``ConfigError`` naming ``runtime.summary_dir`` when run summaries cannot be written there (a
    volume this user may not write, a path through a file): found before any work, not as a failed run that
    leaves no summary. Creates nothing: the nearest part of the path that exists must be a directory this
    user may write."""
    directory = Path(config.runtime.summary_dir).absolute()
    existing = next(path for path in (directory, *directory.parents) if path.exists())
    problem = (
        f"{str(existing)!r} is not a directory"
        if not existing.is_dir()
        else f"this user may not write {str(existing)!r}"
        if not os.access(existing, os.W_OK | os.X_OK)
        else None
    )
    if problem:
        raise ConfigError(
            f"runtime.summary_dir: run summaries cannot be written to {config.runtime.summary_dir!r} ({problem}); "
            "give a directory this user may write"
        )


def write_summary(config: JobConfig, run_id: str, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` and the resolved, redacted ``config.json`` under ``<summary_dir>/<run_id>/``,
    each replaced whole (a reader never sees half a file)."""
    directory = Path(config.runtime.summary_dir) / run_id
    directory.mkdir(parents=True, exist_ok=True)
    _replace_file(directory / "config.json", json.dumps(redacted(config), indent=2))
    path = directory / "summary.json"
    _replace_file(path, json.dumps(summary, indent=2, default=str))
    return path


def _replace_file(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(text)
    os.replace(partial, path)


def note_interrupted_run(config: JobConfig, job: str, lock: TableLock) -> None:
    """After ``lock`` took over a dead job's lock: say so, and mark that run's summary ``interrupted`` when it is
    in this job's ``summary_dir`` and still says ``running``."""
    holder = lock.taken_over
    if holder is None:
        return
    run_id = str(holder.get("run_id"))
    path = Path(config.runtime.summary_dir) / run_id / "summary.json"
    marked = ""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        summary = None
    if summary is not None and summary.get("status") == "running":
        summary["status"] = "interrupted"
        summary["error"] = f"ended without finishing; run {lock.owner['run_id']} took over its lock"
        try:
            _replace_file(path, json.dumps(summary, indent=2, default=str))
            marked = f"; its summary {path} now says interrupted"
        except OSError as exc:  # someone else's directory, a full disk: not a reason to fail this run
            marked = f"; its summary {path} could not be marked interrupted ({exc})"
    log(
        f"{job}: run {run_id} (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}) ended "
        f"without finishing; its lock is taken over{marked}"
    )
