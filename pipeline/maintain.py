"""Table upkeep: compaction, old-version cleanup and indexes, so a table stays fast after many runs.

- compaction merges small fragments (each commit adds one); cleanup removes versions older than
  ``maintain.retain_versions_hours`` (0 keeps only the latest);
- a BTREE scalar index on ``chunk_id`` makes upsert commits (``merge_insert``) cheap on big tables;
- the ANN index on ``vector`` (cosine; ``ivf_pq`` or ``hnsw``) is built once the table has
  ``maintain.ann_min_rows`` rows (before that a flat search is exact and fast); a full-text index on ``text``.
Safe to run while nothing writes the table; it takes the table lock like the writing jobs.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

from lancedb.index import FTS, BTree, HnswSq, IvfPq

from pipeline import schema
from pipeline.config import JobConfig
from pipeline.lock import TableLock
from pipeline.runner import log, new_run_id
from pipeline.sink import missing_table, open_table

# The index builders of ``maintain.ann_index`` (LanceDB's index configs; ``hnsw`` is HNSW over IVF partitions,
# scalar-quantised).
ANN_INDEXES = {"ivf_pq": IvfPq, "hnsw": HnswSq}


class NothingToMaintain(RuntimeError):
    """The table does not exist."""


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


def compaction_action(before: int, after: int) -> str:
    """What a compaction did, from the fragment counts around it."""
    if after < before:
        return f"compacted {before:,} fragments into {after:,}"
    return f"compaction: nothing to merge ({after:,} fragment{'' if after == 1 else 's'})"


def maintain(config: JobConfig) -> dict[str, Any]:
    """Compact, clean up and (re)build indexes per ``config.maintain``; returns the table's shape before/after."""
    sink, settings = config.sink, config.maintain
    table = open_table(sink.uri, sink.table, sink.storage_options)
    if table is None:
        raise NothingToMaintain(missing_table(sink.uri, sink.table, sink.storage_options))
    with TableLock(sink.uri, sink.table, new_run_id(), sink.storage_options), warnings.catch_warnings():
        # Lance's warning names its own argument (cleanup_older_than); the line below names lateline's key.
        warnings.filterwarnings("ignore", message=r".*removes every version except the latest", category=UserWarning)
        if settings.compact and settings.retain_versions_hours == 0:
            log(
                "maintain: maintain.retain_versions_hours is 0, so every version but the latest is removed: a "
                "search or job reading an older version at this moment fails, and no version is left to go back to"
            )
        before = table_shape(table)
        actions = []
        if settings.compact:
            table.optimize(cleanup_older_than=timedelta(hours=settings.retain_versions_hours))
            actions.append(compaction_action(before["fragments"], fragment_count(table)))
        table.create_index(schema.CHUNK_ID, config=BTree(), replace=True)
        actions.append("chunk_id index")
        if settings.ann_index != "none" and before["rows"] >= settings.ann_min_rows:
            table.create_index(
                schema.VECTOR, config=ANN_INDEXES[settings.ann_index](distance_type="cosine"), replace=True
            )
            actions.append(f"{settings.ann_index} vector index")
        elif any(name.startswith(f"{schema.VECTOR}_") for name in before["indexes"]):  # built when the table was bigger
            actions.append(
                f"vector index kept, not retrained: {before['rows']:,} rows < maintain.ann_min_rows "
                f"{settings.ann_min_rows:,}"
            )
        elif settings.ann_index != "none":  # said, so that a missing index is not a surprise
            actions.append(
                f"no vector index yet: {before['rows']:,} rows < maintain.ann_min_rows {settings.ann_min_rows:,} "
                "(search scans every vector, exact and fast at this size)"
            )
        if settings.fts:
            table.create_index(schema.TEXT, config=FTS(), replace=True)
            actions.append("text full-text index")
        if settings.compact:  # drop the versions the index builds just made, within the retention rule
            # Lance's own cleanup: LanceDB's optimize() would also update the indexes, a new version after it.
            table.to_lance().cleanup_old_versions(older_than=timedelta(hours=settings.retain_versions_hours))
        return {"table": sink.table, "actions": actions, "before": before, "after": table_shape(table)}
