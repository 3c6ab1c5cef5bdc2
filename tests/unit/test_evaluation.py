"""Evaluation metrics against hand-computed values, and clear errors for malformed BEIR datasets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.evaluation import (
    DatasetError,
    best_chunk_ranking,
    check_same_corpus,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    results_markdown,
    score_rankings,
    variants,
)

RANKING = ["a", "b", "c", "d"]
RELEVANCE = {"b": 2, "d": 1, "x": 1, "n": 0}


def test_ndcg_matches_a_hand_computation() -> None:
    # dcg@3 = 2/log2(3) = 1.261860; ideal gains 2,1,1: 2/1 + 1/log2(3) + 1/2 = 3.130930
    assert ndcg_at_k(RANKING, RELEVANCE, 3) == pytest.approx(1.261860 / 3.130930, abs=1e-6)
    # dcg@10 adds d at rank 4: 1/log2(5) = 0.430677
    assert ndcg_at_k(RANKING, RELEVANCE, 10) == pytest.approx((1.261860 + 0.430677) / 3.130930, abs=1e-6)
    assert ndcg_at_k(["b", "d", "x"], RELEVANCE, 10) == pytest.approx(1.0)
    assert ndcg_at_k(RANKING, {"n": 0}, 10) == 0.0


def test_recall_and_mrr_match_hand_computations() -> None:
    assert recall_at_k(RANKING, RELEVANCE, 3) == pytest.approx(1 / 3)
    assert recall_at_k(RANKING, RELEVANCE, 4) == pytest.approx(2 / 3)
    assert mrr_at_k(RANKING, RELEVANCE, 10) == pytest.approx(0.5)
    assert mrr_at_k(RANKING, RELEVANCE, 1) == 0.0


def test_scores_are_means_over_judged_queries_and_missing_rankings_count_as_zero() -> None:
    scores = score_rankings({"q1": RANKING, "q2": ["z"]}, {"q1": RELEVANCE, "q2": {"z": 1}, "q3": {"y": 1}})
    q1_ndcg = (1.261860 + 0.430677) / 3.130930
    assert scores["ndcg@10"] == pytest.approx((q1_ndcg + 1 + 0) / 3, abs=1e-6)
    assert scores["recall@100"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert scores["mrr@10"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_documents_rank_by_their_best_chunk() -> None:
    assert best_chunk_ranking(["d1", "d2", "d1", "d3", "d2"], depth=2) == ["d1", "d2"]


def test_variants_compare_no_chunking_naive_and_late_at_each_size() -> None:
    assert list(variants([128, 256])) == ["no-chunking", "naive-128", "late-128", "naive-256", "late-256"]
    assert "chunking.strategy=none" in variants([64])["no-chunking"]


def test_markdown_table_has_a_row_per_variant() -> None:
    text = results_markdown(
        {"late-64": {"metrics": dict.fromkeys(["ndcg@10", "recall@10", "recall@100", "mrr@10"], 0.5), "chunks": 9}}
    )
    assert "| late-64 | 50.00 | 50.00 | 50.00 | 50.00 | 9 |" in text


def _dataset(root: Path, corpus: str, queries: str, qrels: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(corpus)
    (root / "queries.jsonl").write_text(queries)
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


GOOD_CORPUS = json.dumps({"_id": "d1", "title": "T", "text": "x"}) + "\n"
GOOD_QUERIES = json.dumps({"_id": "q1", "text": "x?"}) + "\n" + json.dumps({"_id": "q9", "text": "unjudged"}) + "\n"
GOOD_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\n"


def test_an_existing_table_of_another_corpus_is_refused_not_scored_zero(tmp_path: Path) -> None:
    dataset = load_beir(_dataset(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS))
    check_same_corpus("t", {"q1": ["zz", "d1"]}, dataset)  # some of the dataset's documents: a real score
    check_same_corpus("t", {"q1": []}, dataset)  # an empty table scores 0 truthfully
    with pytest.raises(DatasetError, match=r"none of the 2 documents 't' returned is in .*corpus.jsonl"):
        check_same_corpus("t", {"q1": ["zz", "yy"]}, dataset)


def test_a_good_dataset_keeps_only_judged_queries(tmp_path: Path) -> None:
    dataset = load_beir(_dataset(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS))
    assert dataset.queries == {"q1": "x?"} and dataset.qrels == {"q1": {"d1": 1}}


@pytest.mark.parametrize(
    ("queries", "qrels", "message"),
    [
        (GOOD_QUERIES, "qid\tdoc\tscore\nq1\td1\t1\n", "test.tsv line 1: expected the header"),
        (GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\tvery\n", "test.tsv line 2: expected"),
        ('{"_id": "q1", "text": "x"}\n{broken\n', GOOD_QRELS, "queries.jsonl line 2: not JSON"),
        ('{"_id": "q1"}\n', GOOD_QRELS, "queries.jsonl line 1: needs string fields ['text']"),
        ('{"_id": "q2", "text": "y"}\n', GOOD_QRELS, "1 judged queries are not in queries.jsonl"),
    ],
)
def test_malformed_files_are_named_with_the_line(tmp_path: Path, queries: str, qrels: str, message: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_beir(_dataset(tmp_path, GOOD_CORPUS, queries, qrels))


def test_a_missing_file_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"corpus\.jsonl is missing"):
        load_beir(tmp_path)
