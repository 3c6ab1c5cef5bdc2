"""Run an index plan: validate, list, stream through Ray into the sink, print progress, write the run summary.

Exit codes (see :data:`EXIT_CODES`): 0 ok, 1 the run failed, 2 the configuration or the target table does not
fit (nothing was written).

The run summary (``<runtime.summary_dir>/<run_id>/summary.json``, path printed) holds counts, time per phase,
throughput and the redacted resolved config; it satisfies ``docs_in == docs_written + docs_skipped``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import JobConfig, redacted
from pipeline.fingerprint import embedding_settings, settings_digest
from pipeline.model import describe_model
from pipeline.plan import build_dataset, size_actor_pool
from pipeline.sink import LanceSink
from pipeline.sources import list_source_objects
from pipeline.stages import RunStats, split_skips

EXIT_CODES = {"ok": 0, "failed": 1, "config": 2}
SKIP_EXAMPLES = 20


def log(message: str) -> None:
    """Progress and status lines go to stderr, so stdout stays for results."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Progress:
    """Counts what reached the driver and prints a line every ``every`` seconds."""

    every: float
    objects: int
    started: float = field(default_factory=time.monotonic)
    last_print: float = field(default_factory=time.monotonic)
    chunks: int = 0
    docs_written: int = 0
    skipped: Counter = field(default_factory=Counter)
    skip_examples: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0

    def add_skips(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.skipped[row["error"]] += 1
            if len(self.skip_examples) < SKIP_EXAMPLES:
                keep = ("doc_id", "source_uri", "error", "error_detail")
                self.skip_examples.append({k: row.get(k) for k in keep})

    def add_chunks(self, chunks: pa.Table) -> None:
        self.chunks += chunks.num_rows
        starts, ends = chunks["token_start"].to_numpy(), chunks["token_end"].to_numpy()
        self.tokens += int((ends - starts).sum())

    def maybe_print(self, docs_written: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_print >= self.every:
            elapsed = now - self.started
            log(
                f"index: {docs_written:,} docs written, {sum(self.skipped.values()):,} skipped, "
                f"{self.chunks:,} chunks, {self.tokens:,} chunk tokens "
                f"({self.tokens / max(elapsed, 1e-9):,.0f}/s), {elapsed:,.0f}s elapsed"
            )
            self.last_print = now


def run_index(config: JobConfig, limit: int | None = None) -> dict[str, Any]:
    """Index the source into the sink table; returns the run summary (also written to disk).

    Raises :class:`pipeline.sources.SourceError` or :class:`pipeline.sink.TableMismatch` before any work
    when the source or the table do not fit; other errors propagate after the summary is written.
    """
    started_at, started = datetime.now(timezone.utc), time.monotonic()
    _, _, _, identity = describe_model(config.model, config.embedding.document_prefix)
    settings = embedding_settings(config.chunking, config.embedding, identity)
    objects = list_source_objects(config.source)
    sink = LanceSink(config.sink, identity, settings)
    log(
        f"index: {len(objects):,} {config.source.format} objects at {config.source.uri} -> "
        f"{config.sink.uri}/{config.sink.table} with {identity.label} ({config.embedding.mode} mode)"
    )
    ray = _init_ray()
    cluster = ray.cluster_resources()
    actors = size_actor_pool(config.runtime, cluster.get("CPU", 1), cluster.get("GPU", 0))
    stats = ray.remote(num_cpus=0)(RunStats).remote()
    dataset = build_dataset(config, objects, settings_digest(settings), actors, stats, limit)
    progress = Progress(config.runtime.progress_seconds, len(objects))
    status, error = "ok", None
    try:
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            chunks, skips = split_skips(batch)
            progress.add_skips(skips.to_pylist())
            progress.add_chunks(chunks)
            progress.add_skips(sink.write(chunks))
            progress.maybe_print(sink.stats["docs_written"])
        written = sink.close()
    except BaseException as exc:
        status, error, written = "failed", f"{type(exc).__name__}: {exc}", dict(sink.stats)
        raise
    finally:
        progress.maybe_print(sink.stats["docs_written"], force=True)
        counters = _snapshot(ray, stats)
        summary = _summary(
            config,
            identity,
            settings,
            actors,
            progress,
            written,
            counters,
            status,
            error,
            started_at,
            time.monotonic() - started,
            len(objects),
            limit,
        )
        summary["summary_path"] = str(write_summary(config, summary))
        log(f"index: {status}; run summary at {summary['summary_path']}")
    return summary


def _init_ray() -> Any:
    """Connect to ``RAY_ADDRESS`` when set, else start (or reuse) a local Ray."""
    import ray

    # Ray starts its workers with fork+exec, which is safe for LanceDB's runtime; its warning is noise here.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            logging_level=logging.WARNING,
            log_to_driver=True,
            include_dashboard=False,
        )
    return ray


def _snapshot(ray: Any, stats: Any) -> dict[str, float]:
    try:
        return ray.get(stats.snapshot.remote(), timeout=30)
    except Exception:
        return {}


def _summary(
    config, identity, settings, actors, progress, written, counters, status, error, started_at, wall, objects, limit
) -> dict[str, Any]:
    skipped = sum(progress.skipped.values())
    docs_written = written.get("docs_written", 0)
    padded = counters.get("forward_padded_tokens", 0)
    return {
        "job": "index",
        "status": status,
        "error": error,
        "started_at": started_at.isoformat(),
        "wall_s": round(wall, 3),
        "source": {"uri": config.source.uri, "format": config.source.format, "objects": objects, "limit": limit},
        "table": {
            "uri": config.sink.uri,
            "name": config.sink.table,
            "rows": written.get("table_rows"),
            "version": written.get("table_version"),
            "commits": written.get("commits", 0),
        },
        "model": identity.to_json(),
        "settings": settings,
        "actors": actors.__dict__,
        "counts": {
            "docs_in": docs_written + skipped,
            "docs_read": int(counters.get("docs_in", 0)),
            "docs_written": docs_written,
            "docs_skipped": skipped,
            "skipped_by_reason": dict(progress.skipped),
            "chunks_out": progress.chunks,
            "rows_written": written.get("rows_written", 0),
            "document_tokens": int(counters.get("tokens", 0)),
            "forward_tokens": int(counters.get("forward_tokens", 0)),
            "forward_passes": int(counters.get("forward_forwards", 0)),
        },
        "time_s": {
            "wall": round(wall, 3),
            "read": round(counters.get("read_s", 0), 3),
            "chunk": round(counters.get("chunk_s", 0), 3),
            "embed": round(counters.get("embed_s", 0), 3),
            "write": round(written.get("write_s", 0), 3),
        },
        "throughput": {
            "tokens_per_s": round(counters.get("tokens", 0) / wall, 1) if wall else None,
            "docs_per_s": round(docs_written / wall, 2) if wall else None,
            "chunks_per_s": round(progress.chunks / wall, 2) if wall else None,
        },
        "padding_waste": round(1 - counters.get("forward_tokens", 0) / padded, 4) if padded else None,
        "skipped_examples": progress.skip_examples,
        "config": redacted(config),
    }


def write_summary(config: JobConfig, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` and the resolved, redacted ``config.json`` under a new run directory."""
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    directory = Path(config.runtime.summary_dir) / run_id
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(redacted(config), indent=2))
    path = directory / "summary.json"
    path.write_text(json.dumps({"run_id": run_id, **summary}, indent=2, default=str))
    return path
