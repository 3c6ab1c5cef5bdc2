"""The generated long-document suite: every document has its length and exactly one needle its query asks for."""

from __future__ import annotations

import json
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from pipeline.evaluation import load_beir
from pipeline.longdocs import NAMES, filler_sentences, write_suite


def _words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("kind", ["needle", "passkey"])
def test_each_document_has_its_length_and_one_needle(tmp_path: Path, kind: str) -> None:
    filler = filler_sentences(list(topics.values()))
    datasets = write_suite(tmp_path, [256, 2048], filler, _words, kind, docs_per_length=5, seed=3)
    longest_sentence = max(map(_words, filler))
    for length, root in datasets.items():
        dataset = load_beir(root)
        docs = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (root / "corpus.jsonl").open()}
        assert len(docs) == len(dataset.queries) == 5
        for query_id, query in dataset.queries.items():
            [(doc_id, score)] = dataset.qrels[query_id].items()
            name = next(n for n in NAMES if n in query)
            assert score == 1 and length <= _words(docs[doc_id]) < length + longest_sentence + 20
            assert [n for n in NAMES[:5] if f" {n} " in f" {docs[doc_id]} "] == [name], "one needle, the right one"


def test_needles_land_at_many_depths(tmp_path: Path) -> None:
    filler = filler_sentences(list(topics.values()))
    [root] = write_suite(tmp_path, [4096], filler, _words, "needle", docs_per_length=20, seed=1).values()
    depths = []
    for line in (root / "corpus.jsonl").open():
        text = json.loads(line)["text"]
        name = next(n for n in NAMES if f"{n} keeps" in text)
        depths.append(text.index(f"{name} keeps") / len(text))
    assert min(depths) < 0.25 and max(depths) > 0.75
