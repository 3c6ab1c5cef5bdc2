"""What the ANN index costs search, on real data: recall@10 of lateline's search against an exact search, on
NFCorpus embedded by lateline (BEIR test split: 3,633 documents, 323 queries), with the index
``lateline maintain`` builds by default.

Steps: the corpus is indexed with ``--config`` (default ``configs/eval-nfcorpus.yaml``, its chunks set to
``--chunk-size`` tokens) into a scratch table, or ``--db`` names a directory that already holds one
(``chunks``); two copies are made, one maintained with ``maintain.ann_index: none`` (exact search) and one with
the defaults (an ``ivf_pq`` index). Each query is embedded as ``lateline search`` embeds it; its exact top 10
comes from all stored vectors (NumPy); the indexed copy is searched as ``pipeline.search`` does, at several
refine factors (candidates per hit re-ranked by their stored vectors; lateline's is ``REFINE_FACTOR``).
Prints recall@10, the queries that lost a hit and milliseconds per query for each, and the flat table's.

    python benchmarks/ann_recall.py                        # indexes NFCorpus (about 5 minutes on 2 cores)
    python benchmarks/ann_recall.py --db /tmp/annq/db      # a table built before
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import lancedb
import numpy as np

from pipeline.config import apply_overrides, load_config, parse_config
from pipeline.embedding import embed_queries
from pipeline.evaluation import load_beir, write_pipeline_corpus
from pipeline.maintain import maintain
from pipeline.model import load_model
from pipeline.search import REFINE_FACTOR

K = 10
REFINE_FACTORS = (None, 10, 20, 50, 100)
DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "nfcorpus"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/eval-nfcorpus.yaml")
    parser.add_argument("--dataset", default=str(DATASET), help="a BEIR dataset directory (default: NFCorpus)")
    parser.add_argument("--chunk-size", type=int, default=128, help="chunking.size for the table it indexes")
    parser.add_argument("--db", help="a LanceDB directory whose `chunks` table was indexed from the dataset")
    args = parser.parse_args(argv)
    if not Path(args.dataset).is_dir():
        raise SystemExit(f"no dataset at {args.dataset} (see --dataset)")
    dataset = load_beir(args.dataset)
    work = Path(tempfile.mkdtemp(prefix="lateline-ann-"))
    try:
        config = _config(args, work)
        if args.db is None:
            _index(config, dataset, work)
        built = Path(config.sink.uri)
        kinds = {"flat": "none", "ivf_pq": "ivf_pq"}
        tables = {name: _maintained_copy(config, built, work / name, ann) for name, ann in kinds.items()}
        model = load_model(config.model, config.embedding.document_prefix)
        queries = embed_queries(model, list(dataset.queries.values()), config.embedding.query_prefix)
        exact = _exact_top(tables["flat"], queries)
        rows = tables["flat"].count_rows()
        print(f"{rows:,} chunks, {len(queries)} queries; exact top {K} from all stored vectors")
        print(f"{'search':<34} {'recall@10':>9} {'queries losing a hit':>21} {'ms/query':>9}")
        _report("flat table (no index)", tables["flat"], queries, exact, None)
        for refine in REFINE_FACTORS:
            mark = " (lateline)" if refine == REFINE_FACTOR else ""
            _report(f"ivf_pq, refine factor {refine or 'none'}{mark}", tables["ivf_pq"], queries, exact, refine)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _config(args: argparse.Namespace, work: Path):
    overrides = [
        f"chunking.size={args.chunk_size}",
        f"sink.uri={args.db or work / 'built'}",
        "sink.table=chunks",
        f"source.uri={work / 'corpus'}",
        f"runtime.summary_dir={work / 'runs'}",
    ]
    return parse_config(apply_overrides(load_config(args.config).model_dump(), overrides))


def _index(config, dataset, work: Path) -> None:
    from pipeline.runner import run_index

    write_pipeline_corpus(dataset, work / "corpus" / "corpus.jsonl")
    run_index(config)


def _maintained_copy(config, built: Path, target: Path, ann_index: str):
    """A copy of the built table, maintained with ``maintain.ann_index: ann_index`` (and no full-text index)."""
    shutil.copytree(built, target, ignore=shutil.ignore_patterns("*.lateline-lock"))
    keys = [f"sink.uri={target}", f"maintain.ann_index={ann_index}", "maintain.fts=false", "maintain.ann_min_rows=1"]
    copy = parse_config(apply_overrides(config.model_dump(), keys))
    print(f"{ann_index}: {maintain(copy)['actions']}")
    return lancedb.connect(str(target)).open_table("chunks")


def _exact_top(table, queries: np.ndarray) -> list[set[str]]:
    stored = table.to_arrow()
    vectors = np.stack(stored["vector"].to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.array(stored["chunk_id"].to_pylist())
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ vectors.T
    return [set(ids[row]) for row in np.argsort(-scores, axis=1)[:, :K]]


def _report(label: str, table, queries: np.ndarray, exact: list[set[str]], refine: int | None) -> None:
    """One line: recall@10 of the table's search (as ``pipeline.search`` queries it) against ``exact``."""
    recalls, seconds = [], []
    for query in queries[:20]:  # warm: the first searches open the index and data files
        table.search(query).distance_type("cosine").limit(K).to_arrow()
    for query, truth in zip(queries, exact):
        search = table.search(query).distance_type("cosine").select(["chunk_id"]).limit(K)
        if refine is not None:
            search = search.refine_factor(refine)
        started = time.perf_counter()
        found = search.to_arrow()["chunk_id"].to_pylist()
        seconds.append(time.perf_counter() - started)
        recalls.append(len(truth & set(found)) / K)
    losing = sum(recall < 1 for recall in recalls)
    print(f"{label:<34} {np.mean(recalls):>9.3f} {losing:>21} {1000 * np.mean(seconds):>9.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
