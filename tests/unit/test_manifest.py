"""The object-skip rule: skip only what provably needs no reading."""

from __future__ import annotations

from collections import Counter

from pipeline.manifest import unchanged_objects
from pipeline.sources import SourceObject

SEEN = {"s3://b/a.jsonl": {"etag": "e1", "size": 10, "settings_digest": "d", "doc_count": 3}}


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
