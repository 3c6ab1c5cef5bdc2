"""Table upkeep: compaction, old-version cleanup and indexes, so a table stays fast after many runs.

- compaction merges small fragments (each commit adds one); cleanup removes versions older than
  ``maintain.retain_versions_hours`` (0 keeps only the latest);
- a BTREE scalar index on ``chunk_id`` makes upsert commits (``merge_insert``) cheap on big tables;
- the ANN index on ``vector`` (cosine; ``ivf_pq`` or ``hnsw``) is built once the table has
  ``maintain.ann_min_rows`` rows (before that a flat search is exact and fast); a full-text index on ``text``.

Each index is built once. Later runs add the rows written since to it (the compaction step, LanceDB's
``optimize``, does that incrementally), so a nightly maintain costs what the night's new rows cost, not the
table's size. The vector index is trained again only when the table has grown to
``maintain.ann_retrain_growth`` times the rows it was trained on, when its updates have piled up into
``MAX_VECTOR_SEGMENTS`` segments (each is searched on its own; compaction adds one per run with new rows),
or when the configured kind changed. ``--rebuild-indexes`` rebuilds the indexes the config maintains. With
``compact: false`` nothing updates an index incrementally, so an index with rows it does not cover is rebuilt.
Safe to run while nothing writes the table; it takes the table lock like the writing jobs.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from lancedb.index import FTS, BTree, HnswSq, IvfPq

from pipeline import schema
from pipeline.allocator import environment
from pipeline.config import JobConfig, MaintainConfig
from pipeline.lock import TableLock
from pipeline.runner import log, new_run_id
from pipeline.sink import missing_table, open_table

# The index builders of ``maintain.ann_index`` (LanceDB's index configs; ``hnsw`` is HNSW over IVF partitions,
# scalar-quantised) and the ``index_type`` LanceDB lists for each.
ANN_INDEXES = {"ivf_pq": IvfPq, "hnsw": HnswSq}
ANN_INDEX_TYPES = {"ivf_pq": "IvfPq", "hnsw": "IvfHnswSq"}
# LanceDB's optimize adds each run's new rows to a vector index as a segment of its own, and a search visits
# every segment: past this many, the index is retrained into one.
MAX_VECTOR_SEGMENTS = 10


class NothingToMaintain(RuntimeError):
    """The table does not exist."""


@dataclass(frozen=True)
class IndexState:
    """What LanceDB says of one index: its kind, the rows it misses, its segments."""

    name: str
    index_type: str
    unindexed_rows: int
    segments: int


def table_shape(table: Any) -> dict[str, Any]:
    """Rows, versions, fragments and indexes of a table."""
    return {
        "rows": table.count_rows(),
        "versions": len(table.list_versions()),
        "fragments": fragment_count(table),
        "indexes": sorted(index.name for index in table.list_indices()),
    }


def fragment_count(table: Any) -> int:
    stats = table.stats()
    fragments = stats["fragment_stats"] if isinstance(stats, dict) else stats.fragment_stats
    return fragments["num_fragments"] if isinstance(fragments, dict) else fragments.num_fragments


def compaction_action(before: int, after: int, vector_segments: int = 1) -> str:
    """What a compaction did, from the fragment counts around it. Lance merges no fragments that different
    segments of the vector index cover, so those stay apart until the index is retrained (said when it may
    be why fragments are left)."""
    apart = ""
    if after > 1 and vector_segments > 1:
        apart = f"; the vector index's {vector_segments} segments keep their fragments apart until it is retrained"
    if after < before:
        return f"compacted {before:,} fragments into {after:,}{apart}"
    return f"compaction: nothing to merge ({_fragments(after)}{apart})"


def _fragments(count: int) -> str:
    return f"{count:,} fragment{'' if count == 1 else 's'}"


def index_states(table: Any) -> dict[str, IndexState]:
    """The table's indexes by the column they index (lateline's are each on one column)."""
    states = {}
    for index in table.list_indices():
        if not index.columns:
            continue
        try:
            stats = table.index_stats(index.name)
        except Exception:  # kept as it is: no statistics say it misses rows
            stats = None
        unindexed, segments = (stats.num_unindexed_rows, stats.num_indices) if stats is not None else (0, 1)
        states[index.columns[0]] = IndexState(index.name, index.index_type, unindexed, segments)
    return states


def kept_index_action(label: str, state: IndexState) -> str:
    """What happened to an index that was kept: the rows compaction added to it, or nothing."""
    if state.unindexed_rows:
        return f"{label} index: {state.unindexed_rows:,} new rows added"
    return f"{label} index up to date"


def vector_retrain_reason(
    state: IndexState, rows: int, trained_rows: int | str, settings: MaintainConfig
) -> str | None:
    """Why the vector index ``state`` must be trained again on a table of ``rows`` rows, or ``None`` to keep it
    (and add the new rows to it). ``trained_rows``: the rows it was trained on that the table still holds
    (rewritten or deleted rows leave them, so a table that changed as much as it grew is retrained too), or
    why they cannot be read."""
    wanted = ANN_INDEX_TYPES[settings.ann_index]
    if state.index_type != wanted:
        was = {lancedb_type: kind for kind, lancedb_type in ANN_INDEX_TYPES.items()}.get(state.index_type)
        return f"it was {was or state.index_type}, maintain.ann_index is {settings.ann_index!r}"
    if isinstance(trained_rows, str):
        return f"the rows it was trained on cannot be read ({trained_rows})"
    if trained_rows == 0:
        return f"none of the rows it was trained on remain ({rows:,} rows now)"
    if rows >= settings.ann_retrain_growth * trained_rows:
        return (
            f"{rows:,} rows, {rows / trained_rows:.1f}x the {trained_rows:,} it was trained on that remain "
            f"(maintain.ann_retrain_growth {settings.ann_retrain_growth:g})"
        )
    if state.segments >= MAX_VECTOR_SEGMENTS:
        return f"{state.segments} segments, one per update (searches visit each)"
    return None


def trained_rows(table: Any, index_name: str) -> int | str:
    """The rows the vector index was trained on that the table still holds: those of the fragments its first
    segment covers (later segments hold the rows added since), from the table's manifest. When they cannot be
    read, why not."""
    try:
        dataset = table.to_lance()
        segments = [index for index in dataset.list_indices() if index["name"] == index_name]
        first = min(segments, key=lambda index: index["version"])
        return sum(dataset.get_fragment(fragment).count_rows() for fragment in first["fragment_ids"])
    except Exception as exc:  # a Lance that lists indexes otherwise: retrain, as before incremental updates
        return f"{type(exc).__name__}: {exc}"


def maintain(config: JobConfig, rebuild_indexes: bool = False) -> dict[str, Any]:
    """Compact, clean up, and build or update indexes per ``config.maintain``; ``rebuild_indexes`` rebuilds
    (and retrains) the indexes the config maintains. Returns the table's shape before/after and what was done, in words.
    Raises ``NothingToMaintain`` when the table does not exist, ``TableLocked`` when a job is writing it."""
    sink, settings = config.sink, config.maintain
    table = open_table(sink.uri, sink.table, sink.storage_options)
    if table is None:
        raise NothingToMaintain(missing_table(sink.uri, sink.table, sink.storage_options))
    # Lance warns, when it updates an HNSW index, that its index statistics will soon leave out the centroids;
    # lateline reads none, so it takes the coming behaviour now and the warning goes.
    quiet = environment({"LANCE_INCLUDE_VECTOR_CENTROIDS": "false"})
    with TableLock(sink.uri, sink.table, new_run_id(), sink.storage_options), warnings.catch_warnings(), quiet:
        # Lance's warning names its own argument (cleanup_older_than); the line below names lateline's key.
        warnings.filterwarnings("ignore", message=r".*removes every version except the latest", category=UserWarning)
        if settings.compact and settings.retain_versions_hours == 0:
            log(
                "maintain: maintain.retain_versions_hours is 0, so every version but the latest is removed: a "
                "search or job reading an older version at this moment fails, and no version is left to go back to"
            )
        before = table_shape(table)
        indexes = index_states(table)  # read before compaction, which adds the new rows to them
        actions = []
        if settings.compact:  # LanceDB's optimize: compaction, cleanup, and new rows added to existing indexes
            log(f"maintain: compacting {_fragments(before['fragments'])} ({before['rows']:,} rows) ...")
            started = time.monotonic()
            table.optimize(cleanup_older_than=timedelta(hours=settings.retain_versions_hours))
            segments = indexes[schema.VECTOR].segments if schema.VECTOR in indexes else 1
            actions.append(compaction_action(before["fragments"], fragment_count(table), segments))
            added = ", new rows added to the indexes" if any(i.unindexed_rows for i in indexes.values()) else ""
            log(f"maintain: {actions[-1]}{added} ({time.monotonic() - started:.1f} s)")
        # Decisions on the indexes as compaction left them (it adds a segment); the wording on what it added.
        upkeep = _IndexUpkeep(table, settings, indexes, index_states(table), rebuild_indexes)
        actions.append(upkeep.scalar(schema.CHUNK_ID, "chunk_id", BTree()))
        actions.append(upkeep.vector(before["rows"]))
        if settings.fts:
            actions.append(upkeep.scalar(schema.TEXT, "text full-text", FTS()))
        if settings.compact:  # drop the versions the index updates and builds made, within the retention rule
            # Lance's own cleanup: LanceDB's optimize() updates the indexes after its cleanup, a version after it.
            table.to_lance().cleanup_old_versions(older_than=timedelta(hours=settings.retain_versions_hours))
        return {"table": sink.table, "actions": actions, "before": before, "after": table_shape(table)}


class _IndexUpkeep:
    """Builds the indexes a table lacks and keeps the others, rebuilding one only when it must."""

    def __init__(
        self,
        table: Any,
        settings: MaintainConfig,
        before: dict[str, IndexState],
        states: dict[str, IndexState],
        rebuild: bool,
    ) -> None:
        self.table, self.settings, self.before, self.states, self.rebuild = table, settings, before, states, rebuild

    def scalar(self, column: str, label: str, index_config: Any) -> str:
        """Build the index on ``column`` if missing (or stale, see :meth:`_stale`); else say what compaction
        added to it."""
        state = self.states.get(column)
        if state is None:
            return self._build(column, index_config, f"{label} index built")
        if self._stale(state):
            return self._build(column, index_config, f"{label} index rebuilt: {self._stale_reason(state)}")
        return kept_index_action(label, self.before.get(column, state))

    def vector(self, rows: int) -> str:
        """Build, retrain or keep the vector index (see :func:`vector_retrain_reason`) on a table of ``rows``."""
        settings, state = self.settings, self.states.get(schema.VECTOR)
        kind = settings.ann_index
        if kind != "none" and rows >= settings.ann_min_rows:
            index_config = ANN_INDEXES[kind](distance_type="cosine")
            if state is None:
                return self._build(schema.VECTOR, index_config, f"{kind} vector index built on {rows:,} rows")
            reason = "--rebuild-indexes" if self.rebuild else None
            reason = reason or vector_retrain_reason(state, rows, trained_rows(self.table, state.name), settings)
            if reason is None and self._stale(state):
                reason = self._stale_reason(state)
            if reason is not None:
                return self._build(schema.VECTOR, index_config, f"{kind} vector index retrained: {reason}")
            return kept_index_action(f"{kind} vector", self.before.get(schema.VECTOR, state))
        if state is not None and self.rebuild:  # the way back to an exact (flat) search
            self.table.drop_index(state.name)
            why = "maintain.ann_index is 'none'" if kind == "none" else f"{rows:,} rows < maintain.ann_min_rows"
            return f"vector index dropped: {why}, --rebuild-indexes (search is exact again)"
        if state is not None:  # built when the table was bigger (or the threshold lower): compaction updates it
            return (
                f"vector index kept, not retrained: {rows:,} rows < maintain.ann_min_rows {settings.ann_min_rows:,} "
                "(--rebuild-indexes drops it)"
                if kind != "none"
                else "vector index kept: maintain.ann_index is 'none' (--rebuild-indexes drops it)"
            )
        if kind != "none":  # said, so that a missing index is not a surprise
            return (
                f"no vector index yet: {rows:,} rows < maintain.ann_min_rows {settings.ann_min_rows:,} "
                "(search scans every vector, exact and fast at this size)"
            )
        return "no vector index (maintain.ann_index is 'none')"

    def _stale(self, state: IndexState) -> bool:
        """Rebuild: asked to, or it misses rows that nothing else will add (no compaction this run)."""
        return self.rebuild or (not self.settings.compact and state.unindexed_rows > 0)

    def _stale_reason(self, state: IndexState) -> str:
        if self.rebuild:
            return "--rebuild-indexes"
        return f"{state.unindexed_rows:,} rows it does not cover, and maintain.compact is false (nothing adds them)"

    def _build(self, column: str, index_config: Any, action: str) -> str:
        kind = self.settings.ann_index if column == schema.VECTOR else type(index_config).__name__
        log(f"maintain: building the {kind} index on {column} ...")  # minutes on big tables
        started = time.monotonic()
        self.table.create_index(column, config=index_config, replace=True)
        log(f"maintain: {action} ({time.monotonic() - started:.1f} s)")
        return action
