"""``lateline eval`` end to end on a small BEIR-layout dataset built here from real prose."""

from __future__ import annotations

import json
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import yaml

from jobs import eval as eval_job

pytestmark = pytest.mark.integration

DOCS = ["lambda", "import", "debugger", "formatstrings", "assert", "while", "pass", "with", "dict", "floating"]
QUERIES = {
    "q1": ("anonymous inline function expression", "lambda"),
    "q2": ("how the import statement finds and loads modules", "import"),
    "q3": ("interactive source code debugger with breakpoints", "debugger"),
    "q4": ("format specification mini-language for format strings", "formatstrings"),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("beir")
    (root / "qrels").mkdir()
    corpus = [json.dumps({"_id": d, "title": d.replace("-", " "), "text": topics[d]}) for d in DOCS]
    (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": q, "text": t}) for q, (t, _) in QUERIES.items()))
    judged = "".join(f"{q}\t{doc}\t1\n" for q, (_, doc) in QUERIES.items())
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + judged)
    return root


def test_eval_compares_no_chunking_naive_and_late(dataset: Path, ray_session, tmp_path: Path, capsys) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text(
        yaml.safe_dump({"source": {"uri": str(dataset), "format": "jsonl"}, "model": {"dtype": "float32"}})
    )
    out = tmp_path / "out"
    code = eval_job.main(["--config", str(config), "--dataset", str(dataset), "--out", str(out), "--chunk-sizes", "64"])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert report["queries"] == len(QUERIES)
    assert list(report["results"]) == ["no-chunking", "naive-64", "late-64"]
    for name, result in report["results"].items():
        metrics = result["metrics"]
        assert all(0.0 <= value <= 1.0 for value in metrics.values()), name
        assert metrics["recall@10"] == 1.0 and metrics["ndcg@10"] >= 0.5, (name, metrics)
    assert report["results"]["no-chunking"]["chunks"] == len(DOCS)
    assert report["results"]["late-64"]["chunks"] == report["results"]["naive-64"]["chunks"] > len(DOCS)
    assert (out / "results.png").stat().st_size > 10_000
    assert "| late-64 |" in capsys.readouterr().out

    code = eval_job.main(
        [
            "--config",
            str(config),
            "--dataset",
            str(dataset),
            "--out",
            str(tmp_path / "existing"),
            "--table",
            "eval_late_64",
            "--set",
            f"sink.uri={out / 'lancedb'}",
        ]
    )
    existing = json.loads((tmp_path / "existing" / "results.json").read_text())["results"]["eval_late_64"]
    assert code == 0 and existing["metrics"] == report["results"]["late-64"]["metrics"]


def test_a_malformed_dataset_exits_2_naming_the_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("{}\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("q\td\ts\n")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"source": {"uri": str(tmp_path), "format": "jsonl"}}))
    assert eval_job.main(["--config", str(config), "--dataset", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "test.tsv line 1" in capsys.readouterr().err
