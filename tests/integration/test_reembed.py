"""Model upgrades with real Ray, LanceDB and two real models of the same dimension: re-embed from stored
chunks, promote / rollback through the alias, never two models' vectors in one table, float16 storage."""

from __future__ import annotations

import json
from pathlib import Path
from pydoc_data.topics import topics

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from jobs import compare as compare_job
from jobs import index as index_job
from jobs import promote as promote_job
from jobs import reembed as reembed_job
from jobs import retire as retire_job
from jobs import rollback as rollback_job
from jobs import search as search_job
from pipeline import schema
from pipeline.aliases import alias_state, follow
from pipeline.config import load_config
from pipeline.lock import TableLock
from pipeline.model import resolve_model_path
from pipeline.runner import run_index
from pipeline.search import search
from pipeline.sink import TableMismatch

pytestmark = pytest.mark.integration

DOCS = ["lambda", "assert", "pass", "del", "global", "return", "break", "continue"]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    """A second real model: all-MiniLM-L6-v2 with every weight nudged (same tokenizer, dimension, pooling)."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    folder = tmp_path_factory.mktemp("models") / "minilm-nudged"
    model = AutoModel.from_pretrained(source)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1 + 0.05 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    lines = [json.dumps({"id": name, "text": topics[name][:2500]}) for name in DOCS]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _config(tmp_path: Path, corpus: Path, model: str | None = None, **sink: object) -> Path:
    config = {
        "source": {"uri": str(corpus), "format": "jsonl"},
        "chunking": {"strategy": "sentences", "size": 64},
        "model": {"dtype": "float32", **({"name_or_path": model} if model else {})},
        "batching": {"docs_per_block": 4},
        "sink": {"uri": str(tmp_path / "db"), "commit_rows": 10, **sink},
        "runtime": {"summary_dir": str(tmp_path / "runs")},
    }
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _table(tmp_path: Path, name: str) -> pa.Table:
    return lancedb.connect(str(tmp_path / "db")).open_table(name).to_arrow().sort_by(schema.CHUNK_ID)


def _summary(tmp_path: Path) -> dict:
    return json.loads(max((tmp_path / "runs").glob("*/summary.json")).read_text())


def test_reembed_promote_rollback_and_never_two_models_in_a_table(
    ray_session, tmp_path: Path, corpus: Path, other_model: str, capsys
) -> None:
    old_config, new_config = _config(tmp_path, corpus), _config(tmp_path, corpus, other_model)
    assert index_job.main(["--config", str(old_config)]) == 0
    old = _table(tmp_path, "chunks")

    # An interrupted re-embed (here: stopped after 3 documents) resumes without redoing them.
    assert reembed_job.main(["--config", str(new_config), "--limit", "3"]) == 0
    new_name = _summary(tmp_path)["table"]["name"]
    assert new_name.startswith("chunks__minilm-nudged-")
    # Before any promote, the table named like the alias is the live one: never a re-embed's target.
    capsys.readouterr()
    assert reembed_job.main(["--config", str(old_config), "--from", new_name, "--to", "chunks"]) == 2
    assert "--to 'chunks' is the table alias 'chunks' serves" in capsys.readouterr().err
    assert reembed_job.main(["--config", str(new_config)]) == 0
    resumed = _summary(tmp_path)["counts"]
    assert resumed["docs_skipped_unchanged"] == 3 and resumed["docs_written"] == len(DOCS) - 3
    # Run again once complete, it finds every document there with these settings before starting Ray.
    version = lancedb.connect(str(tmp_path / "db")).open_table(new_name).version
    capsys.readouterr()
    assert reembed_job.main(["--config", str(new_config)]) == 0
    assert "nothing to embed (Ray not started)" in capsys.readouterr().err
    again = _summary(tmp_path)
    assert again["counts"]["docs_skipped_unchanged"] == len(DOCS) and again["counts"]["docs_written"] == 0
    assert again["table"]["name"] == new_name and again["counts"]["docs_deleted"] == 0
    assert lancedb.connect(str(tmp_path / "db")).open_table(new_name).version == version, "nothing written"

    new = _table(tmp_path, new_name)
    assert len(set(old[schema.MODEL].to_pylist())) == 1 and len(set(new[schema.MODEL].to_pylist())) == 1
    assert old[schema.MODEL][0] != new[schema.MODEL][0]
    # Same chunker: the stored chunks are kept (ids, offsets, text); only the vectors differ.
    for column in (schema.CHUNK_ID, schema.CHAR_START, schema.CHAR_END, schema.TEXT, schema.CONTENT_SHA256):
        assert old[column].to_pylist() == new[column].to_pylist()
    cosines = (
        np.stack(old[schema.VECTOR].to_numpy(zero_copy_only=False))
        * np.stack(new[schema.VECTOR].to_numpy(zero_copy_only=False))
    ).sum(axis=1)
    assert cosines.max() < 0.9999  # really another model's vectors

    # Before the promote, searches (with the old config) still use the old table.
    assert follow(load_config(old_config))[0].sink.table == "chunks"
    assert compare_job.main(["--config", str(new_config), "--sample", "5", "--out", str(tmp_path / "cmp")]) == 0
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["rows"]["old"] == report["rows"]["new"] and report["documents"]["missing_in_new"] == 0
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert promote_job.main(["--config", str(new_config)]) == 0
    capsys.readouterr()
    # After the promote the alias serves the new table: comparing it with itself is refused, and a rerun of
    # the re-embed has nothing to do (a success: a schedule that runs it again is not failed).
    assert compare_job.main(["--config", str(new_config), "--sample", "5", "--out", str(tmp_path / "cmp2")]) == 2
    assert "compared with itself" in capsys.readouterr().err
    assert reembed_job.main(["--config", str(new_config)]) == 0
    assert "nothing to re-embed" in capsys.readouterr().err
    followed, _ = follow(load_config(old_config))
    assert followed.sink.table == new_name and followed.model.name_or_path == other_model
    query = "anonymous functions created with lambda"
    [hits_new] = search(followed, [query], k=3)
    [direct] = search(load_config(new_config, [f"sink.table={new_name}"]), [query], k=3)
    assert [h.chunk_id for h in hits_new] == [h.chunk_id for h in direct]

    # A scheduled index job with the old config follows the alias: nothing changed, so nothing is embedded,
    # and the old model never writes into the new table.
    assert index_job.main(["--config", str(old_config)]) == 0
    after = _summary(tmp_path)
    assert after["table"]["name"] == new_name and after["counts"]["forward_passes"] == 0
    assert after["counts"]["docs_skipped_unchanged"] == len(DOCS)
    assert after["source"]["objects_skipped_unchanged"] == 1  # the manifest was carried over: not even read
    assert set(_table(tmp_path, new_name)[schema.MODEL].to_pylist()) == {new[schema.MODEL][0].as_py()}

    assert rollback_job.main(["--config", str(old_config)]) == 0
    followed, _ = follow(load_config(old_config))
    assert followed.sink.table == "chunks" and followed.model.name_or_path != other_model
    state = alias_state(lancedb.connect(str(tmp_path / "db")), "chunks")
    assert [row["action"] for row in state.history] == ["initial", "promote", "rollback"]
    assert rollback_job.main(["--config", str(old_config)]) == 2  # nothing earlier to roll back to
    assert "no earlier table" in capsys.readouterr().err
    # Re-embedding another table into the one the alias serves would replace what searches use: refused.
    assert reembed_job.main(["--config", str(old_config), "--from", new_name, "--to", "chunks"]) == 2
    assert f"--to 'chunks' is the table alias 'chunks' serves, and this re-embeds {new_name!r}" in (
        capsys.readouterr().err
    )
    # Rolled back to the first table, the alias still hands its model to a job configured with the new one.
    followed, _ = follow(load_config(new_config))
    assert followed.sink.table == "chunks" and followed.model.name_or_path != other_model

    before = lancedb.connect(str(tmp_path / "db")).table_names()
    capsys.readouterr()
    assert retire_job.main(["--config", str(old_config), "--unserved", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["would_drop"] == [new_name]
    assert lancedb.connect(str(tmp_path / "db")).table_names() == before, "a dry run drops nothing"
    assert retire_job.main(["--config", str(old_config), "--unserved"]) == 0
    assert lancedb.connect(str(tmp_path / "db")).table_names() == ["chunks", "chunks__alias", "chunks__objects"]
    assert retire_job.main(["--config", str(old_config), "--table", "chunks"]) == 2  # the serving table
    capsys.readouterr()
    # Nothing left to retire is a success, so a scheduled clean-up may run it every time.
    assert retire_job.main(["--config", str(old_config), "--unserved"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["dropped"] == [] and "nothing to retire" in out.err
    # ... but a mistyped table is not "nothing to retire".
    assert retire_job.main(["--config", str(old_config), "--unserved", "--set", "sink.table=chunkz"]) == 2
    assert "no table 'chunkz'" in (err := capsys.readouterr().err) and "(did you mean 'chunks'?)" in err


def test_writing_or_searching_with_another_model_is_refused_with_how_to_reembed(
    ray_session, tmp_path: Path, corpus: Path, other_model: str, capsys
) -> None:
    assert index_job.main(["--config", str(_config(tmp_path, corpus))]) == 0
    wrong = _config(tmp_path, corpus, other_model)
    with pytest.raises(TableMismatch) as refused:
        run_index(load_config(wrong))
    message = str(refused.value)
    assert "holds vectors of model sentence-transformers/all-MiniLM-L6-v2@" in message and "minilm-nudged@" in message
    assert "lateline reembed --config" in message
    assert index_job.main(["--config", str(wrong)]) == 2
    assert "lateline reembed" in capsys.readouterr().err
    with pytest.raises(TableMismatch, match="lateline reembed"):
        search(load_config(wrong), ["lambda"], k=1)


def test_promote_refuses_an_incomplete_table(ray_session, tmp_path: Path, corpus: Path, other_model: str, capsys):
    old_config, new_config = _config(tmp_path, corpus), _config(tmp_path, corpus, other_model)
    assert index_job.main(["--config", str(old_config)]) == 0
    assert reembed_job.main(["--config", str(new_config), "--limit", "2"]) == 0
    assert promote_job.main(["--config", str(new_config)]) == 2
    assert f"lacks {len(DOCS) - 2} of the {len(DOCS)} documents" in capsys.readouterr().err
    assert follow(load_config(old_config))[0].sink.table == "chunks"
    new_name = _summary(tmp_path)["table"]["name"]
    with TableLock(str(tmp_path / "db"), new_name, "a-running-reembed"):  # a job still writing it
        assert promote_job.main(["--config", str(new_config), "--force"]) == 4
        capsys.readouterr()
        compare_job.main(["--config", str(new_config), "--sample", "3", "--out", str(tmp_path / "cmp")])
        assert f"compare: {new_name!r} is being written by run a-running-reembed" in capsys.readouterr().err
    assert promote_job.main(["--config", str(new_config), "--force"]) == 0
    assert follow(load_config(old_config))[0].sink.table == new_name
    # An alias serving a table someone dropped is an error that says what to do, not a silent new table.
    lancedb.connect(str(tmp_path / "db")).drop_table(new_name)
    capsys.readouterr()
    assert search_job.main(["--config", str(old_config), "lambda"]) == 2
    assert "no longer exists" in capsys.readouterr().err
    assert rollback_job.main(["--config", str(old_config)]) == 0
    assert search_job.main(["--config", str(old_config), "lambda"]) == 0


def test_float16_storage_halves_the_vectors_and_search_still_works(ray_session, tmp_path: Path, corpus: Path):
    full = _config(tmp_path, corpus, table="full")
    half = _config(tmp_path, corpus, table="half", vector_dtype="float16")
    assert index_job.main(["--config", str(full)]) == 0 and index_job.main(["--config", str(half)]) == 0
    full_rows, half_rows = _table(tmp_path, "full"), _table(tmp_path, "half")
    assert half_rows.schema.field(schema.VECTOR).type == pa.list_(pa.float16(), 384)
    a = np.stack(full_rows[schema.VECTOR].to_numpy(zero_copy_only=False)).astype(np.float32)
    b = np.stack(half_rows[schema.VECTOR].to_numpy(zero_copy_only=False)).astype(np.float32)
    assert ((a * b).sum(axis=1) / np.linalg.norm(b, axis=1)).min() >= 0.9999
    query = "the assert statement"
    [top_full] = search(load_config(full), [query], k=3)
    [top_half] = search(load_config(half), [query], k=3)
    assert [h.chunk_id for h in top_half] == [h.chunk_id for h in top_full]
    # Appending float32 vectors to the float16 table is refused, not silently cast.
    with pytest.raises(TableMismatch, match="float16"):
        run_index(load_config(half, ["sink.vector_dtype=float32"]))
