"""``lateline index --dry-run``: an estimate from a sample, nothing written; after a run it knows what is unchanged
and uses that run's measured throughput."""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from jobs import index as index_job
from pipeline.dryrun import PREFIX_BYTES, STARTUP_GUESS_S

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def _estimate(config: Path, capsys: pytest.CaptureFixture) -> dict:
    capsys.readouterr()
    assert index_job.main(["--config", str(config), "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_estimates_without_writing_then_sees_the_unchanged_corpus(
    ray_session, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    shutil.copytree(SAMPLE, tmp_path / "src")
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"uri": str(tmp_path / "src"), "format": "jsonl"},
                "sink": {"uri": str(tmp_path / "db")},
                "runtime": {"summary_dir": str(tmp_path / "runs")},
            }
        )
    )
    first = _estimate(config, capsys)
    assert not (tmp_path / "db").exists() and not (tmp_path / "runs").exists(), "a dry run writes nothing"
    assert (first["objects"], first["estimated_docs"], first["estimated_unchanged_fraction"]) == (1, 60, 0.0)
    assert first["tokens_per_s"] > 0 and "benchmark" in first["throughput_basis"]
    assert first["objects_to_read"] == 1 and first["warnings"] == []
    assert first["estimated_seconds"] >= STARTUP_GUESS_S, "start-up counts even without an earlier run"

    assert index_job.main(["--config", str(config)]) == 0
    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/summary.json")]
    assert first["estimated_tokens"] == summary["counts"]["document_tokens"], "the sample was the whole corpus"

    capsys.readouterr()
    assert index_job.main(["--config", str(config), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    second = json.loads(out)
    assert "nothing to read: every object is unchanged since the last run" in err
    assert second["estimated_unchanged_fraction"] == 1.0 and second["estimated_seconds"] == 0
    assert second["objects_to_read"] == 0
    assert summary["run_id"] in second["throughput_basis"]

    # Another text field: the object would be read again, every record dead-lettered; the estimate says so.
    capsys.readouterr()
    assert index_job.main(["--config", str(config), "--dry-run", "--set", "source.text_field=body"]) == 0
    out, err = capsys.readouterr()
    wrong = json.loads(out)
    assert wrong["objects_to_read"] == 1 and wrong["estimated_seconds"] > 0, "start-up counts: Ray would start"
    assert wrong["sampled_bad_records"] == wrong["estimated_bad_records"] == {"missing_text": 60}
    assert "every one of the 60 sampled records would be dead-lettered" in err
    assert "source.text_field='body'" in err and wrong["warnings"]

    # Other chunking than the table's: the run would be refused, and so is the dry run, naming the key.
    for overrides in (["chunking.size=64"], ["chunking.size=64", "sink.mode=overwrite"]):
        capsys.readouterr()
        flags = [item for override in overrides for item in ("--set", override)]
        code = index_job.main(["--config", str(config), "--dry-run", *flags])
        err = capsys.readouterr().err
        if "sink.mode=overwrite" in overrides:  # a rebuild is what the user asked for: estimated, not refused
            assert code == 0, err
        else:
            assert code == 2 and "chunking.size: table 256, this job 64" in err


def test_dry_run_counts_the_records_a_run_would_dead_letter_in_the_sample_and_scales_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    records = [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}, {"id": "a", "text": "again"}, {"id": "c"}]
    (src / "part.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"source": {"uri": str(src), "format": "jsonl"}, "sink": {"uri": str(tmp_path)}}))
    estimate = _estimate(config, capsys)
    assert estimate["sampled_docs"] == 4 and estimate["estimated_docs"] == 4
    assert estimate["sampled_bad_records"] == {"duplicate_doc_id": 1, "missing_text": 1}
    assert estimate["estimated_bad_records"] == estimate["sampled_bad_records"], "the sample is the whole source"


def _dry_run_config(tmp_path: Path, src: Path, source_format: str) -> Path:
    config = tmp_path / f"{source_format}.yaml"
    source = {"uri": str(src), "format": source_format}
    config.write_text(yaml.safe_dump({"source": source, "sink": {"uri": str(tmp_path / "db")}}))
    return config


def test_dry_run_counts_documents_by_format_draws_its_sample_at_random_and_honours_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Parquet compresses short repetitive rows far below their text: bytes of text would undercount them.
    (tmp_path / "pq").mkdir()
    texts = [f"note {i % 50}: the quick brown fox jumps over the lazy dog" for i in range(20_000)]
    pq.write_table(pa.table({"id": [str(i) for i in range(20_000)], "text": texts}), tmp_path / "pq" / "a.parquet")
    (tmp_path / "pq" / "b.parquet").write_bytes(b"not parquet")  # the run dead-letters it; no crash here
    estimate = _estimate(_dry_run_config(tmp_path, tmp_path / "pq", "parquet"), capsys)
    assert estimate["sampled_bad_records"] == {"unreadable_source": 1}
    assert estimate["estimated_docs"] == pytest.approx(20_000, rel=0.01), "rows from the footer"
    assert estimate["estimated_docs_basis"] == "row counts of the sampled files' footers, per byte"

    # JSONL: documents per byte of the objects read to their end, not all sampled records over those bytes.
    (tmp_path / "jl").mkdir()
    for name, count in (("a", 5), ("b", 2000), ("c", 2000), ("d", 2000), ("e", 2000)):
        lines = [json.dumps({"id": f"{name}{i}", "text": f"record {i:05d} of {name}"}) + "\n" for i in range(count)]
        (tmp_path / "jl" / f"{name}.jsonl").write_text("".join(lines))
    estimate = _estimate(_dry_run_config(tmp_path, tmp_path / "jl", "jsonl"), capsys)
    assert estimate["estimated_docs"] == 8_005, "objects under 1 MiB: their lines counted whole"
    # Gzipped JSONL bigger than the counted prefix: records per byte as stored, not per byte of text.
    (tmp_path / "gz").mkdir()
    rng = random.Random(0)
    for name in ("a", "b"):
        lines = [json.dumps({"id": f"{name}{i}", "text": rng.randbytes(40).hex()}) + "\n" for i in range(60_000)]
        (tmp_path / "gz" / f"{name}.jsonl.gz").write_bytes(gzip.compress("".join(lines).encode()))
    assert all(path.stat().st_size > PREFIX_BYTES for path in (tmp_path / "gz").iterdir())
    estimate = _estimate(_dry_run_config(tmp_path, tmp_path / "gz", "jsonl"), capsys)
    assert estimate["estimated_docs"] == pytest.approx(120_000, rel=0.02)
    assert estimate["estimated_docs_basis"].startswith("records per stored byte in the sampled objects' first MiB")
    # Every record bad (no 'text' field) and no object read to its end: counted by their raw bytes, not as 0.
    (tmp_path / "jl-bad").mkdir()
    for name in ("a", "b"):
        lines = [json.dumps({"id": f"{name}{i}", "body": f"record {i:05d}"}) + "\n" for i in range(1000)]
        (tmp_path / "jl-bad" / f"{name}.jsonl").write_text("".join(lines))
    estimate = _estimate(_dry_run_config(tmp_path, tmp_path / "jl-bad", "jsonl"), capsys)
    assert estimate["estimated_docs"] == 2_000
    assert estimate["estimated_bad_records"]["missing_text"] == estimate["estimated_docs"]

    # Text: one document per file, whatever their sizes; every other file empty, which a sample of every n-th
    # file could miss entirely.
    (tmp_path / "txt").mkdir()
    for i in range(20):
        (tmp_path / "txt" / f"f{i:02d}.md").write_text("" if i % 2 == 0 else f"file {i} " * (1 if i < 19 else 20_000))
    text_config = _dry_run_config(tmp_path, tmp_path / "txt", "text")
    estimate = _estimate(text_config, capsys)
    assert estimate["estimated_docs"] == 20 and estimate["estimated_docs_basis"] == "one document per file"
    assert estimate["sampled_bad_records"].get("empty_text", 0) > 0, "the sample sees the empty files"
    assert sum(estimate["estimated_bad_records"].values()) < 20

    # --limit: the estimate is for the documents the trial would take.
    capsys.readouterr()
    assert index_job.main(["--config", str(text_config), "--dry-run", "--limit", "2"]) == 0
    limited = json.loads(capsys.readouterr().out)
    assert limited["estimated_docs"] == 2 and limited["estimated_tokens"] < estimate["estimated_tokens"]
