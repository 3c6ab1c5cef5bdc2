"""The object manifest: which source objects a table was last built from, so unchanged ones are not downloaded.

Table ``<table>__objects``: ``source_uri``, ``etag`` (ETag or mtime, as the store lists it), ``size``,
``settings_digest`` (:func:`object_digest`: the embedding settings and the settings that decide what documents
an object yields) and ``doc_count`` (documents of that object in the table), ``run_id``. An object is
recorded after a complete run read it, unless it got a dead letter that another read might not give (see
:data:`pipeline.deadletters.SETTLED_REASONS`: a store or model failure, a duplicate id). It is skipped when its
listing shows the same etag and size, the settings are the same, the table still holds ``doc_count`` documents
from it and its dead letters (if any) are still those of the run that recorded it, so a table edited by hand,
a new model/chunker, or another ``source.text_field``, ``id_field``, ``metadata_fields`` or ``max_doc_chars``
sends it back through the pipeline, and a broken record in an unchanged object costs nothing on later runs.
A complete ``index`` run forgets the objects its listing no longer has, as it deletes their documents. A store
that lists no etag/mtime gets no skipping (the per-document fingerprint still saves the tokenizing and the forward).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import pyarrow as pa
from fsspec.core import split_protocol

from pipeline import schema
from pipeline.config import SourceConfig
from pipeline.deadletters import ObjectLetters
from pipeline.known import KnownDocuments
from pipeline.sink import connect, delete_in, table_names
from pipeline.sources import SourceObject, glob_head

SUFFIX = "__objects"
MANIFEST = pa.schema(
    [
        pa.field(schema.SOURCE_URI, pa.string(), nullable=False),
        pa.field("etag", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("settings_digest", pa.string()),
        pa.field("doc_count", pa.int64()),
        pa.field("run_id", pa.string()),
    ]
)


class ObjectManifest:
    def __init__(self, uri: str, table: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri, self.storage_options = uri, storage_options
        self.name = f"{table}{SUFFIX}"

    @cached_property
    def db(self) -> Any:
        """The sink's database, connected at first use (connecting creates a local sink's folder, which a dry
        run must not do when there is nothing to look up)."""
        return connect(self.uri, self.storage_options)

    def load(self) -> dict[str, dict[str, Any]]:
        if self.name not in table_names(self.db):
            return {}
        return {row[schema.SOURCE_URI]: row for row in self.db.open_table(self.name).to_arrow().to_pylist()}

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Upsert rows (one per object) in one commit."""
        if not rows:
            return
        data = pa.Table.from_pylist(rows, schema=MANIFEST)
        if self.name not in table_names(self.db):
            self.db.create_table(self.name, data=data, schema=MANIFEST)
            return
        (
            self.db.open_table(self.name)
            .merge_insert(schema.SOURCE_URI)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(data)
        )

    def forget(self, paths: list[str]) -> int:
        """Delete the rows of ``paths`` (objects gone from the source); returns how many were there."""
        if not paths or self.name not in table_names(self.db):
            return 0
        table = self.db.open_table(self.name)
        before = table.count_rows()
        delete_in(table, schema.SOURCE_URI, paths)
        return before - table.count_rows()

    def unchanged(
        self,
        objects: list[SourceObject],
        settings_digest: str,
        source: SourceConfig,
        known: KnownDocuments,
        letters: Mapping[str, ObjectLetters],
    ) -> set[str]:
        """Paths of ``objects`` a run need not read (see the module doc for the rule; ``letters``: the dead
        letters in the table by object); none when the table holds no documents (``known`` is empty: a new
        table, or an overwrite, which reads everything)."""
        if not known:
            return set()
        key = object_digest(settings_digest, source)
        return unchanged_objects(objects, self.load(), key, known.docs_per_object(), letters)

    def clear(self) -> None:
        if self.name in table_names(self.db):
            self.db.drop_table(self.name)


# Source settings that change which documents, texts or metadata an unchanged object yields.
READING_SETTINGS = ("format", "id_field", "text_field", "metadata_fields", "max_doc_chars")
# What lateline's readers make of an object's bytes (pipeline.sources): bump it when a release reads, accepts or
# refuses records differently, so that unchanged objects (and their dead letters) are read again once.
READER_VERSION = "readers@v1"


def text_root(uri: str) -> str:
    """What a text source's document ids are relative to, as far as ``uri`` tells without listing it: a glob's
    head folder, else ``uri`` itself, with no trailing slash and local paths made absolute (``docs/``,
    ``./docs`` and ``docs/*.md`` give one root)."""
    protocol, path = split_protocol(uri)
    head = glob_head(path)
    path = path if head is None else head
    if protocol in (None, "file", "local"):
        return os.path.abspath(os.path.expanduser(path))
    return f"{protocol}://{path.rstrip('/')}"


def object_digest(settings_digest: str, source: SourceConfig) -> str:
    """What an object's manifest entry must match besides the object itself: the embedding settings' digest,
    the :data:`READING_SETTINGS` of ``source`` and :data:`READER_VERSION`; for ``text``, also ``source.uri``,
    since a text file's document id is its path relative to it."""
    reading = {name: getattr(source, name) for name in READING_SETTINGS} | {"reader": READER_VERSION}
    if source.format == "text":  # a new root renames every document: unchanged files must be read again
        reading["root"] = text_root(source.uri)
    key = json.dumps({"settings": settings_digest, "reading": reading}, sort_keys=True, default=list)
    return hashlib.sha256(key.encode()).hexdigest()


def unchanged_objects(
    objects: list[SourceObject],
    manifest: dict[str, dict[str, Any]],
    digest: str,
    docs_by_object: Counter,
    letters: Mapping[str, ObjectLetters] | None = None,
) -> set[str]:
    """Paths of ``objects`` that need no reading (see the module doc for the rule)."""
    unchanged, letters = set(), letters or {}
    for obj in objects:
        seen = manifest.get(obj.path)
        if seen is None or obj.etag is None:
            continue
        same_object = seen["etag"] == obj.etag and seen["size"] == obj.size
        same_rows = seen["settings_digest"] == digest and seen["doc_count"] == docs_by_object[obj.path]
        # Letters another run wrote (a wrong setting since put right, a failed read) must be replaced by a read.
        same_letters = obj.path not in letters or letters[obj.path].settled_by(seen["run_id"])
        if same_object and same_rows and same_letters:
            unchanged.add(obj.path)
    return unchanged
