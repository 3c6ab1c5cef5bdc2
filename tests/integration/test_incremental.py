"""Incremental, resumable, idempotent jobs with real Ray and LanceDB (local files as the source)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pytest
import yaml

from jobs import deadletter as deadletter_job
from jobs import index as index_job
from jobs import maintain as maintain_job
from pipeline import runner, schema
from pipeline.deadletters import read_dead_letters
from pipeline.lock import TableLock

pytestmark = pytest.mark.integration

DOCS = ["lambda", "assert", "pass", "del", "global", "return"]
REPO = Path(__file__).resolve().parents[2]


def _write_corpus(folder: Path, docs: dict[str, str], extra_lines: list[str] = ()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": doc_id, "text": text}) for doc_id, text in docs.items()]
    (folder / "docs.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n")


def _config(tmp_path: Path, source: str, commit_rows: int = 20, **runtime: object) -> Path:
    config = {
        "source": {"uri": source, "format": "jsonl"},
        "chunking": {"strategy": "tokens", "size": 64, "overlap": 8},
        "model": {"dtype": "float32"},
        "batching": {"docs_per_block": 2},
        "sink": {"uri": str(tmp_path / "db"), "commit_rows": commit_rows},
        "runtime": {"summary_dir": str(tmp_path / "runs"), **runtime},
    }
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _last_summary(tmp_path: Path) -> dict:
    return json.loads(max((tmp_path / "runs").glob("*/summary.json")).read_text())


def _rows(tmp_path: Path, table: str = "chunks") -> pa.Table:
    import lancedb

    return lancedb.connect(str(tmp_path / "db")).open_table(table).to_arrow().sort_by(schema.CHUNK_ID)


def test_unchanged_costs_nothing_edit_reembeds_one_delete_removes_one(ray_session, tmp_path: Path, capsys) -> None:
    corpus = {doc: topics[doc] for doc in DOCS}
    _write_corpus(tmp_path / "src", corpus)
    config = str(_config(tmp_path, str(tmp_path / "src")))
    assert index_job.main(["--config", config]) == 0
    first = _rows(tmp_path)

    assert index_job.main(["--config", config]) == 0
    summary = _last_summary(tmp_path)
    counts = summary["counts"]
    assert (counts["docs_skipped_unchanged"], counts["forward_passes"], counts["document_tokens"]) == (6, 0, 0)
    assert summary["source"]["objects_skipped_unchanged"] == 1, "an unchanged file is not even read"
    assert counts["docs_read"] == 0
    assert _rows(tmp_path).equals(first)

    # Another text field makes an unchanged file yield other documents: it is read again, not skipped.
    assert index_job.main(["--config", config, "--set", "source.text_field=body"]) == 3, "nothing indexed"
    summary = _last_summary(tmp_path)
    assert summary["source"]["objects_skipped_unchanged"] == 0
    assert summary["counts"]["dead_lettered_by_reason"] == {"missing_text": len(DOCS)}
    assert _rows(tmp_path).equals(first), "dead-lettered documents keep their rows"

    # The setting put right, the unchanged file is read again (its manifest entry is the wrong run's) and its
    # letters are cleared: the dead-letter table shows what is broken now. Its documents are unchanged: no
    # forward pass.
    assert index_job.main(["--config", config]) == 0
    counts = _last_summary(tmp_path)["counts"]
    assert (counts["docs_read"], counts["docs_skipped_unchanged"], counts["forward_passes"]) == (6, 6, 0)
    assert read_dead_letters(str(tmp_path / "db"), "chunks").num_rows == 0
    capsys.readouterr()

    corpus["assert"] = topics["assert"] + "\n\nAn added closing sentence changes this document."
    del corpus["pass"]
    _write_corpus(tmp_path / "src", corpus)
    assert index_job.main(["--config", config]) == 0
    summary = _last_summary(tmp_path)
    counts = summary["counts"]
    assert summary["source"]["objects_skipped_unchanged"] == 0
    assert (counts["docs_written"], counts["docs_skipped_unchanged"], counts["docs_deleted"]) == (1, 4, 1)
    assert "index: removed 1 document gone from the source (sink.delete_missing)" in capsys.readouterr().err
    assert counts["forward_passes"] > 0
    after = _rows(tmp_path)
    assert set(after[schema.DOC_ID].to_pylist()) == set(corpus)
    assert len(set(after[schema.CHUNK_ID].to_pylist())) == after.num_rows
    edited = [r for r in after.to_pylist() if r[schema.DOC_ID] == "assert"]
    assert "".join(r[schema.TEXT] for r in edited if r[schema.CHUNK_INDEX] == len(edited) - 1).endswith("document.")
    untouched = first.filter(pa.compute.equal(first[schema.DOC_ID], "lambda"))
    assert after.filter(pa.compute.equal(after[schema.DOC_ID], "lambda")).equals(untouched)


def test_an_overwrite_replaces_the_table_in_one_commit_and_never_with_nothing(
    ray_session, tmp_path: Path, capsys
) -> None:
    import lancedb

    from pipeline.manifest import ObjectManifest

    _write_corpus(tmp_path / "src", {doc: topics[doc] for doc in DOCS[:3]})
    config = str(_config(tmp_path, str(tmp_path / "src"), commit_rows=5))
    assert index_job.main(["--config", config]) == 0
    first, manifest = _rows(tmp_path), ObjectManifest(str(tmp_path / "db"), "chunks")
    recorded = manifest.load()
    version = lancedb.connect(str(tmp_path / "db")).open_table("chunks").version

    overwrite = ["--config", config, "--set", "sink.mode=overwrite"]
    assert index_job.main([*overwrite, "--set", "source.text_field=body"]) == 3, "every record dead-lettered"
    assert f"(an overwrite of its {first.num_rows} rows, replaced when the run is done)" in capsys.readouterr().err
    table = _last_summary(tmp_path)["table"]
    assert (table["overwrite_published"], table["rows"]) == (False, first.num_rows)
    assert _rows(tmp_path).equals(first) and manifest.load() == recorded, "table and manifest as they were"
    assert read_dead_letters(str(tmp_path / "db"), "chunks").num_rows == 0, "no letters about unpublished rows"

    _write_corpus(tmp_path / "src", {doc: topics[doc] for doc in DOCS[3:]})
    assert index_job.main(overwrite) == 0
    summary = _last_summary(tmp_path)
    assert summary["table"]["commits"] > 1 and summary["table"]["overwrite_published"]
    assert summary["table"]["version"] == version + 1, "many blocks staged, one commit"
    after = _rows(tmp_path)
    assert set(after[schema.DOC_ID].to_pylist()) == set(DOCS[3:])
    assert len(set(after[schema.CHUNK_ID].to_pylist())) == after.num_rows
    assert [record["run_id"] for record in manifest.load().values()] == [summary["run_id"]]


def test_an_object_removed_from_the_source_leaves_no_rows_and_no_manifest_entry(
    ray_session, tmp_path: Path, capsys
) -> None:
    from pipeline.manifest import ObjectManifest

    source = tmp_path / "src"
    _write_corpus(source / "keep", {"lambda": topics["lambda"]})
    _write_corpus(source / "drop", {"pass": topics["pass"]})
    _write_corpus(source / "broken", {"del": topics["del"]}, extra_lines=["{not json"])
    config = str(_config(tmp_path, str(source)))
    assert index_job.main(["--config", config]) == 0
    manifest = ObjectManifest(str(tmp_path / "db"), "chunks")
    # broken's letter (invalid JSON) would come back from every read of it as it is: it is recorded too.
    assert sorted(Path(uri).parent.name for uri in manifest.load()) == ["broken", "drop", "keep"]

    def dead_letter_objects() -> list[str]:
        return sorted(
            {
                Path(uri).parent.name
                for uri in read_dead_letters(str(tmp_path / "db"), "chunks")[schema.SOURCE_URI].to_pylist()
            }
        )

    assert dead_letter_objects() == ["broken"]
    # Nothing changed: a broken record costs nothing either; its letter stays, and the run says so.
    capsys.readouterr()
    assert index_job.main(["--config", config]) == 0
    summary = _last_summary(tmp_path)
    assert (summary["source"]["objects_skipped_unchanged"], summary["source"]["dead_letters_kept"]) == (3, 1)
    assert (summary["counts"]["docs_read"], summary["counts"]["docs_dead_lettered"]) == (0, 0)
    assert "unchanged objects not read again keep their 1 dead letter in the table" in capsys.readouterr().err
    assert dead_letter_objects() == ["broken"]

    (source / "drop" / "docs.jsonl").unlink()
    (source / "broken" / "docs.jsonl").unlink()
    keep_missing = yaml.safe_load(Path(config).read_text())
    keep_missing["sink"]["delete_missing"] = False
    (tmp_path / "keep-missing.yaml").write_text(yaml.safe_dump(keep_missing))
    assert index_job.main(["--config", str(tmp_path / "keep-missing.yaml")]) == 0
    assert _last_summary(tmp_path)["source"]["objects_removed"] == 0
    assert sorted(Path(uri).parent.name for uri in manifest.load()) == ["broken", "drop", "keep"], "delete_missing"
    assert dead_letter_objects() == ["broken"]

    assert index_job.main(["--config", config]) == 0
    summary = _last_summary(tmp_path)
    assert summary["source"]["objects_removed"] == 2
    assert summary["counts"]["docs_deleted"] == 2
    assert summary["table"]["rows"] == _rows(tmp_path).num_rows, "the table as it is after the deletions"
    assert [Path(uri).parent.name for uri in manifest.load()] == ["keep"]
    assert dead_letter_objects() == [], "dead letters of objects gone from the source go with them"
    assert set(_rows(tmp_path)[schema.DOC_ID].to_pylist()) == {"lambda"}


def test_an_id_in_two_objects_is_kept_once_and_reported_on_every_run(ray_session, tmp_path: Path, capsys) -> None:
    source = tmp_path / "src"
    _write_corpus(source / "a", {"lambda": topics["lambda"], "pass": topics["pass"]})
    config = str(_config(tmp_path, str(source)))
    assert index_job.main(["--config", config]) == 0
    first = _rows(tmp_path)
    _write_corpus(source / "b", {"pass": topics["pass"]})  # the same id (and text) in another object

    def run_and_check(job: object, *args: str) -> tuple[dict, pa.Table]:
        assert job.main([*args, "--config", config]) == 0
        counts, rows = _last_summary(tmp_path)["counts"], _rows(tmp_path)
        assert counts["dead_lettered_by_reason"] == {"duplicate_doc_id": 1}
        assert counts["docs_in"] == counts["docs_written"] + counts["docs_skipped_unchanged"] + 1
        assert sorted(set(rows[schema.DOC_ID].to_pylist())) == ["lambda", "pass"]
        assert len(set(rows[schema.CHUNK_ID].to_pylist())) == rows.num_rows
        assert len({r[schema.SOURCE_URI] for r in rows.to_pylist() if r[schema.DOC_ID] == "pass"}) == 1
        advice = (
            "`lateline index` over the whole source" if job is deadletter_job else "until one copy of each id is gone"
        )
        assert "1 copy dropped as duplicate_doc_id" in (err := capsys.readouterr().err) and advice in err
        return counts, rows

    # a is skipped as unchanged: b's copy must not replace the one the table holds from a, on any run.
    for _ in range(2):
        counts, rows = run_and_check(index_job)
        assert counts["docs_written"] == 0 and rows.equals(first)
    [letter] = read_dead_letters(str(tmp_path / "db"), "chunks").to_pylist()
    assert (Path(letter["source_uri"]).parent.name, letter["doc_id"]) == ("b", "pass")
    assert letter["detail"].startswith("line 1: this document id appeared more than once"), "names the copy's line"
    # Replaying b (its dead letter) sees only b: it cannot tell a move from a duplicate, so a's copy stays.
    counts, rows = run_and_check(deadletter_job, "replay")
    assert counts["docs_written"] == 0 and rows.equals(first)
    # a changed (another document in it): a's copy of "pass" comes through as unchanged and b's is embedded;
    # whichever reaches the driver second is the duplicate.
    _write_corpus(source / "a", {"lambda": topics["lambda"] + " An added sentence.", "pass": topics["pass"]})
    run_and_check(index_job)


def test_a_bad_copy_of_a_moved_document_keeps_its_rows_while_its_object_is_skipped(ray_session, tmp_path: Path) -> None:
    source = tmp_path / "src"
    _write_corpus(source / "a", {"lambda": topics["lambda"], "pass": topics["pass"]})
    config = str(_config(tmp_path, str(source)))
    assert index_job.main(["--config", config]) == 0
    pass_rows = _rows(tmp_path).filter(pa.compute.equal(_rows(tmp_path)[schema.DOC_ID], "pass"))
    # "pass" moves to b and is broken there: its stored rows (from a) stay, as for any dead-lettered document.
    _write_corpus(source / "a", {"lambda": topics["lambda"]})
    _write_corpus(source / "b", {}, extra_lines=[json.dumps({"id": "pass", "text": ""})])
    for run in ("b read", "b skipped as unchanged, a read again"):
        assert index_job.main(["--config", config]) == 0, run
        summary = _last_summary(tmp_path)
        assert summary["counts"]["docs_deleted"] == 0, run
        rows = _rows(tmp_path)
        assert rows.filter(pa.compute.equal(rows[schema.DOC_ID], "pass")).equals(pass_rows), run
    assert (summary["source"]["objects_skipped_unchanged"], summary["source"]["dead_letters_kept"]) == (1, 1)


def test_dead_letters_are_stored_listed_and_replayed(ray_session, tmp_path: Path, capsys) -> None:
    good = {doc: topics[doc] for doc in DOCS[:3]}
    bad = ['{"id": "broken", "text": "oops', '{"id": "fixme", "title": "no text yet"}']
    _write_corpus(tmp_path / "src", good, bad)
    config = str(_config(tmp_path, str(tmp_path / "src"), max_dead_letters=1))
    assert index_job.main(["--config", config]) == 3, "two dead letters exceed a budget of one"
    assert set(_rows(tmp_path)[schema.DOC_ID].to_pylist()) == set(good), "good documents are committed anyway"
    assert index_job.main(["--config", config]) == 3, "over the budget, the object is read again: fails again"
    assert _last_summary(tmp_path)["source"]["objects_skipped_unchanged"] == 0
    letters = read_dead_letters(str(tmp_path / "db"), "chunks").to_pylist()
    assert sorted(row["reason"] for row in letters) == ["invalid_json", "missing_text"]
    assert {row["detail"].split(":")[0] for row in letters} == {"line 4", "line 5"}
    assert any(row["snippet"].startswith('{"id": "broken"') for row in letters)

    capsys.readouterr()
    assert deadletter_job.main(["list", "--config", config]) == 0
    listed = capsys.readouterr().out
    assert "invalid_json" in listed and "missing_text" in listed and "fixme" in listed

    fixed = [json.dumps({"id": "fixme", "text": topics["global"]}), json.dumps({"id": "broken", "text": "Fixed."})]
    _write_corpus(tmp_path / "src", good, fixed)
    assert deadletter_job.main(["replay", "--config", config]) == 0
    summary = _last_summary(tmp_path)
    assert summary["job"] == "replay"
    assert (summary["counts"]["docs_written"], summary["counts"]["docs_skipped_unchanged"]) == (2, 3)
    assert set(_rows(tmp_path)[schema.DOC_ID].to_pylist()) == {*good, "fixme", "broken"}
    assert read_dead_letters(str(tmp_path / "db"), "chunks").num_rows == 0


def test_a_second_writer_is_refused_while_the_first_holds_the_table(
    ray_session, tmp_path: Path, capsys, monkeypatch
) -> None:
    _write_corpus(tmp_path / "src", {"lambda": topics["lambda"]})
    config = str(_config(tmp_path, str(tmp_path / "src")))

    def not_before_the_lock(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was described and the source listed before the lock was checked")

    with TableLock(str(tmp_path / "db"), "chunks", "run-holding-it"), monkeypatch.context() as patched:
        # Refused at once: describing the model and listing the source took 5-15 s before the lock was checked.
        patched.setattr(runner, "prepare", not_before_the_lock)
        assert index_job.main(["--config", config]) == 4
        assert "run-holding-it" in capsys.readouterr().err
    assert index_job.main(["--config", config]) == 0


def test_maintain_compacts_and_builds_indexes(ray_session, tmp_path: Path, capsys) -> None:
    _write_corpus(tmp_path / "src", {doc: topics[doc] for doc in [*DOCS, "compound"]})
    config = str(_config(tmp_path, str(tmp_path / "src")))
    assert index_job.main(["--config", config, "--set", "sink.commit_rows=10"]) == 0
    capsys.readouterr()
    code = maintain_job.main(
        ["--config", config, "--set", "maintain.retain_versions_hours=0", "--set", "maintain.ann_min_rows=200"]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["before"]["fragments"] > 1
    assert report["after"]["fragments"] == 1 and report["after"]["versions"] == 1
    assert report["actions"][0] == f"compacted {report['before']['fragments']} fragments into 1"
    assert report["after"]["rows"] == report["before"]["rows"] >= 200
    assert {"chunk_id_idx", "text_idx", "vector_idx"} <= set(report["after"]["indexes"])

    # Searching through the index gives the exact cosine scores and the exact top k.
    from pipeline.config import load_config
    from pipeline.embedding import embed_queries
    from pipeline.model import load_model
    from pipeline.search import search

    job = load_config(Path(config))
    stored = _rows(tmp_path)
    vectors = np.stack(stored[schema.VECTOR].to_numpy(zero_copy_only=False))
    queries = ["how do I catch an exception", "return a value from a function", "delete a name"]
    model = load_model(job.model)
    for query, hits, [vector] in zip(queries, search(job, queries, k=5), [embed_queries(model, [q]) for q in queries]):
        exact = vectors @ vector / np.linalg.norm(vectors, axis=1) / np.linalg.norm(vector)
        top = np.argsort(-exact)[:5]
        assert [h.chunk_id for h in hits] == [stored[schema.CHUNK_ID][i].as_py() for i in top], query
        assert [h.score for h in hits] == pytest.approx(exact[top].tolist(), abs=1e-4), query


def _ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def s3_backfill_corpus(s3fs_client) -> str:
    s3fs_client.mkdir("backfill")
    for part, docs in enumerate([DOCS[:3], DOCS[3:], ["compound"]]):
        body = "\n".join(json.dumps({"id": d, "text": topics[d]}) for d in docs) + "\n"
        s3fs_client.pipe(f"backfill/in/part-{part}.jsonl", body.encode())
    return "s3://backfill/in/"


def _commits(db: Path) -> int:
    return len(list((db / "chunks.lance" / "_versions").glob("*.manifest")))


def _backfill(workdir: Path, config: Path, kill_after_commits: int | None = None) -> int:
    """Run ``lateline backfill`` as its own driver on the test's Ray. With ``kill_after_commits``, SIGKILL it
    as soon as the table has that many commits (0: as soon as it holds the table lock)."""
    env = {**os.environ, "RAY_ADDRESS": _ray_address()}
    command = [sys.executable, "-m", "jobs.backfill", "--config", str(config)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while kill_after_commits is not None and process.poll() is None and time.monotonic() < deadline:
        started = (workdir / "db" / "chunks.lateline-lock").exists()
        if started and _commits(workdir / "db") >= kill_after_commits:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return -9
        time.sleep(0.05)
    return process.wait(timeout=max(1.0, deadline - time.monotonic()))


@pytest.fixture(scope="module")
def clean_backfill(s3_backfill_corpus: str, ray_session, tmp_path_factory) -> pa.Table:
    workdir = tmp_path_factory.mktemp("clean")
    assert _backfill(workdir, _config(workdir, s3_backfill_corpus, commit_rows=1)) == 0
    assert _commits(workdir / "db") >= 3, "the corpus must take several commits for kills to land between them"
    return _rows(workdir)


@pytest.mark.parametrize("seed", [3, 11])
def test_backfill_killed_with_sigkill_then_rerun_equals_a_clean_run(
    s3_backfill_corpus: str, clean_backfill: pa.Table, tmp_path_factory, seed: int
) -> None:
    kill_points = sorted(np.random.default_rng(seed).choice(3, size=2, replace=False).tolist())
    workdir = tmp_path_factory.mktemp(f"killed-{seed}")
    config = _config(workdir, s3_backfill_corpus, commit_rows=1)
    for kill_point in kill_points:  # crash, then crash the resumed run too
        assert _backfill(workdir, config, kill_after_commits=kill_point) == -9
    assert _backfill(workdir, config) == 0
    resumed = _rows(workdir)
    assert resumed[schema.CHUNK_ID].to_pylist() == clean_backfill[schema.CHUNK_ID].to_pylist()
    assert len(set(resumed[schema.CHUNK_ID].to_pylist())) == resumed.num_rows
    np.testing.assert_allclose(
        np.stack(resumed[schema.VECTOR].to_numpy(zero_copy_only=False)),
        np.stack(clean_backfill[schema.VECTOR].to_numpy(zero_copy_only=False)),
        atol=1e-5,
    )
    rerun = _last_summary(workdir)["counts"]
    assert rerun["docs_written"] + rerun["docs_skipped_unchanged"] == len(DOCS) + 1
    # A killed run left its running summary; the run that took over its lock marked it interrupted.
    statuses = [json.loads(p.read_text())["status"] for p in sorted((workdir / "runs").glob("*/summary.json"))]
    assert statuses[-1] == "ok" and set(statuses[:-1]) == {"interrupted"}, statuses
    if kill_points[-1] > 0:
        assert rerun["docs_skipped_unchanged"] > 0, "what was committed before the kill is not embedded again"


def test_maintain_can_run_after_each_job(ray_session, tmp_path: Path) -> None:
    _write_corpus(tmp_path / "src", {doc: topics[doc] for doc in DOCS[:2]})
    config = str(_config(tmp_path, str(tmp_path / "src")))
    assert index_job.main(["--config", config, "--set", "maintain.after_run=true"]) == 0
    import lancedb

    table = lancedb.connect(str(tmp_path / "db")).open_table("chunks")
    assert {"chunk_id_idx", "text_idx"} <= {index.name for index in table.list_indices()}
    assert "vector_idx" not in {index.name for index in table.list_indices()}
    summary = _last_summary(tmp_path)
    assert any(action.startswith("no vector index yet:") for action in summary["maintain"]["actions"]), "said why"
    assert not (tmp_path / "db" / "chunks.lateline-lock").exists()


def test_a_backfill_outside_source_uri_warns_that_an_index_removes_it(ray_session, tmp_path: Path, capsys) -> None:
    from jobs import backfill as backfill_job

    _write_corpus(tmp_path / "src", {"lambda": topics["lambda"]})
    _write_corpus(tmp_path / "extra", {"pass": topics["pass"]})
    config = str(_config(tmp_path, str(tmp_path / "src")))
    assert index_job.main(["--config", config]) == 0
    capsys.readouterr()
    assert backfill_job.main(["--config", config, str(tmp_path / "extra" / "docs.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "warning: this backfill reads 1 object outside source.uri" in err
    assert "the next `lateline index` removes their documents (sink.delete_missing)" in err
    assert set(_rows(tmp_path)[schema.DOC_ID].to_pylist()) == {"lambda", "pass"}
    source = _last_summary(tmp_path)["source"]
    assert source["given_objects"] == [f"file://{tmp_path}/extra/docs.jsonl"], "what the backfill was given"

    assert index_job.main(["--config", config]) == 0
    assert _last_summary(tmp_path)["source"]["given_objects"] is None, "an index reads source.uri's listing"
    assert "index: removed 1 document gone from the source (sink.delete_missing)" in capsys.readouterr().err
    assert set(_rows(tmp_path)[schema.DOC_ID].to_pylist()) == {"lambda"}
