"""Retrieval evaluation on a BEIR-layout dataset: what late chunking buys, measured on the user's own data.

Dataset layout (BEIR): ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``),
``qrels/test.tsv`` (header ``query-id  corpus-id  score``). Only queries with judgments are run.

Each variant indexes the corpus through the normal pipeline into a scratch table (``<out>/lancedb``; re-runs
are incremental), runs every query, ranks documents by their best chunk, and scores the ranking with
nDCG@10 (linear gain, as trec_eval / BEIR), Recall@10, Recall@100 and MRR@10. The metric functions are pure.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, apply_overrides, parse_config

CUTOFFS = {"ndcg@10": 10, "recall@10": 10, "recall@100": 100, "mrr@10": 10}
RANK_DEPTH = 100
CHUNKS_PER_DOC_SEARCHED = 20  # how many chunks per wanted document the vector search returns before grouping


class DatasetError(ValueError):
    """The dataset directory is not in the BEIR layout; the message names the file and line."""


@dataclass(frozen=True)
class BeirDataset:
    root: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


# --- metrics (pure) -------------------------------------------------------------------------------------------
def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains: sum(rel_i / log2(i + 1)) over ranks i = 1..k, divided by the ideal."""
    dcg = sum(relevance.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal = sorted((score for score in relevance.values() if score > 0), reverse=True)[:k]
    idcg = sum(score / math.log2(rank + 2) for rank, score in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents (score > 0) found in the top k."""
    relevant = {doc for doc, score in relevance.items() if score > 0}
    return len(relevant & set(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranking: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant document within the top k, else 0."""
    for rank, doc in enumerate(ranking[:k], start=1):
        if relevance.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def score_rankings(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean of every metric in :data:`CUTOFFS` over the judged queries (a query without a ranking scores 0)."""
    functions = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k}
    totals = dict.fromkeys(CUTOFFS, 0.0)
    for query, relevance in qrels.items():
        ranking = rankings.get(query, [])
        for name, k in CUTOFFS.items():
            totals[name] += functions[name.split("@")[0]](ranking, relevance, k)
    return {name: total / len(qrels) for name, total in totals.items()} if qrels else totals


def best_chunk_ranking(doc_ids_by_score: Sequence[str], depth: int = RANK_DEPTH) -> list[str]:
    """Documents in the order of their best chunk (chunk hits given best first), at most ``depth``."""
    return list(dict.fromkeys(doc_ids_by_score))[:depth]


# --- the dataset ------------------------------------------------------------------------------------------------
def load_beir(root: str | Path) -> BeirDataset:
    """Read queries and qrels, check the corpus is there. Raises :class:`DatasetError` naming file and line."""
    root = Path(root)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        if not (root / name).is_file():
            raise DatasetError(
                f"--dataset: {root / name} is missing (BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv)"
            )
    qrels = _read_qrels(root / "qrels" / "test.tsv")
    queries = {qid: text for qid, text, _ in _read_jsonl(root / "queries.jsonl", ("_id", "text")) if qid in qrels}
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise DatasetError(
            f"{root / 'qrels/test.tsv'}: {len(missing)} judged queries are not in queries.jsonl (first: {missing[0]!r})"
        )
    return BeirDataset(root, queries, qrels)


def _read_jsonl(path: Path, fields: tuple[str, ...]) -> list[tuple]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path} line {number}: not JSON ({exc})") from None
            absent = [f for f in fields if not isinstance(record, dict) or not isinstance(record.get(f), str)]
            if absent:
                raise DatasetError(f"{path} line {number}: needs string fields {absent}")
            rows.append((*(record[f] for f in fields), record.get("title") or ""))
    return rows


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header != ["query-id", "corpus-id", "score"]:
            raise DatasetError(f"{path} line 1: expected the header 'query-id<TAB>corpus-id<TAB>score' (got {header})")
        for number, row in enumerate(reader, start=2):
            if len(row) != 3 or not row[2].lstrip("-").isdigit():
                raise DatasetError(f"{path} line {number}: expected query-id, corpus-id and an integer score ({row})")
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    if not qrels:
        raise DatasetError(f"{path}: no judgments")
    return qrels


def check_same_corpus(table: str, rankings: Mapping[str, Sequence[str]], dataset: BeirDataset) -> None:
    """Raise :class:`DatasetError` when ``table`` returned documents but none of the dataset's corpus: it holds
    another corpus, and its scores of 0 would read as a result."""
    returned = {doc for ranking in rankings.values() for doc in ranking}
    corpus = {doc_id for doc_id, _, _ in _read_jsonl(dataset.root / "corpus.jsonl", ("_id", "text"))}
    if returned and not returned & corpus:
        raise DatasetError(
            f"--table: none of the {len(returned):,} documents {table!r} returned is in {dataset.root / 'corpus.jsonl'}"
            f" (e.g. {sorted(returned)[:3]}): it holds another corpus; leave --table out to index the dataset's"
        )


def write_pipeline_corpus(dataset: BeirDataset, target: Path) -> int:
    """The corpus as lateline JSONL (``id``, ``text`` = title, blank line, text); returns the document count."""
    target.parent.mkdir(parents=True, exist_ok=True)
    documents = _read_jsonl(dataset.root / "corpus.jsonl", ("_id", "text"))
    with target.open("w", encoding="utf-8") as handle:
        for doc_id, text, title in documents:
            body = f"{title}\n\n{text}" if title else text
            handle.write(json.dumps({"id": doc_id, "text": body}, ensure_ascii=False) + "\n")
    return len(documents)


# --- variants ------------------------------------------------------------------------------------------------
def variants(chunk_sizes: Sequence[int]) -> dict[str, list[str]]:
    """Name -> config overrides: no chunking (whole document, truncated to the window), then naive and late
    chunking at each chunk size, same model, same chunker."""
    named = {"no-chunking": ["chunking.strategy=none", "embedding.mode=naive"]}
    for size in chunk_sizes:
        for mode in ("naive", "late"):
            named[f"{mode}-{size}"] = [f"chunking.size={size}", f"embedding.mode={mode}"]
    return named


def variant_config(base: JobConfig, corpus: Path, out: Path, name: str, overrides: list[str]) -> JobConfig:
    """``base`` pointed at the scratch corpus and a scratch table for one variant."""
    raw = base.model_dump()
    scratch = [
        f"source.uri={corpus}",
        "source.format=jsonl",
        "source.id_field=id",
        "source.text_field=text",
        f"sink.uri={out / 'lancedb'}",
        f"sink.table=eval_{name.replace('-', '_')}",
        "sink.mode=upsert",
        f"runtime.summary_dir={out / 'runs'}",
    ]
    raw["source"]["metadata_fields"] = []
    return parse_config(apply_overrides(raw, [*scratch, *overrides]))


def rank_queries(config: JobConfig, queries: Mapping[str, str], depth: int = RANK_DEPTH) -> dict[str, list[str]]:
    """Top ``depth`` documents per query from the config's table, ranked by best chunk."""
    from pipeline.search import search

    ids = list(queries)
    hits = search(config, [queries[q] for q in ids], k=depth, by_document=True, chunks_per_doc=CHUNKS_PER_DOC_SEARCHED)
    return {qid: best_chunk_ranking([hit.doc_id for hit in found], depth) for qid, found in zip(ids, hits)}


def results_markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table: one row per variant, one column per metric (x100, two decimals)."""
    lines = ["| variant | " + " | ".join(CUTOFFS) + " | chunks |", "|" + " --- |" * (len(CUTOFFS) + 2)]
    for name, result in results.items():
        cells = " | ".join(f"{100 * result['metrics'][m]:.2f}" for m in CUTOFFS)
        lines.append(f"| {name} | {cells} | {result.get('chunks', '')} |")
    return "\n".join(lines) + "\n"


def results_chart(results: Mapping[str, Mapping[str, Any]], title: str, path: Path) -> None:
    """A grouped bar chart (metrics x variants) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, metrics = list(results), list(CUTOFFS)
    width = 0.8 / max(len(names), 1)
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for offset, name in enumerate(names):
        values = [100 * results[name]["metrics"][m] for m in metrics]
        bars = axes.bar([i + offset * width for i in range(len(metrics))], values, width, label=name)
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
    axes.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(metrics))], metrics)
    axes.set_ylabel("score x 100")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_eval(
    base: JobConfig, dataset_dir: str | Path, out: Path, chunk_sizes: Sequence[int], table: str | None = None
) -> dict[str, Any]:
    """Evaluate every variant (or, with ``table``, that existing table as configured) and write
    ``results.json``, ``results.md`` and ``results.png`` under ``out``. Returns the results."""
    from pipeline.runner import log, run_index

    dataset = load_beir(dataset_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if table is not None:
        config = parse_config(apply_overrides(base.model_dump(), [f"sink.table={table}"]))
        rankings = rank_queries(config, dataset.queries)
        check_same_corpus(table, rankings, dataset)
        results[table] = {"metrics": score_rankings(rankings, dataset.qrels)}
    else:
        corpus = out / "corpus" / "corpus.jsonl"
        documents = write_pipeline_corpus(dataset, corpus)
        names = list(variants(chunk_sizes))
        log(f"eval: {documents:,} documents, {len(dataset.queries):,} judged queries, variants {names}")
        for name, overrides in variants(chunk_sizes).items():
            config = variant_config(base, corpus, out, name, overrides)
            summary = run_index(config)
            metrics = score_rankings(rank_queries(config, dataset.queries), dataset.qrels)
            results[name] = {"metrics": metrics, "chunks": summary["table"]["rows"], "index_wall_s": summary["wall_s"]}
            log(f"eval: {name}: " + ", ".join(f"{m} {100 * v:.2f}" for m, v in metrics.items()))
    report = {
        "dataset": str(dataset.root),
        "queries": len(dataset.queries),
        "model": base.model.name_or_path,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text(results_markdown(results))
    results_chart(
        results, f"{dataset.root.name}: {len(dataset.queries)} queries, {base.model.name_or_path}", out / "results.png"
    )
    return report
