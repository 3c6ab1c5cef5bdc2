"""`lateline maintain` after a night's change, measured: adding the new rows to the indexes it built (what maintain
does now) against rebuilding every index (what it did before, and what `--rebuild-indexes` still does), on two
copies of one table, in one run.

The table: ``--rows`` chunks of 384-dim vectors drawn around 256 random centres (generated: a speed measurement,
not a quality claim about any model), short texts, in 20 fragments as a run's commits leave them. Steps:

1. the first maintain builds the ``chunk_id``, vector (``ivf_pq``) and full-text indexes (timed once);
2. the table is copied; into each copy go the same night's change, ``--change`` of the rows (half of it new
   chunks, half rewritten ones: deleted and added again, as upserts do), in 5 commits;
3. ``maintain`` on one copy, ``maintain --rebuild-indexes`` on the other: wall seconds and their ratio;
4. recall@10 of each copy's vector search (LanceDB's, with lateline's refine factor) against an exact search,
   over 100 queries near the new rows, so that what the cheaper update costs in quality is on the same page.
   Only the two copies' recalls compare: the level itself is that of product quantisation on generated vectors.

    python benchmarks/maintain.py                    # 100,000 rows, about 2 minutes on 2 cores
    python benchmarks/maintain.py --change 0.1       # a bigger night: a tenth of the rows
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from pipeline.config import JobConfig, parse_config
from pipeline.maintain import maintain
from pipeline.search import REFINE_FACTOR

DIM, CENTRES, FRAGMENTS, NIGHT_COMMITS, QUERIES, K = 384, 256, 20, 5, 100, 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the table before the night's change")
    parser.add_argument("--change", type=float, default=0.01, help="share of the rows the night adds or rewrites")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="lateline-maintain-"))
    try:
        first = _build_table(work / "incremental", args.rows, centres, rng)
        print(f"first maintain (builds every index on {args.rows:,} rows): {first:.1f} s")
        shutil.copytree(work / "incremental", work / "rebuild")
        night = _night_change(args.rows, args.change, centres, rng)
        for name in ("incremental", "rebuild"):
            _apply(work / name, night)
        queries = _queries(night, rng)  # the same for both copies
        timings, recalls = {}, {}
        for name in ("incremental", "rebuild"):
            started = time.perf_counter()
            report = maintain(_config(work / name), rebuild_indexes=name == "rebuild")
            timings[name] = time.perf_counter() - started
            recalls[name] = _recall(work / name, queries)
            print(f"maintain, {name:<11}: {timings[name]:6.1f} s, recall@{K} {recalls[name]:.3f}; {report['actions']}")
        changed = sum(len(batch) for batch in night["add"])
        print(
            f"\nafter a night that added or rewrote {changed:,} of {args.rows:,} rows:\n"
            f"  maintain (new rows added to the indexes): {timings['incremental']:.1f} s\n"
            f"  maintain --rebuild-indexes (before):        {timings['rebuild']:.1f} s\n"
            f"  rebuild / incremental: {timings['rebuild'] / timings['incremental']:.1f}x; "
            f"recall@{K} {recalls['incremental']:.3f} against {recalls['rebuild']:.3f} rebuilt"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _rows(ids: range, centres: np.ndarray, rng: np.random.Generator, tag: str = "") -> pa.Table:
    picks = rng.integers(0, len(centres), len(ids))
    vectors = centres[picks] + 0.3 * rng.standard_normal((len(ids), DIM)).astype(np.float32)
    words = np.array(["late", "chunking", "pools", "token", "spans", "vector", "table", "index", "night", "run"])
    texts = [" ".join(words[rng.integers(0, len(words), 12)]) + tag for _ in ids]
    flat = pa.array(vectors.astype(np.float32).ravel())
    return pa.table(
        {
            "chunk_id": [f"c{i}" for i in ids],
            "text": texts,
            "vector": pa.FixedSizeListArray.from_arrays(flat, DIM),
        }
    )


def _build_table(db: Path, rows: int, centres: np.ndarray, rng: np.random.Generator) -> float:
    """The table in ``FRAGMENTS`` commits, then the first maintain; returns that maintain's seconds."""
    table = None
    step = -(-rows // FRAGMENTS)
    for start in range(0, rows, step):
        batch = _rows(range(start, min(start + step, rows)), centres, rng)
        if table is None:
            table = lancedb.connect(str(db)).create_table("chunks", batch)
        else:
            table.add(batch)
    started = time.perf_counter()
    maintain(_config(db))
    return time.perf_counter() - started


def _night_change(rows: int, share: float, centres: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """The same change for both copies: rewritten chunks (deleted, then added again) and new ones."""
    count = max(2, int(rows * share))
    rewritten = rng.choice(rows, count // 2, replace=False)
    new = range(rows, rows + count - len(rewritten))
    adds = [_rows(new, centres, rng, " new")]
    rewritten_rows = _rows(range(len(rewritten)), centres, rng, " rewritten")
    rewritten_rows = rewritten_rows.set_column(0, "chunk_id", pa.array([f"c{i}" for i in rewritten]))
    adds.append(rewritten_rows)
    both = pa.concat_tables(adds)
    parts = np.array_split(np.arange(len(both)), NIGHT_COMMITS)
    return {"delete": [f"c{i}" for i in rewritten], "add": [both.take(part) for part in parts]}


def _apply(db: Path, night: dict[str, Any]) -> None:
    table = lancedb.connect(str(db)).open_table("chunks")
    ids = ", ".join(f"'{chunk_id}'" for chunk_id in night["delete"])
    table.delete(f"chunk_id IN ({ids})")
    for batch in night["add"]:
        table.add(batch)


def _queries(night: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Query vectors near some of the night's new rows."""
    added = pa.concat_tables(night["add"])["vector"].combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    picks = rng.choice(len(added), min(QUERIES, len(added)), replace=False)
    return added[picks] + 0.1 * rng.standard_normal((len(picks), DIM)).astype(np.float32)


def _recall(db: Path, queries: np.ndarray) -> float:
    """recall@K of the table's vector search against an exact cosine search."""
    table = lancedb.connect(str(db)).open_table("chunks")
    stored = table.to_arrow()
    vectors = stored["vector"].combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = stored["chunk_id"].to_pylist()
    found = 0
    for query in queries:
        exact = {ids[i] for i in np.argsort(-(vectors @ (query / np.linalg.norm(query))))[:K]}
        hits = table.search(query).distance_type("cosine").refine_factor(REFINE_FACTOR).limit(K).to_list()
        found += len(exact & {hit["chunk_id"] for hit in hits})
    return found / (K * len(queries))


def _config(db: Path) -> JobConfig:
    return parse_config({"source": {"uri": "unused", "format": "jsonl"}, "sink": {"uri": str(db), "table": "chunks"}})


if __name__ == "__main__":
    raise SystemExit(main())
