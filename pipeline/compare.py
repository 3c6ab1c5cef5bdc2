"""Upgrade report: how far a new table (another model's vectors) agrees with the current one.

Pure core, thin shell: the queries (from a file, or sampled from chunk texts) are searched in both tables by the
caller; :func:`compare_report` turns the two hit lists and both tables' sizes into a JSON-ready report, and
:func:`write_report` writes it as ``compare.json``, ``compare.md`` and ``compare.png``. Only
:func:`table_side` touches LanceDB (it reads the ``doc_id`` column and the table's model record).

Conventions used throughout:
- A query's *top-k* are its first ``k`` hits; overlap counts distinct ids in them (see :func:`overlap_at_k`).
- Percentiles are numpy's default (linear interpolation between the closest ranks).
- A statistic of nothing (no queries, no hits) is ``None``, never NaN, so the JSON stays valid.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from pipeline import schema
from pipeline.search import Hit
from pipeline.sink import read_table_record

MIN_QUERY_WORDS = 3  # fewer words make a pseudo-query that matches almost anything
MAX_EXAMPLES = 20  # missing document ids listed per side (the counts are always complete)
SCORE_BINS = 20
NO_RECORD = "(no lateline record)"
# Overlaps are fractions j/k, and their float mean can land a hair off an exact threshold (mean of 2/3, 1, 0, 1/3
# is 0.49999999999999994 with pairwise summation): a check allows this much below or above its threshold.
CHECK_TOLERANCE = 1e-9

# A sentence ends at . ! ? followed by whitespace, or at a blank line (headings, list items).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


class QueryFileError(ValueError):
    """A queries file cannot be used; the message names the file and, where it applies, the line."""


# --- queries -----------------------------------------------------------------------------------------------
def sample_queries(texts: Sequence[str], n: int, seed: int = 0, max_words: int = 16) -> list[str]:
    """Up to ``n`` distinct pseudo-queries made from chunk texts.

    Each text gives one candidate: its first sentence (ending at ``.``/``!``/``?`` plus whitespace, or at a
    blank line), whitespace collapsed, cut to its first ``max_words`` words. Texts whose candidate has fewer
    than ``MIN_QUERY_WORDS`` words are skipped; equal candidates count once. Then ``n`` candidates are drawn
    with ``random.Random(seed)`` (all of them, in a seeded order, when there are fewer than ``n``).

    Deterministic: the result depends only on the multiset of ``texts``, ``n``, ``seed`` and ``max_words``,
    not on the order of ``texts`` (a table scan's row order may change after compaction or an upsert).
    """
    if n < 0:
        raise ValueError(f"n: must be >= 0 (got {n})")
    if max_words < MIN_QUERY_WORDS:
        raise ValueError(f"max_words: must be >= {MIN_QUERY_WORDS} (got {max_words})")
    candidates = sorted({query for query in (_first_sentence(text, max_words) for text in texts) if query})
    return random.Random(seed).sample(candidates, min(n, len(candidates)))


def _first_sentence(text: str, max_words: int) -> str | None:
    words = _SENTENCE_END.split(text.strip(), maxsplit=1)[0].split()[:max_words]
    return " ".join(words) if len(words) >= MIN_QUERY_WORDS else None


def load_queries(path: str | Path) -> list[str]:
    """The queries in a file, in file order (repeats kept: the file is the user's sample).

    ``*.jsonl`` / ``*.ndjson``: one JSON object per non-blank line with a non-empty string ``text`` (as BEIR
    ``queries.jsonl``) or ``query`` field. Any other file: plain UTF-8 text, one query per non-blank line,
    surrounding whitespace stripped. Raises :class:`QueryFileError` naming the file (and line) when the file
    cannot be read, a line is not valid UTF-8 or JSON or lacks the field, or the file holds no query.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QueryFileError(f"{path}: cannot read the queries file ({exc.strerror or exc})") from None
    parse = _json_query if path.suffix.lower() in {".jsonl", ".ndjson"} else _text_query
    queries = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise QueryFileError(f"{path} line {number}: not valid UTF-8") from None
        if text.strip():
            queries.append(parse(text, f"{path} line {number}"))
    if not queries:
        raise QueryFileError(f"{path}: no queries (expected one per non-blank line)")
    return queries


def _text_query(line: str, where: str) -> str:
    return line.strip()


def _json_query(line: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise QueryFileError(f"{where}: not JSON ({exc.msg})") from None
    if isinstance(record, dict):
        for field in ("text", "query"):
            if isinstance(record.get(field), str) and record[field].strip():
                return record[field].strip()
    raise QueryFileError(f"{where}: expected an object with a non-empty string 'text' or 'query' field")


# --- overlap ---------------------------------------------------------------------------------------------------
def overlap_at_k(old_ids: Sequence[str], new_ids: Sequence[str], k: int) -> float:
    """Share of the top ``k`` that two rankings have in common, in ``[0, 1]``.

    Each side's top-k is its first ``k`` *distinct* ids (a repeated id, e.g. a document with several chunks
    in the hits, counts once). The overlap is ``|top-k(old) ∩ top-k(new)| / d`` with
    ``d = min(k, max(|top-k(old)|, |top-k(new)|))``: when both sides return fewer than ``k`` ids (a small
    table) identical rankings still score 1.0, while one side returning fewer than the other lowers it.
    Two empty rankings agree (1.0).
    """
    if k <= 0:
        raise ValueError(f"k: must be > 0 (got {k})")
    old_top, new_top = _top_distinct(old_ids, k), _top_distinct(new_ids, k)
    denominator = min(k, max(len(old_top), len(new_top)))
    return len(old_top & new_top) / denominator if denominator else 1.0


def _top_distinct(ids: Sequence[str], k: int) -> set[str]:
    return set(list(dict.fromkeys(ids))[:k])


# --- table sides -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSide:
    """One table of the comparison: its name, model label (``name@fingerprint``), rows and documents, and its
    recorded chunker settings (JSON; ``""`` when it has no record)."""

    name: str
    model: str
    rows: int
    documents: int
    doc_ids: frozenset[str]
    chunker: str = ""


def table_side(table: Any, name: str) -> TableSide:
    """Describe a LanceDB ``table``: row count, distinct ``doc_id`` values (only that column is read) and the
    model label from its lateline record (``NO_RECORD`` for a table lateline did not write)."""
    rows = table.count_rows()
    doc_ids: frozenset[str] = frozenset()
    if rows:
        column = table.search().select([schema.DOC_ID]).limit(rows).to_arrow()[schema.DOC_ID]
        doc_ids = frozenset(pc.unique(column).to_pylist())
    record = read_table_record(table)
    return TableSide(name, _model_label(record), rows, len(doc_ids), doc_ids, _chunker(record))


def _chunker(record: dict[str, Any] | None) -> str:
    chunker = ((record or {}).get("settings") or {}).get("chunker")
    return json.dumps(chunker, sort_keys=True) if chunker else ""


def _model_label(record: dict[str, Any] | None) -> str:
    model = (record or {}).get("model")
    if not isinstance(model, dict):
        return NO_RECORD
    return f"{model.get('name', '?')}@{model.get('fingerprint', '?')}"


# --- the report (pure) ---------------------------------------------------------------------------------------
def compare_report(
    queries: Sequence[str],
    old_hits: Sequence[Sequence[Hit]],
    new_hits: Sequence[Sequence[Hit]],
    old: TableSide,
    new: TableSide,
    k: int,
    *,
    min_mean_doc_overlap: float = 0.5,
    max_row_change: float = 0.0,
    max_examples: int = MAX_EXAMPLES,
    score_bins: int = SCORE_BINS,
) -> dict[str, Any]:
    """A JSON-ready upgrade report from the same ``queries`` searched in the ``old`` and ``new`` table.

    ``old_hits[i]`` / ``new_hits[i]`` are query ``i``'s hits, best first; only the first ``k`` are used. Keys:
    ``tables``, ``k``, ``queries`` (count), ``per_query``, ``overlap``, ``scores``, ``rows``, ``documents``,
    ``verdict`` (see :func:`verdict`, which gets the two thresholds). With chunk hits, the document overlap
    counts the distinct documents among the top-k chunks; with ``by_document`` hits it is the plain document
    overlap@k and the chunk overlap compares each document's best chunk.
    """
    if not len(queries) == len(old_hits) == len(new_hits):
        raise ValueError(
            f"need one hit list per query: {len(queries)} queries, {len(old_hits)} old, {len(new_hits)} new"
        )
    if k <= 0:
        raise ValueError(f"k: must be > 0 (got {k})")
    old_top, new_top = [list(h[:k]) for h in old_hits], [list(h[:k]) for h in new_hits]
    per_query = [_query_row(q, o, n, k) for q, o, n in zip(queries, old_top, new_top)]
    report = {
        "tables": {
            "old": _side_summary(old),
            "new": _side_summary(new),
            "same_model": old.model == new.model,
            "same_chunking": old.chunker == new.chunker,
        },
        "k": k,
        "queries": len(queries),
        "per_query": per_query,
        "overlap": {kind: _overlap_stats([row[f"{kind}_overlap"] for row in per_query]) for kind in ("doc", "chunk")},
        "scores": score_distributions(old_top, new_top, score_bins),
        "rows": row_parity(old.rows, new.rows),
        "documents": document_parity(old, new, max_examples),
    }
    report["verdict"] = verdict(report, min_mean_doc_overlap, max_row_change)
    return report


def _side_summary(side: TableSide) -> dict[str, Any]:
    return {"name": side.name, "model": side.model, "rows": side.rows, "documents": side.documents}


def _query_row(query: str, old: list[Hit], new: list[Hit], k: int) -> dict[str, Any]:
    return {
        "query": query,
        "doc_overlap": overlap_at_k([h.doc_id for h in old], [h.doc_id for h in new], k),
        "chunk_overlap": overlap_at_k([h.chunk_id for h in old], [h.chunk_id for h in new], k),
        "old_hits": len(old),
        "new_hits": len(new),
        "old_top1": float(old[0].score) if old else None,  # float(): a numpy score would break json.dumps
        "new_top1": float(new[0].score) if new else None,
    }


def _overlap_stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "p10": None, "min": None}
    array = np.asarray(values, dtype=float)
    return {
        "mean": math.fsum(values) / len(values),  # correctly rounded sum: exact fractions stay exact
        "median": float(np.median(array)),
        "p10": float(np.percentile(array, 10)),
        "min": float(array.min()),
    }


def score_distributions(
    old_top: Sequence[Sequence[Hit]], new_top: Sequence[Sequence[Hit]], bins: int = SCORE_BINS
) -> dict[str, Any]:
    """Score statistics per side for all top-k scores (``top_k``) and each query's best score (``top1``).

    Both sides are counted over the same ``bin_edges`` per kind (``bins`` equal bins over the range of both
    sides' scores together), so their histograms can be overlaid. No scores: empty edges and counts.
    """
    scores = {
        "top_k": ([h.score for hits in old_top for h in hits], [h.score for hits in new_top for h in hits]),
        "top1": ([hits[0].score for hits in old_top if hits], [hits[0].score for hits in new_top if hits]),
    }
    result: dict[str, Any] = {"bin_edges": {}, "old": {}, "new": {}}
    for kind, (old_scores, new_scores) in scores.items():
        edges = _shared_edges([*old_scores, *new_scores], bins)
        result["bin_edges"][kind] = edges
        result["old"][kind] = _score_stats(old_scores, edges)
        result["new"][kind] = _score_stats(new_scores, edges)
    return result


def _shared_edges(scores: Sequence[float], bins: int) -> list[float]:
    return np.histogram_bin_edges(scores, bins=bins).tolist() if scores else []


def _score_stats(scores: Sequence[float], edges: Sequence[float]) -> dict[str, Any]:
    if not scores:
        return {
            "count": 0,
            "mean": None,
            "p5": None,
            "p50": None,
            "p95": None,
            "histogram": [0] * max(len(edges) - 1, 0),
        }
    array = np.asarray(scores, dtype=float)
    p5, p50, p95 = np.percentile(array, [5, 50, 95]).tolist()
    return {
        "count": len(scores),
        "mean": float(array.mean()),
        "p5": p5,
        "p50": p50,
        "p95": p95,
        "histogram": _counts(array, edges),
    }


def _counts(array: np.ndarray, edges: Sequence[float]) -> list[int]:
    return np.histogram(array, bins=np.asarray(edges))[0].tolist()


def row_parity(old_rows: int, new_rows: int) -> dict[str, Any]:
    """Row counts, ``difference`` (new - old) and ``ratio`` (new / old; ``None`` when old is empty)."""
    return {
        "old": old_rows,
        "new": new_rows,
        "difference": new_rows - old_rows,
        "ratio": new_rows / old_rows if old_rows else None,
    }


def document_parity(old: TableSide, new: TableSide, max_examples: int = MAX_EXAMPLES) -> dict[str, Any]:
    """Document counts and the documents only one side holds: complete counts, up to ``max_examples`` sorted ids."""
    missing_in_new, missing_in_old = sorted(old.doc_ids - new.doc_ids), sorted(new.doc_ids - old.doc_ids)
    return {
        "old": old.documents,
        "new": new.documents,
        "missing_in_new": len(missing_in_new),
        "missing_in_new_examples": missing_in_new[:max_examples],
        "missing_in_old": len(missing_in_old),
        "missing_in_old_examples": missing_in_old[:max_examples],
    }


def verdict(report: dict[str, Any], min_mean_doc_overlap: float, max_row_change: float) -> dict[str, Any]:
    """Simple checks on a report; ``passed`` when all pass. Each check states its rule, value and threshold;
    a value within ``CHECK_TOLERANCE`` of its threshold meets it (float noise, not a real difference).

    - ``same_documents``: no document is missing on either side.
    - ``row_parity``: ``|new rows - old rows| / old rows <= max_row_change`` (0: the same chunks, as a re-embed
      with the same chunker gives; an empty old table passes only when the new one is empty too). Tables
      chunked differently (a re-chunk) have other rows by design: the check is then reported, not applied.
    - ``doc_overlap``: mean document overlap@k ``>= min_mean_doc_overlap`` (a floor against a broken new
      table, not a quality judgement: two good models legitimately disagree on part of their top-k).
      No queries fails it: nothing was measured.
    - ``new_answers``: every query with hits in the old table has hits in the new one.
    """
    rows, mean_overlap = report["rows"], report["overlap"]["doc"]["mean"]
    documents = report["documents"]
    same_documents = documents["missing_in_new"] == 0 and documents["missing_in_old"] == 0
    row_change = abs(rows["difference"]) / rows["old"] if rows["old"] else (0.0 if rows["new"] == 0 else None)
    unanswered = sum(1 for row in report["per_query"] if row["old_hits"] and not row["new_hits"])
    if report["tables"].get("same_chunking", True):
        rows_check = _check(
            "row_parity",
            row_change is not None and row_change <= max_row_change + CHECK_TOLERANCE,
            "|new rows - old rows| / old rows <= threshold",
            row_change,
            max_row_change,
        )
    else:
        rows_check = _check("row_parity", True, "not applied: the tables are chunked differently", row_change)
    checks = [
        _check("same_documents", same_documents, "no document missing on either side"),
        rows_check,
        _check(
            "doc_overlap",
            mean_overlap is not None and mean_overlap >= min_mean_doc_overlap - CHECK_TOLERANCE,
            "mean document overlap@k >= threshold",
            mean_overlap,
            min_mean_doc_overlap,
        ),
        _check("new_answers", unanswered == 0, "queries with old hits but no new hits == 0", unanswered, 0),
    ]
    return {
        "passed": all(check["passed"] for check in checks),
        "same_documents": same_documents,
        "row_change": row_change,
        "mean_doc_overlap": mean_overlap,
        "checks": checks,
    }


def _check(name: str, passed: bool, rule: str, value: Any = None, threshold: Any = None) -> dict[str, Any]:
    return {"check": name, "passed": bool(passed), "rule": rule, "value": value, "threshold": threshold}


# --- files (thin shell) ------------------------------------------------------------------------------------
def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``compare.json`` (the report; strict JSON, no NaN), ``compare.md`` (a short summary) and
    ``compare.png`` (overlap histogram, score distributions, row/document parity) under ``out_dir`` (created).
    Returns their paths by kind: ``json``, ``markdown``, ``chart``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "compare.json", "markdown": out / "compare.md", "chart": out / "compare.png"}
    paths["json"].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(report_markdown(report))
    report_chart(report, paths["chart"])
    return paths


def _title(report: dict[str, Any]) -> str:
    old, new = report["tables"]["old"], report["tables"]["new"]
    return f"{old['name']} ({old['model']}) vs {new['name']} ({new['model']})"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def report_markdown(report: dict[str, Any]) -> str:
    """A short human summary: the two tables side by side, the overlap, and the verdict's checks."""
    tables, scores, docs, k = report["tables"], report["scores"], report["documents"], report["k"]
    rows = [
        ("model", tables["old"]["model"], tables["new"]["model"]),
        ("rows", report["rows"]["old"], report["rows"]["new"]),
        ("documents", docs["old"], docs["new"]),
        ("documents only here", docs["missing_in_new"], docs["missing_in_old"]),
        *[
            (f"{label} score {stat}", scores["old"][kind][stat], scores["new"][kind][stat])
            for kind, label in (("top1", "top-1"), ("top_k", f"top-{k}"))
            for stat in ("mean", "p50")
        ],
    ]
    lines = [
        f"# Upgrade report: {_title(report)}",
        "",
        f"| | {tables['old']['name']} (old) | {tables['new']['name']} (new) |",
        "| --- | --- | --- |",
        *[f"| {name} | {_fmt(old)} | {_fmt(new)} |" for name, old, new in rows],
        "",
        f"{report['queries']} queries, k = {k}. Overlap@{k} (mean / median / p10 / min):",
        "",
    ]
    for kind in ("doc", "chunk"):
        stats = report["overlap"][kind]
        lines.append(f"- {kind}: " + " / ".join(_fmt(stats[s]) for s in ("mean", "median", "p10", "min")))
    verdict_block = report["verdict"]
    lines += ["", f"Verdict: **{'passed' if verdict_block['passed'] else 'FAILED'}**", ""]
    for check in verdict_block["checks"]:
        mark = "pass" if check["passed"] else "FAIL"
        detail = (
            f" (value {_fmt(check['value'])}, threshold {_fmt(check['threshold'])})"
            if check["value"] is not None
            else ""
        )
        lines.append(f"- {mark}: {check['check']}: {check['rule']}{detail}")
    return "\n".join(lines) + "\n"


def report_chart(report: dict[str, Any], path: Path) -> None:
    """Three panels as PNG: per-query document overlap@k, overlaid top-k score histograms, rows and documents."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, safe in Ray workers and CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _overlap_panel(axes[0], report)
    _score_panel(axes[1], report)
    _parity_panel(axes[2], report)
    figure.suptitle(_title(report), fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _overlap_panel(axes: Any, report: dict[str, Any]) -> None:
    k, values = report["k"], [row["doc_overlap"] for row in report["per_query"]]
    # One bar per possible value j/k, centred on it (edges between values, so float rounding never misbins).
    edges = (np.arange(k + 2) - 0.5) / k
    axes.hist(values, bins=edges, color="tab:blue", edgecolor="white")
    mean = report["overlap"]["doc"]["mean"]
    if mean is not None:
        axes.axvline(mean, color="black", linestyle="--", label=f"mean {mean:.2f}")
    threshold = next(c["threshold"] for c in report["verdict"]["checks"] if c["check"] == "doc_overlap")
    axes.axvline(threshold, color="tab:red", linestyle=":", label=f"threshold {threshold:.2f}")
    axes.set_xlim(-0.5 / k, 1 + 0.5 / k)
    axes.set_xlabel(f"document overlap@{k} (1 = same documents)")
    axes.set_ylabel("queries")
    axes.set_title(f"Per-query document overlap@{k} ({report['queries']} queries)")
    axes.legend(fontsize=8)


def _score_panel(axes: Any, report: dict[str, Any]) -> None:
    scores, tables = report["scores"], report["tables"]
    edges = scores["bin_edges"]["top_k"]
    for side, color in (("old", "tab:gray"), ("new", "tab:orange")):
        stats = scores[side]["top_k"]
        if edges and stats["count"]:
            label = f"{side}: {tables[side]['name']} (median {stats['p50']:.3f})"
            axes.stairs(stats["histogram"], edges, fill=True, alpha=0.45, color=color, label=label)
    axes.set_xlabel(f"cosine score of the top-{report['k']} hits")
    axes.set_ylabel("hits")
    axes.set_title("Score distributions: old vs new")
    if edges:
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no hits", ha="center", va="center", transform=axes.transAxes)


def _parity_panel(axes: Any, report: dict[str, Any]) -> None:
    tables, rows, docs = report["tables"], report["rows"], report["documents"]
    positions, values = np.arange(2), [rows["old"], docs["old"], rows["new"], docs["new"]]
    for offset, side, color in ((-0.2, "old", "tab:gray"), (0.2, "new", "tab:orange")):
        counts = [rows[side], docs[side]]
        bars = axes.bar(positions + offset, counts, 0.4, color=color, label=f"{side}: {tables[side]['name']}")
        axes.bar_label(bars, labels=[f"{v:,}" for v in counts], fontsize=8)
    # Rows usually outnumber documents tenfold or more: a log scale keeps both groups readable (bars from 1).
    if min(values) > 0:
        axes.set_yscale("log")
        axes.set_ylim(1, max(values) * 8)
    else:
        axes.set_ylim(0, max(max(values), 1) * 1.4)
    axes.set_xticks(positions, ["rows (chunks)", "documents"])
    axes.set_xlim(-0.6, 1.6)
    axes.set_title("Rows and documents: old vs new")
    missing = docs["missing_in_new"] or docs["missing_in_old"]
    note = f"missing in new: {docs['missing_in_new']:,}\nmissing in old: {docs['missing_in_old']:,}"
    # x in data (over the documents bars), y in axes fraction (top of the panel, clear of the bars)
    axes.text(
        1,
        0.95,
        note,
        ha="center",
        va="top",
        transform=axes.get_xaxis_transform(),
        fontsize=9,
        color="tab:red" if missing else "black",
    )
    axes.legend(fontsize=8, loc="upper left")
