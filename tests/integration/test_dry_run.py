"""``lateline index --dry-run``: an estimate from a sample, nothing written; after a run it knows what is unchanged
and uses that run's measured throughput."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from jobs import index as index_job
from pipeline.dryrun import STARTUP_GUESS_S

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

    second = _estimate(config, capsys)
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
