"""The pure parts of model upgrades: alias history replay, text rebuilt from stored chunks, stored char
ranges mapped to a new tokenizer's tokens, documents regrouped from table rows, CLS pooling from the model's
own config."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import schema
from pipeline.aliases import replay
from pipeline.chunking import chunk_spans, rebuild_text, token_spans_for_chars
from pipeline.config import ModelConfig
from pipeline.embedding import ChunkEmbedder
from pipeline.model import ModelIdentity, describe_model, resolve_model_path
from pipeline.reembed import STORED_COLUMNS, documents_from_batches, target_name
from tests.unit.test_embedding import FRAME, states_of, tiny_loaded


def _row(seq: int, action: str, table: str) -> dict:
    return {"seq": seq, "action": action, "table": table, "at": "", "note": ""}


def test_alias_history_replays_as_a_stack() -> None:
    history = [_row(2, "promote", "c"), _row(0, "initial", "a"), _row(1, "promote", "b"), _row(3, "rollback", "b")]
    state = replay("x", history)
    assert state.serving == "b" and state.stack == ("a", "b")
    assert [row["seq"] for row in state.history] == [0, 1, 2, 3]
    assert replay("x", [*history, _row(4, "rollback", "a")]).serving == "a"
    # Rolling back past the first table is ignored: something always serves.
    assert replay("x", [*history, _row(4, "rollback", "a"), _row(5, "rollback", "a")]).serving == "a"
    assert replay("x", []).serving == "x"


TEXT = "First sentence here.  Second one!\n\nA new paragraph starts. And ends."


def test_a_helper_table_cannot_be_promoted(tmp_path: Path) -> None:
    import lancedb
    import pyarrow as pa

    from pipeline.aliases import AliasError, promote

    db = lancedb.connect(str(tmp_path))
    for name in ("chunks", "chunks__deadletter", "chunks__alias"):
        db.create_table(name, pa.table({"x": [1]}))
    for helper in ("chunks__deadletter", "chunks__alias"):
        with pytest.raises(AliasError, match="helper tables"):
            promote(db, str(tmp_path), "chunks", helper)
    assert not list(tmp_path.glob("*.lateline-lock"))


def test_retire_refuses_helper_tables_and_what_any_alias_serves_and_promote_what_already_serves(
    tmp_path: Path,
) -> None:
    import lancedb

    from pipeline.aliases import AliasError, check_retirable, promote, served_tables

    db = lancedb.connect(str(tmp_path))
    for name in ("chunks", "chunks__old", "chunks__objects", "big", "big__new"):
        db.create_table(name, pa.table({"x": [1]}))
    with pytest.raises(AliasError, match="already serves 'chunks'"):  # no alias yet: the table of its name
        promote(db, str(tmp_path), "chunks", "chunks")
    promote(db, str(tmp_path), "big", "big__new")
    assert served_tables(db) == {"big__new": "big"}
    check_retirable(db, str(tmp_path), "chunks", ["chunks__old"])
    with pytest.raises(AliasError, match="'chunks' serves"):
        check_retirable(db, str(tmp_path), "chunks", ["chunks"])
    with pytest.raises(AliasError, match="'big__new' is what alias 'big' serves"):
        check_retirable(db, str(tmp_path), "chunks", ["chunks__old", "big__new"])
    for helper in ("chunks__objects", "big__alias"):
        with pytest.raises(AliasError, match="helper tables; it is dropped with the table it belongs to"):
            check_retirable(db, str(tmp_path), "chunks", [helper])


def test_retire_checks_every_lock_before_it_drops_anything_and_its_dry_run_alike(tmp_path: Path, capsys) -> None:
    import lancedb
    import yaml

    from jobs import retire as retire_job
    from pipeline.lock import TableLock

    db = lancedb.connect(str(tmp_path / "db"))
    for name in ("chunks", "chunks__a", "chunks__b"):
        db.create_table(name, pa.table({"x": [1]}))
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump({"source": {"uri": "x", "format": "jsonl"}, "sink": {"uri": str(tmp_path / "db")}})
    )
    with TableLock(str(tmp_path / "db"), "chunks__b", "reembed-run"):  # a job is writing chunks__b
        for extra in (["--dry-run"], []):
            assert retire_job.main(["--config", str(config), "--unserved", *extra]) == 4
            err = capsys.readouterr().err
            assert "'chunks__b' cannot be retired: table is being written by run reembed-run" in err
        assert sorted(db.table_names()) == ["chunks", "chunks__a", "chunks__b"], "nothing dropped, not even chunks__a"
    assert retire_job.main(["--config", str(config), "--unserved"]) == 0
    assert db.table_names() == ["chunks"]


def test_rollback_refuses_to_serve_a_table_a_job_is_writing(tmp_path: Path) -> None:
    import lancedb

    from pipeline.aliases import promote, rollback, serving_table
    from pipeline.lock import TableLock, TableLocked

    db = lancedb.connect(str(tmp_path))
    for name in ("chunks", "chunks__new"):
        db.create_table(name, pa.table({"x": [1]}))
    promote(db, str(tmp_path), "chunks", "chunks__new")
    with TableLock(str(tmp_path), "chunks", "a-writer"):
        with pytest.raises(
            TableLocked, match="would roll back to 'chunks', but that table is being written by run a-writer"
        ):
            rollback(db, str(tmp_path), "chunks")
        assert serving_table(db, "chunks") == "chunks__new"
    assert rollback(db, str(tmp_path), "chunks").serving == "chunks"


@pytest.mark.parametrize(
    ("source", "served_source", "expected"),
    [
        (None, "chunks", ""),  # sink.table's own alias
        ("chunks__old", "chunks__old", ""),  # a table of sink.table's family: the same alias
        ("docs", "docs", " --set sink.table=docs"),  # another table, no alias: its own name
        ("docs", "docs__v2", " --set sink.table=docs"),  # the alias docs, which serves docs__v2
    ],
)
def test_the_next_steps_after_a_reembed_name_the_alias_of_the_table_it_came_from(
    tmp_path: Path, source: str | None, served_source: str, expected: str
) -> None:
    import lancedb

    from jobs.reembed import next_steps
    from pipeline.aliases import promote
    from pipeline.config import parse_config

    db = lancedb.connect(str(tmp_path))
    for name in ("chunks", "docs", "docs__v2"):
        db.create_table(name, pa.table({"x": [1]}))
    promote(db, str(tmp_path), "docs", "docs__v2")
    config = parse_config({"source": {"uri": "x", "format": "jsonl"}, "sink": {"uri": str(tmp_path)}})
    summary = {"table": {"name": "t__m-1234abcd"}, "source": {"table": served_source}}
    assert next_steps("new.yaml", config, source, summary) == (
        f"next: lateline compare --config new.yaml{expected} --new t__m-1234abcd; then lateline promote --config "
        f"new.yaml{expected} --table t__m-1234abcd"
    )


def test_retire_unserved_leaves_a_table_of_its_family_that_another_alias_serves(tmp_path: Path, capsys) -> None:
    import lancedb
    import yaml

    from jobs import retire as retire_job
    from pipeline.aliases import promote

    db = lancedb.connect(str(tmp_path / "db"))
    for name in ("docs", "docs__a", "docs__en__m"):
        db.create_table(name, pa.table({"x": [1]}))
    promote(db, str(tmp_path / "db"), "docs__en", "docs__en__m")  # a nested alias name, live
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {"source": {"uri": "x", "format": "jsonl"}, "sink": {"uri": str(tmp_path / "db"), "table": "docs"}}
        )
    )
    assert retire_job.main(["--config", str(config), "--unserved"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["dropped"] == ["docs__a"]
    assert "not retiring 'docs__en__m': served by another alias" in out.err
    assert "docs__en__m" in db.table_names()


def test_a_reembed_carries_only_manifest_entries_its_source_would_skip(tmp_path: Path) -> None:
    from pipeline.config import parse_config
    from pipeline.manifest import ObjectManifest
    from pipeline.reembed import carry_manifest

    config = parse_config({"source": {"uri": "x", "format": "jsonl"}, "sink": {"uri": str(tmp_path), "table": "new"}})
    row = {"etag": "e", "size": 1, "doc_count": 1, "run_id": "r"}
    ObjectManifest(str(tmp_path), "old").record(
        [
            {"source_uri": "current", **row, "settings_digest": "old-key"},
            {"source_uri": "older-readers", **row, "settings_digest": "stale-key"},  # read again by old too
            {"source_uri": "bad", **row, "settings_digest": "old-key"},
        ]
    )
    assert carry_manifest(config, "old", "old-key", "new-key", {"bad"}, "run") == 1
    [carried] = ObjectManifest(str(tmp_path), "new").load().values()
    assert (carried["source_uri"], carried["settings_digest"], carried["run_id"]) == ("current", "new-key", "run")


def test_rebuilt_text_puts_every_chunk_back_at_its_offsets(encode_offsets) -> None:
    offsets = encode_offsets(TEXT)
    spans = chunk_spans(TEXT, offsets, "sentences", size=8, sentences_per_chunk=1)
    stored = [(s.char_start, s.char_end, TEXT[s.char_start : s.char_end]) for s in spans]
    rebuilt = rebuild_text(list(reversed(stored)))
    assert all(rebuilt[a:b] == text for a, b, text in stored)
    assert len(rebuilt) == spans[-1].char_end
    # Gaps were whitespace: one char -> a space, more -> a blank line (a paragraph break stays one).
    assert "\n\nA new" in rebuilt and rebuilt.split() == TEXT.split()


def test_rebuilt_text_of_overlapping_chunks_has_no_repeats() -> None:
    text = "one two three four five"
    assert rebuild_text([(0, 13, text[0:13]), (8, 23, text[8:23])]) == text


def test_stored_char_ranges_get_the_tokens_that_overlap_them(encode_offsets) -> None:
    offsets = encode_offsets(TEXT)
    spans = chunk_spans(TEXT, offsets, "sentences", size=8, sentences_per_chunk=1)
    kept = token_spans_for_chars(offsets, [(s.char_start, s.char_end) for s in spans])
    assert kept == spans  # the same tokenizer gives back the same spans
    # A range cutting through tokens keeps its chars and takes every token it touches.
    [cut] = token_spans_for_chars(offsets, [(2, 9)])  # "rst sen"
    assert (cut.char_start, cut.char_end) == (2, 9)
    assert offsets[cut.token_start][0] <= 2 and offsets[cut.token_end - 1][1] >= 9
    [empty] = token_spans_for_chars(offsets, [(20, 22)])  # only whitespace
    assert empty.token_start == empty.token_end


def _stored_rows(doc: str, texts: list[str]) -> list[dict]:
    rows, position = [], 0
    for index, text in enumerate(texts):
        rows.append(
            {
                schema.DOC_ID: doc,
                schema.CHUNK_INDEX: index,
                schema.CHUNK_COUNT: len(texts),
                schema.TEXT: text,
                schema.CHAR_START: position,
                schema.CHAR_END: position + len(text),
                schema.SOURCE_URI: f"s3://b/{doc}.jsonl",
                schema.METADATA: None,
                schema.CONTENT_SHA256: f"sha-{doc}",
            }
        )
        position += len(text) + 1
    return rows


def test_documents_are_regrouped_whole_once_even_when_split_across_batches_and_fragments() -> None:
    a, b, c = _stored_rows("a", ["a0", "a1", "a2"]), _stored_rows("b", ["b0", "b1"]), _stored_rows("c", ["c0"])
    # This fragment holds a's chunks 0 and 2 (chunk 1 lies in another fragment), b split across two batches,
    # c whole, and only chunk 1 of d (whose chunk 0, and so d itself, belongs to another fragment).
    d = _stored_rows("d", ["d0", "d1"])
    batches = [pa.RecordBatch.from_pylist([a[0], b[0], d[1]]), pa.RecordBatch.from_pylist([b[1], a[2], c[0]])]
    fetched: list[list[str]] = []

    def fetch(doc_ids: list[str]) -> pa.Table:
        fetched.append(doc_ids)
        return pa.Table.from_pylist([r for r in a + d if r[schema.DOC_ID] in doc_ids])

    docs = [doc for group in documents_from_batches(batches, fetch, keep_spans=True, batch_docs=2) for doc in group]
    assert sorted(doc[schema.DOC_ID] for doc in docs) == ["a", "b", "c"]  # d belongs to its chunk 0's fragment
    assert fetched == [["a"]]
    by_id = {doc[schema.DOC_ID]: doc for doc in docs}
    assert by_id["a"][schema.CHAR_STARTS] == [0, 3, 6] and by_id["a"][schema.TEXT] == "a0 a1 a2"
    assert by_id["b"][schema.CONTENT_SHA256] == "sha-b" and by_id["b"][schema.SOURCE_URI] == "s3://b/b.jsonl"
    rechunked = next(iter(documents_from_batches([pa.RecordBatch.from_pylist(c)], fetch, False, 10)))
    assert rechunked[0][schema.CHAR_STARTS] is None
    assert set(STORED_COLUMNS) <= set(a[0])


def test_target_name_is_a_valid_table_name_per_model_and_settings() -> None:
    identity = ModelIdentity("org/Model v2", "abc", 8, "mean", 40, "float32", "")
    name = target_name("chunks", identity, {"chunker": {"size": 1}})
    assert name.startswith("chunks__org-Model-v2-") and len(name.rsplit("-", 1)[1]) == 8
    assert name != target_name("chunks", identity, {"chunker": {"size": 2}})
    # A table holds one vector dtype: float16 vectors of the same model get a table of their own.
    assert target_name("chunks", identity, {"chunker": {"size": 1}}, "float16") == f"{name}-float16"


def test_naive_mode_of_a_cls_model_pools_the_first_position(tiny_bert) -> None:
    loaded = tiny_loaded(tiny_bert)
    loaded.identity = ModelIdentity("tiny", "x", 32, "cls", 40, "float32", "")
    docs = [(list(range(5, 30)), [(0, 10), (10, 25)])]
    vectors = ChunkEmbedder(loaded, mode="naive").embed(docs)
    expected = np.stack([states_of(tiny_bert, FRAME.wrap(list(range(5, 30))[s:e]))[0] for s, e in docs[0][1]])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_a_local_cls_model_is_read_from_its_config_and_warned_about(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path / "cls-model"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.warns(UserWarning, match="CLS pooling.*late chunking"):
        _, _, window, identity = describe_model(ModelConfig(name_or_path=str(folder)))
    assert identity.pooling == "cls" and identity.name == "cls-model" and window == 64
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert describe_model(ModelConfig(name_or_path=str(folder)))[3].pooling == "mean"


def test_a_reembed_skips_ray_only_when_the_target_holds_every_stored_document_as_this_run_would_embed_it(
    tmp_path: Path,
) -> None:
    import lance

    from pipeline.docids import FingerprintIndex
    from pipeline.fingerprint import document_fingerprint
    from pipeline.reembed import StoredTable, stored_documents_done

    rows = pa.table(
        {
            schema.DOC_ID: ["a", "a", "b", "c"],
            schema.CHUNK_INDEX: [0, 1, 0, 0],
            schema.CONTENT_SHA256: ["ha", "ha", "hb", "hc"],
        }
    )
    dataset = lance.write_dataset(rows, str(tmp_path / "t.lance"))
    stored = StoredTable(str(tmp_path / "t.lance"), dataset.version, {}, keep_spans=True)

    def target(fingerprints: dict[str, str]) -> FingerprintIndex:
        return FingerprintIndex(fingerprints.items())

    every = {doc: document_fingerprint(f"h{doc}", "new") for doc in "abc"}
    done = stored_documents_done(stored, "new", target(every | {"z": "only-in-the-target"}))
    assert done is not None and list(done.contains(["a", "b", "c", "z"])) == [True, True, True, False]
    assert stored_documents_done(stored, "new", target({d: f for d, f in every.items() if d != "b"})) is None
    assert stored_documents_done(stored, "new", target(every | {"c": document_fingerprint("hc", "old")})) is None
    assert stored_documents_done(stored, "other-settings", target(every)) is None
    assert stored_documents_done(stored, "new", target({})) is None, "an empty or overwritten target: embed all"
