"""The object-skip rule: skip only what provably needs no reading."""

from __future__ import annotations

import os
from collections import Counter

from pipeline import manifest as manifest_module
from pipeline import sink as sink_module
from pipeline.config import SourceConfig
from pipeline.deadletters import SETTLED_REASONS, ObjectLetters
from pipeline.manifest import ObjectManifest, object_digest, unchanged_objects
from pipeline.sources import SourceObject

SEEN = {"s3://b/a.jsonl": {"etag": "e1", "size": 10, "settings_digest": "d", "doc_count": 3, "run_id": "r1"}}


def _object(etag: str | None = "e1", size: int = 10, path: str = "s3://b/a.jsonl") -> SourceObject:
    return SourceObject(path=path, root="s3://b", size=size, etag=etag)


def test_same_etag_size_settings_and_rows_is_skipped() -> None:
    assert unchanged_objects([_object()], SEEN, "d", Counter({"s3://b/a.jsonl": 3})) == {"s3://b/a.jsonl"}


def test_anything_different_sends_the_object_through_the_pipeline() -> None:
    docs = Counter({"s3://b/a.jsonl": 3})
    assert unchanged_objects([_object(etag="e2")], SEEN, "d", docs) == set()
    assert unchanged_objects([_object(size=11)], SEEN, "d", docs) == set()
    assert unchanged_objects([_object()], SEEN, "other-settings", docs) == set()
    assert unchanged_objects([_object()], SEEN, "d", Counter({"s3://b/a.jsonl": 2})) == set(), "rows deleted by hand"
    assert unchanged_objects([_object(etag=None)], SEEN, "d", docs) == set(), "a store without etags never skips"
    assert unchanged_objects([_object(path="s3://b/new.jsonl")], SEEN, "d", docs) == set()


def test_an_object_with_dead_letters_is_skipped_only_when_a_new_read_would_give_the_same_ones() -> None:
    docs = Counter({"s3://b/a.jsonl": 3})

    def skipped(run_ids: set[str], reasons: set[str]) -> bool:
        letters = {"s3://b/a.jsonl": ObjectLetters(len(reasons), frozenset(run_ids), frozenset(reasons))}
        return unchanged_objects([_object()], SEEN, "d", docs, letters) == {"s3://b/a.jsonl"}

    assert skipped({"r1"}, {"invalid_json", "empty_text"}), "the recording run's letters, from the bytes"
    assert not skipped({"r0"}, {"missing_text"}), "another run's letters (say a wrong text_field since put right)"
    assert not skipped({"r1", "r2"}, {"invalid_json"}), "a later run (a --limit trial) added letters"
    for reason in ("unreadable_source", "embed_failed", "out_of_memory", "tokenize_failed", "no_tokens"):
        assert reason not in SETTLED_REASONS
        assert not skipped({"r1"}, {reason}), f"{reason} may pass on another read"
    assert not skipped({"r1"}, {"duplicate_doc_id"}), "depends on other objects"


def test_settings_that_change_what_an_object_yields_change_its_key_and_others_do_not(monkeypatch) -> None:
    source = SourceConfig(uri="s3://b/", format="jsonl")
    key = object_digest("d", source)
    assert object_digest("d", source.model_copy()) == key, "stable"
    assert object_digest("other-settings", source) != key
    yields_other_documents = [
        {"text_field": "body"},
        {"id_field": "doc"},
        {"metadata_fields": ("title",)},
        {"max_doc_chars": 100},
        {"format": "text"},
    ]
    for change in yields_other_documents:
        assert object_digest("d", source.model_copy(update=change)) != key, change
    monkeypatch.setattr(manifest_module, "READER_VERSION", "readers@v2")
    assert object_digest("d", source) != key, "readers that read records differently: every object read again"
    monkeypatch.undo()
    for same_documents in ({"read_batch_docs": 10}, {"include": ("*.jsonl",)}, {"storage_options": {"k": "v"}}):
        assert object_digest("d", source.model_copy(update=same_documents)) == key, same_documents
    assert object_digest("d", source.model_copy(update={"uri": "s3://b/sub/"})) == key, "records name their ids"
    # A text file's id is its path below source.uri: another root names its documents otherwise.
    text = SourceConfig(uri="s3://b/docs/", format="text")
    for same_root in ("s3://b/docs", "s3://b/docs/*.md", "s3://b/docs/[ab]*"):
        assert object_digest("d", text.model_copy(update={"uri": same_root})) == object_digest("d", text), same_root
    assert object_digest("d", text.model_copy(update={"uri": "s3://b/docs/guide/"})) != object_digest("d", text)
    local = SourceConfig(uri="docs/", format="text")
    for same_root in ("./docs", f"{os.getcwd()}/docs", "docs/*.txt", f"file://{os.getcwd()}/docs"):
        assert object_digest("d", local.model_copy(update={"uri": same_root})) == object_digest("d", local), same_root


def test_forget_deletes_just_the_named_objects_whatever_their_characters(tmp_path) -> None:
    manifest = ObjectManifest(str(tmp_path / "db"), "chunks")
    paths = ["s3://b/a.jsonl", "s3://b/it's here.jsonl", 's3://b/"q".jsonl', "s3://b/z.jsonl"]
    row = {"etag": "e", "size": 1, "settings_digest": "d", "doc_count": 1, "run_id": "r"}
    manifest.record([{"source_uri": path, **row} for path in paths])
    assert manifest.forget([]) == 0
    assert manifest.forget(["s3://b/it's here.jsonl", 's3://b/"q".jsonl', "s3://b/never-recorded.jsonl"]) == 2
    assert sorted(manifest.load()) == ["s3://b/a.jsonl", "s3://b/z.jsonl"]


def test_forget_handles_more_objects_than_one_statement_takes(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sink_module, "DELETE_BATCH", 2)
    manifest = ObjectManifest(str(tmp_path / "db"), "chunks")
    row = {"etag": "e", "size": 1, "settings_digest": "d", "doc_count": 1, "run_id": "r"}
    manifest.record([{"source_uri": f"s3://b/{i}.jsonl", **row} for i in range(7)])
    assert manifest.forget([f"s3://b/{i}.jsonl" for i in range(6)]) == 6
    assert list(manifest.load()) == ["s3://b/6.jsonl"]


def test_forget_on_a_table_without_a_manifest_is_a_no_op(tmp_path) -> None:
    assert ObjectManifest(str(tmp_path / "db"), "chunks").forget(["s3://b/a.jsonl"]) == 0
