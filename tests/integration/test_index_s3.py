"""End to end with real parts: S3 on loopback -> Ray -> LanceDB in tmp, then search.

The corpus is real prose (Python's help topics) with bad records mixed in.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs import index as index_job
from jobs import search as search_job
from pipeline import schema
from pipeline.config import parse_config
from pipeline.deadletters import read_dead_letters
from pipeline.search import search

pytestmark = pytest.mark.integration

DOC_IDS = ["lambda", "import", "debugger", "assert", "floating", "formatstrings", "dict", "while", "pass", "with"]
BAD_LINES = [
    b'{"id": "broken", "text": "unterminated',  # invalid_json
    b'{"id": "no-text", "title": "x"}',  # missing_text
    b'{"id": "blank", "text": "   "}',  # empty_text
    b'{"id": "number", "text": 42}',  # non_string_text
    b'{"text": "no id here"}',  # missing_id
    b'\xff\xfe{"id": "latin"}',  # invalid_utf8
]


def _config(tmp_path: Path, uri: str, fmt: str, **overrides: object) -> Path:
    config = {
        "source": {"uri": uri, "format": fmt, "metadata_fields": ["title"] if fmt != "text" else []},
        "chunking": {"strategy": "sentences", "size": 96},
        "model": {"dtype": "float32"},
        "sink": {"uri": str(tmp_path / "lancedb"), "table": "chunks", "commit_rows": 50},
        "batching": {"docs_per_block": 4, "max_tokens": 4096},
        "runtime": {"summary_dir": str(tmp_path / "runs"), "progress_seconds": 1},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        config[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def jsonl_corpus(s3fs_client) -> str:
    s3fs_client.mkdir("corpus-jsonl")
    good = [json.dumps({"id": d, "title": d, "text": topics[d]}).encode() for d in DOC_IDS]
    first, second = good[:6] + BAD_LINES[:3], BAD_LINES[3:] + good[6:]
    s3fs_client.pipe("corpus-jsonl/docs/part-0.jsonl", b"\n".join(first) + b"\n")
    s3fs_client.pipe("corpus-jsonl/docs/part-1.jsonl", b"\n\n".join(second) + b"\n")
    s3fs_client.pipe("corpus-jsonl/docs/README.txt", b"not a jsonl file: ignored by the include patterns")
    return "s3://corpus-jsonl/docs/"


@pytest.fixture(scope="module")
def indexed(jsonl_corpus: str, ray_session, tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("jsonl")
    config_path = _config(tmp_path, jsonl_corpus, "jsonl")
    assert index_job.main(["--config", str(config_path)]) == 0
    [summary_path] = (tmp_path / "runs").glob("*/summary.json")
    config = parse_config(yaml.safe_load(config_path.read_text()))
    return {"config": config, "config_path": config_path, "summary": json.loads(summary_path.read_text())}


def _table(config) -> pa.Table:
    import lancedb

    return lancedb.connect(config.sink.uri).open_table(config.sink.table).to_arrow()


def test_every_good_document_is_indexed_and_every_bad_one_reported(indexed: dict) -> None:
    table, summary = _table(indexed["config"]), indexed["summary"]
    assert set(table[schema.DOC_ID].to_pylist()) == set(DOC_IDS)
    counts = summary["counts"]
    assert counts["docs_in"] == counts["docs_written"] + counts["docs_dead_lettered"] == len(DOC_IDS) + len(BAD_LINES)
    assert counts["dead_lettered_by_reason"] == {
        "invalid_json": 1,
        "missing_text": 1,
        "empty_text": 1,
        "non_string_text": 1,
        "missing_id": 1,
        "invalid_utf8": 1,
    }
    assert all(example["detail"].startswith("line ") for example in summary["dead_letter_examples"])
    letters = read_dead_letters(indexed["config"].sink.uri, "chunks").to_pylist()
    assert sorted(row["reason"] for row in letters) == sorted(counts["dead_lettered_by_reason"])
    assert all(row["source_uri"].startswith("s3://corpus-jsonl/docs/part-") and row["snippet"] for row in letters)
    assert summary["table"]["rows"] == table.num_rows == counts["chunks_out"]
    assert summary["table"]["commits"] > 1, "commits must be bounded (commit_rows=50)"


def test_the_summary_times_each_phase_of_the_run(indexed: dict) -> None:
    times = indexed["summary"]["time_s"]
    assert set(times) == {"wall", "ray_start", "first_output", "model_load", "read", "chunk", "embed", "write"}
    assert times["ray_start"] >= 0  # near 0 when an earlier test in this process started Ray
    assert 0 < times["first_output"] <= times["wall"]
    assert times["model_load"] > 0 and times["embed"] > 0 and times["read"] > 0 and times["chunk"] > 0
    cpu = indexed["summary"]["cpu_s"]
    assert set(cpu) == {"driver", "read", "chunk", "model_load", "embed"}
    assert all(seconds > 0 for seconds in cpu.values()), cpu
    threads = indexed["summary"]["actors"]["threads_per_forward"] * indexed["summary"]["actors"]["parallel_batches"]
    assert cpu["embed"] <= 1.2 * threads * times["embed"] + 1  # no more CPU than the actors' threads can use


def test_the_summary_says_what_dtype_the_actors_computed_in(indexed: dict) -> None:
    actors = indexed["summary"]["actors"]
    assert actors["compute_dtypes"] == {"float32": actors["size"]}  # this config asks for float32
    # The tests start Ray themselves (no preload): a Ray lateline did not start keeps its allocator.
    assert actors["allocators"] == {"glibc": actors["size"]}


def test_rows_carry_offsets_that_slice_the_source_text(indexed: dict) -> None:
    table = _table(indexed["config"])
    assert table.schema.field(schema.VECTOR).type == pa.list_(pa.float32(), 384)
    assert len(set(table[schema.CHUNK_ID].to_pylist())) == table.num_rows
    for row in table.to_pylist():
        source = topics[row[schema.DOC_ID]]
        assert source[row[schema.CHAR_START] : row[schema.CHAR_END]] == row[schema.TEXT]
        assert row[schema.TOKEN_END] - row[schema.TOKEN_START] <= 96
        assert row[schema.CHUNK_ID] == f"{row[schema.DOC_ID]}#{row[schema.CHUNK_INDEX]}"
        assert row[schema.MODEL].startswith("sentence-transformers/all-MiniLM-L6-v2@")
        assert json.loads(row[schema.METADATA]) == {"title": row[schema.DOC_ID]}
        assert row[schema.SOURCE_URI].startswith("s3://corpus-jsonl/docs/part-")
        assert np.isclose(np.linalg.norm(row[schema.VECTOR]), 1.0, atol=1e-4)


def test_chunks_of_a_document_tile_its_tokens(indexed: dict) -> None:
    table = _table(indexed["config"]).sort_by([(schema.DOC_ID, "ascending"), (schema.CHUNK_INDEX, "ascending")])
    by_doc: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_doc.setdefault(row[schema.DOC_ID], []).append(row)
    for rows in by_doc.values():
        assert [r[schema.CHUNK_INDEX] for r in rows] == list(range(len(rows))) == [*range(rows[0][schema.CHUNK_COUNT])]
        assert rows[0][schema.TOKEN_START] == 0
        assert all(a[schema.TOKEN_END] == b[schema.TOKEN_START] for a, b in itertools.pairwise(rows))


def test_table_records_model_and_settings(indexed: dict) -> None:
    import lancedb

    config = indexed["config"]
    table = lancedb.connect(config.sink.uri).open_table(config.sink.table)
    record = json.loads(table.schema.metadata[schema.TABLE_METADATA_KEY])
    assert record["model"]["dim"] == 384 and record["model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert record["settings"]["chunker"] == {"strategy": "sentences@v1", "size": 96, "sentences_per_chunk": 4}
    assert record["settings"]["pooling"]["mode"] == "late@v2"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("anonymous inline function expression", "lambda"),
        ("how the import statement finds and loads modules", "import"),
        ("interactive source code debugger with breakpoints", "debugger"),
        ("format specification mini-language for format strings", "formatstrings"),
    ],
)
def test_search_finds_the_expected_document(indexed: dict, query: str, expected: str) -> None:
    [hits] = search(indexed["config"], [query], k=3, by_document=True)
    assert expected in [hit.doc_id for hit in hits]
    assert len({hit.doc_id for hit in hits}) == len(hits)
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_search_command_prints_score_id_offsets_and_text(indexed: dict, capsys: pytest.CaptureFixture) -> None:
    code = search_job.main(["--config", str(indexed["config_path"]), "anonymous inline function", "-k", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    rank, score, doc_id, offsets, *_ = lines[0].split()
    assert rank == "1" and 0 < float(score) <= 1 and doc_id in DOC_IDS and offsets.startswith("[")


def test_rerun_is_idempotent(indexed: dict, tmp_path: Path) -> None:
    config = indexed["config"]
    before = _table(config).sort_by(schema.CHUNK_ID)
    assert index_job.main(["--config", str(indexed["config_path"])]) == 0
    after = _table(config).sort_by(schema.CHUNK_ID)
    latest = max(Path(config.runtime.summary_dir).glob("*/summary.json"))
    counts = json.loads(latest.read_text())["counts"]
    assert counts["docs_skipped_unchanged"] == len(DOC_IDS) and counts["forward_passes"] == 0
    assert counts["docs_written"] == 0 and counts["docs_deleted"] == 0
    assert after.num_rows == before.num_rows
    assert after[schema.CHUNK_ID].to_pylist() == before[schema.CHUNK_ID].to_pylist()
    np.testing.assert_allclose(
        np.stack(after[schema.VECTOR].to_numpy(zero_copy_only=False)),
        np.stack(before[schema.VECTOR].to_numpy(zero_copy_only=False)),
        atol=1e-6,
    )


def test_writing_with_another_model_or_other_settings_is_refused(
    indexed: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from transformers import BertConfig, BertModel

    from pipeline.model import resolve_model_path

    other = tmp_path / "other-model"
    BertModel(
        BertConfig(hidden_size=384, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    ).save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (other / name).write_bytes((Path(resolve_model_path("all-MiniLM-L6-v2")) / name).read_bytes())
    code = index_job.main(["--config", str(indexed["config_path"]), "--set", f"model.name_or_path={other}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "holds vectors of model sentence-transformers/all-MiniLM-L6-v2@" in err and "other-model@" in err

    # The same model with another macro-window overlap: refused too, naming the key and both values.
    code = index_job.main(["--config", str(indexed["config_path"]), "--set", "embedding.window_overlap=32"])
    err = capsys.readouterr().err
    assert code == 2 and "embedding.window_overlap: table 64, this job 32" in err


def test_parquet_source(s3fs_client, ray_session, tmp_path: Path) -> None:
    records = pa.table(
        {
            "doc": ["p-lambda", "p-assert", "p-empty"],
            "body": [topics["lambda"], topics["assert"], ""],
            "title": ["Lambdas", "Assert", "Empty"],
        }
    )
    s3fs_client.mkdir("corpus-parquet")
    with s3fs_client.open("corpus-parquet/data.parquet", "wb") as handle:
        pq.write_table(records, handle)
    config_path = _config(
        tmp_path, "s3://corpus-parquet/data.parquet", "parquet", source__id_field="doc", source__text_field="body"
    )
    assert index_job.main(["--config", str(config_path)]) == 0
    config = parse_config(yaml.safe_load(config_path.read_text()))
    table = _table(config)
    assert set(table[schema.DOC_ID].to_pylist()) == {"p-lambda", "p-assert"}
    assert {json.loads(m)["title"] for m in table[schema.METADATA].to_pylist()} == {"Lambdas", "Assert"}
    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/summary.json")]
    assert summary["counts"]["dead_lettered_by_reason"] == {"empty_text": 1}


def test_markdown_files_with_paragraph_chunks(s3fs_client, ray_session, tmp_path: Path) -> None:
    s3fs_client.mkdir("corpus-md")
    s3fs_client.pipe("corpus-md/notes/guide/lambda.md", f"# Lambda\n\n{topics['lambda']}\n\n## More\n\nShort.".encode())
    s3fs_client.pipe("corpus-md/notes/assert.txt", topics["assert"].encode())
    s3fs_client.pipe("corpus-md/notes/image.png", b"\x89PNG not text")
    config_path = _config(
        tmp_path, "s3://corpus-md/notes", "text", chunking__strategy="paragraphs", chunking__min_tokens=8
    )
    assert index_job.main(["--config", str(config_path), "--limit", "5"]) == 0
    table = _table(parse_config(yaml.safe_load(config_path.read_text())))
    assert set(table[schema.DOC_ID].to_pylist()) == {"guide/lambda.md", "assert.txt"}
    first = table.filter(pa.compute.equal(table[schema.DOC_ID], "guide/lambda.md")).sort_by(schema.CHUNK_INDEX)
    assert first[schema.TEXT][0].as_py().startswith("# Lambda")


def _sink_options(endpoint: str, **change: str | None) -> dict[str, str]:
    """LanceDB storage options for the loopback S3; ``None`` in ``change`` leaves an option out."""
    options = {
        "aws_endpoint": endpoint,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_region": "us-east-1",
        "allow_http": "true",
        **change,
    }
    return {key: value for key, value in options.items() if value is not None}


def _sample_into(tmp_path: Path, sink: dict) -> tuple[dict, Path]:
    """A config indexing the repository's sample corpus into ``sink``, and the path it is written to."""
    config = {
        "source": {"uri": str(Path(__file__).resolve().parents[2] / "data" / "sample"), "format": "jsonl"},
        "model": {"dtype": "float32"},
        "sink": sink,
        "runtime": {"summary_dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "s3-sink.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


def test_the_table_itself_can_live_in_s3(s3fs_client, s3_endpoint: str, ray_session, tmp_path: Path) -> None:
    s3fs_client.mkdir("vectors")
    options = _sink_options(s3_endpoint)
    config, path = _sample_into(tmp_path, {"uri": "s3://vectors/db", "table": "chunks", "storage_options": options})
    assert index_job.main(["--config", str(path), "--limit", "3"]) == 0
    assert index_job.main(["--config", str(path), "--limit", "3"]) == 0
    [hits] = search(parse_config(config), ["the assert statement"], k=1)
    assert hits[0].doc_id == "assert"
    import lancedb

    table = lancedb.connect("s3://vectors/db", storage_options=options).open_table("chunks").to_arrow()
    assert len(set(table[schema.CHUNK_ID].to_pylist())) == table.num_rows > 0
    assert not s3fs_client.exists("vectors/db/chunks.lateline-lock"), "the lock is released"

    # An overwrite stages its rows in the bucket and replaces the table in one commit.
    assert index_job.main(["--config", str(path), "--limit", "2", "--set", "sink.mode=overwrite"]) == 0
    rebuilt = lancedb.connect("s3://vectors/db", storage_options=options).open_table("chunks").to_arrow()
    assert len(set(rebuilt[schema.DOC_ID].to_pylist())) == 2
    assert len(set(rebuilt[schema.CHUNK_ID].to_pylist())) == rebuilt.num_rows

    # One given up after staging rows leaves the table, and the bucket, as they were.
    from pipeline.config import SinkConfig
    from pipeline.model import ModelIdentity
    from pipeline.sink import LanceSink

    def data_files() -> list[str]:
        s3fs_client.invalidate_cache()  # s3fs caches listings; lance wrote behind its back
        return sorted(s3fs_client.find("vectors/db/chunks.lance/data"))

    files = data_files()
    sink_config = SinkConfig(uri="s3://vectors/db", mode="overwrite", commit_rows=1, storage_options=options)
    identity = ModelIdentity("m", "f", len(rebuilt[schema.VECTOR][0]), "mean", 512, "float32", "")
    given_up = LanceSink(sink_config, identity, {"chunker": "test"})
    given_up.write(rebuilt)
    assert len(data_files()) > len(files), "rows were staged in the bucket"
    given_up.abandon()
    assert data_files() == files
    after = lancedb.connect("s3://vectors/db", storage_options=options).open_table("chunks").to_arrow()
    assert after.equals(rebuilt)


@pytest.mark.parametrize(
    ("bucket", "change", "cause"),
    [
        ("nosuchbucket", {}, "the bucket does not exist"),
        ("vectors-ok", {"aws_endpoint": "http://127.0.0.1:1"}, "the endpoint cannot be reached"),
        ("vectors-ok", {"allow_http": None}, "allow_http"),
    ],
)
def test_a_sink_that_cannot_be_reached_exits_2_naming_the_setting_and_the_cause(
    s3fs_client, s3_endpoint: str, tmp_path: Path, capsys, monkeypatch, bucket: str, change: dict, cause: str
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # only the sink's own options point anywhere
    monkeypatch.delenv("AWS_ALLOW_HTTP", raising=False)
    if not s3fs_client.exists("vectors-ok"):
        s3fs_client.mkdir("vectors-ok")
    _, path = _sample_into(
        tmp_path, {"uri": f"s3://{bucket}/db", "storage_options": _sink_options(s3_endpoint, **change)}
    )
    assert index_job.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "sink.uri" in err and cause in err and "sink.storage_options" in err
    assert "cargo" not in err and "Traceback" not in err, "no Rust debug dump, no traceback"


def test_a_missing_source_bucket_is_named(s3fs_client, s3_endpoint: str, tmp_path: Path, capsys) -> None:
    config = _config(tmp_path, "s3://no-such-corpus/docs/", "jsonl")
    assert index_job.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "source.uri" in err and "no bucket 'no-such-corpus'" in err and "Traceback" not in err


def test_maintain_updates_the_indexes_of_a_table_in_s3(s3fs_client, s3_endpoint: str, tmp_path: Path) -> None:
    """On S3 too, a second maintain adds the new rows to the indexes instead of rebuilding them: the trained
    rows are read from the table's manifest there as well."""
    import lancedb

    from pipeline.maintain import maintain

    s3fs_client.mkdir("maintained")
    options = _sink_options(s3_endpoint)
    rng = np.random.default_rng(0)

    def rows(start: int, n: int) -> pa.Table:
        vectors = pa.array(rng.standard_normal(n * 8).astype(np.float32))
        ids = [f"c{i}" for i in range(start, start + n)]
        return pa.table(
            {"chunk_id": ids, "text": ["late chunking"] * n, "vector": pa.FixedSizeListArray.from_arrays(vectors, 8)}
        )

    table = lancedb.connect("s3://maintained/db", storage_options=options).create_table("chunks", rows(0, 300))
    sink = {"uri": "s3://maintained/db", "table": "chunks", "storage_options": options}
    config = parse_config({"source": {"uri": "x", "format": "jsonl"}, "sink": sink, "maintain": {"ann_min_rows": 100}})
    assert maintain(config)["actions"][1:] == [
        "chunk_id index built",
        "ivf_pq vector index built on 300 rows",
        "text full-text index built",
    ]
    table.add(rows(300, 40))
    assert maintain(config)["actions"][1:] == [
        "chunk_id index: 40 new rows added",
        "ivf_pq vector index: 40 new rows added",
        "text full-text index: 40 new rows added",
    ]
