"""From what table size the ANN index pays: milliseconds per search with and without it, by rows.

For each size, a table of generated 384-dim vectors (drawn around 256 random centres: a speed measurement, not a
quality claim) is searched by 100 queries as ``pipeline.search`` searches (cosine, top 10, lateline's refine
factor), first flat (every vector compared: exact), then after the ``ivf_pq`` index ``lateline maintain`` builds
by default. Prints the index's build seconds, both latencies and their ratio; the size where the ratio passes 1
is where ``maintain.ann_min_rows`` belongs. Recall on real data: ``benchmarks/ann_recall.py``.

    python benchmarks/ann_latency.py                               # 10k to 200k rows, about 2 minutes
    python benchmarks/ann_latency.py --rows 50000 500000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import IvfPq

from pipeline.search import REFINE_FACTOR

DIM, CENTRES, QUERIES, K = 384, 256, 100, 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 25_000, 50_000, 100_000, 200_000])
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    queries = centres[rng.integers(0, CENTRES, QUERIES)] + 0.3 * rng.standard_normal((QUERIES, DIM))
    work = Path(tempfile.mkdtemp(prefix="lateline-ann-latency-"))
    print(f"{'rows':>9} {'flat ms':>8} {'ivf_pq ms':>10} {'flat / ivf_pq':>14} {'index build s':>14}")
    try:
        for rows in args.rows:
            table = lancedb.connect(str(work / str(rows))).create_table("chunks", _vectors(rows, centres, rng))
            flat = _ms_per_query(table, queries)
            started = time.perf_counter()
            table.create_index("vector", config=IvfPq(distance_type="cosine"))
            built = time.perf_counter() - started
            indexed = _ms_per_query(table, queries)
            print(f"{rows:>9,} {flat:>8.1f} {indexed:>10.1f} {flat / indexed:>14.2f} {built:>14.1f}")
            shutil.rmtree(work / str(rows), ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _vectors(rows: int, centres: np.ndarray, rng: np.random.Generator) -> pa.Table:
    picks = rng.integers(0, len(centres), rows)
    vectors = (centres[picks] + 0.3 * rng.standard_normal((rows, DIM))).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)
    return pa.table({"chunk_id": [f"c{i}" for i in range(rows)], "vector": column})


def _ms_per_query(table, queries: np.ndarray) -> float:
    """Mean milliseconds of a search as lateline's (after 10 untimed ones that open the files)."""

    def search(query: np.ndarray) -> None:
        found = table.search(query).distance_type("cosine").refine_factor(REFINE_FACTOR).select(["chunk_id"])
        found.limit(K).to_arrow()

    for query in queries[:10]:
        search(query)
    started = time.perf_counter()
    for query in queries:
        search(query)
    return 1000 * (time.perf_counter() - started) / len(queries)


if __name__ == "__main__":
    raise SystemExit(main())
