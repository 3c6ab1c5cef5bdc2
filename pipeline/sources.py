"""List and read corpora from any fsspec location (``s3://``, local paths, globs).

Listing runs on the driver and returns :class:`SourceObject` rows (path, size, etag) so later stages can skip
unchanged objects before downloading them. Reading runs in Ray tasks and yields document tables in the
:data:`pipeline.schema.DOCUMENTS` schema. A bad record never stops its file: it becomes a row with an
``error`` reason (``invalid_json``, ``invalid_utf8``, ``missing_id``, ``missing_text``, ``non_string_text``,
``empty_text``, ``too_large``, ``unreadable_source``) and a detail with the line number and a raw snippet.
S3 credentials and endpoint come from the standard AWS environment / config files, or ``storage_options``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipeline import schema
from pipeline.config import SourceConfig
from pipeline.fingerprint import document_fingerprint
from pipeline.known import KnownDocuments
from pipeline.storage_options import NO_CREDENTIALS_HINT

log = logging.getLogger(__name__)
_GLOB_CHARS = ("*", "?", "[")
SNIPPET_CHARS = 200


class SourceError(RuntimeError):
    """The source as a whole cannot be listed (wrong URI, no access, nothing matches)."""


@dataclass(frozen=True)
class SourceObject:
    """One file of a source. ``path`` is a full URI; ``root`` the URI that relative ids are taken from."""

    path: str
    root: str
    size: int | None
    etag: str | None


def list_source_objects(source: SourceConfig, setting: str = "source.uri") -> list[SourceObject]:
    """Every file the source names, sorted by path. Raises :class:`SourceError` naming ``setting`` (where the
    URI came from) and the URI when it cannot be listed or matches nothing."""
    try:
        fs, path = url_to_fs(source.uri, **source.storage_options)
        entries, root = with_retries(f"listing {source.uri}", lambda: _list(fs, path, source.include_patterns()))
    except Exception as exc:
        cause = NO_CREDENTIALS_HINT if type(exc).__name__ == "NoCredentialsError" else str(exc)
        raise SourceError(
            f"{setting}: cannot list {source.uri!r}: {cause} (check it and source.storage_options)"
        ) from exc
    if not entries:
        patterns = ", ".join(source.include_patterns())
        raise SourceError(
            f"{setting}: no {source.format} files found at {source.uri!r} (a folder is searched for {patterns}; "
            "source.include sets other patterns)"
        )
    return [
        SourceObject(fs.unstrip_protocol(name), fs.unstrip_protocol(root), info.get("size"), _version_tag(info))
        for name, info in sorted(entries.items())
    ]


def list_uris(source: SourceConfig, uris: list[str], missing_ok: bool = False) -> list[SourceObject]:
    """Objects of several URIs (files, prefixes, globs) read as ``source`` says. Text-file ids stay relative to
    ``source.uri``'s root when an object lies under it, so a backfill names documents as ``index`` does.
    URIs that match nothing raise :class:`SourceError`, or are left out with ``missing_ok``."""
    base = _source_root(source)
    found: dict[str, SourceObject] = {}
    for uri in uris:
        try:
            listed = list_source_objects(source.model_copy(update={"uri": uri}), setting="URI")
        except SourceError:
            if missing_ok:
                continue
            raise
        for obj in listed:
            under_base = base is not None and obj.path.startswith(base.rstrip("/") + "/")
            found[obj.path] = replace(obj, root=base) if under_base else obj
    return [found[path] for path in sorted(found)]


def outside_source(source: SourceConfig, objects: list[SourceObject]) -> list[SourceObject]:
    """The ``objects`` that do not lie under ``source.uri``'s folder (its root; see ``_root``): a backfill's
    documents that an ``index`` of ``source.uri`` would not list, and so would remove."""
    base = _source_root(source)
    return [obj for obj in objects if base is None or not obj.path.startswith(base.rstrip("/") + "/")]


def _source_root(source: SourceConfig) -> str | None:
    try:
        fs, path = url_to_fs(source.uri, **source.storage_options)
        return fs.unstrip_protocol(_root(fs, path))
    except (OSError, ValueError, ImportError):
        return None


def glob_head(path: str) -> str | None:
    """PURE: the folder before a glob's first wildcard (``docs`` of ``docs/*.md``); ``None`` for a plain path."""
    if not any(ch in path for ch in _GLOB_CHARS):
        return None
    return path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]


def _root(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The folder that relative document ids are taken from: the non-glob head, the directory, or the parent."""
    head = glob_head(path)
    if head is not None:
        return head
    return path if fs.isdir(path) else path.rsplit("/", 1)[0]


def _list(fs: fsspec.AbstractFileSystem, path: str, include: tuple[str, ...]) -> tuple[dict[str, dict], str]:
    if any(ch in path for ch in _GLOB_CHARS):
        found = fs.glob(path, detail=True)
        files = {name: info for name, info in found.items() if info.get("type") != "directory"}
        return {name: info for name, info in files.items() if not _hidden(name)}, _root(fs, path)
    if fs.isdir(path):
        found = fs.find(path, detail=True)
        return {name: info for name, info in found.items() if _included(name, include)}, path
    if fs.isfile(path):
        return {path: fs.info(path)}, path.rsplit("/", 1)[0]
    bucket = path.split("/", 1)[0]
    if not _is_local(fs) and bucket and not fs.exists(bucket):
        raise FileNotFoundError(f"no bucket {bucket!r} there (or no access to it)")
    raise FileNotFoundError(f"no such file or directory: {path}")


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def _hidden(name: str) -> bool:
    return name.rsplit("/", 1)[-1].startswith(".")


def _included(name: str, include: tuple[str, ...]) -> bool:
    return not _hidden(name) and any(fnmatch.fnmatch(name.rsplit("/", 1)[-1], pattern) for pattern in include)


def _version_tag(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None


OBJECTS_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("root", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("etag", pa.string()),
        pa.field("known_doc_ids", pa.list_(pa.string())),
        pa.field("known_fingerprints", pa.list_(pa.string())),
    ]
)


def objects_table(objects: Iterable[SourceObject], known: KnownDocuments | None = None) -> pa.Table:
    """Source objects as the rows a read task gets (``OBJECTS_SCHEMA``): the :class:`SourceObject` fields,
    plus ``known_doc_ids`` / ``known_fingerprints``, the documents the table holds from that object (``known``:
    what ``LanceSink.known_documents`` returns). Built column-wise, without a Python value per document.

    Each read task gets just its objects' share, not the whole table's map: a worker's memory stays bounded by
    its objects however big the table grows. A document that moved to another object is not found there, so
    it is embedded again and its rows get the new ``source_uri``."""
    objects = list(objects)
    paths = [obj.path for obj in objects]
    offsets, ids, fingerprints = (known or KnownDocuments()).grouped_by(paths)
    columns = {name: [getattr(obj, name) for obj in objects] for name in ("path", "root", "size", "etag")}
    lists = {
        "known_doc_ids": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), ids),
        "known_fingerprints": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), fingerprints),
    }
    arrays = [pa.array(columns[f.name], f.type) for f in OBJECTS_SCHEMA if f.name in columns]
    return pa.Table.from_arrays([*arrays, *lists.values()], schema=OBJECTS_SCHEMA)


def read_objects(
    objects: pa.Table,
    source: SourceConfig,
    settings_digest: str = "",
    on_object_read: Callable[[str, int], None] | None = None,
) -> Iterator[pa.Table]:
    """Ray task body: read every object in ``objects`` (rows of :func:`objects_table`) and yield document
    tables of at most ``source.read_batch_docs`` rows. ``on_object_read(path, rows)`` is called once an
    object is read to its end, with the number of rows (documents and skipped records) it gave.

    Each good document gets its fingerprint; one whose fingerprint is the one its object's row lists for its
    id (the table already holds it) is emitted as an ``unchanged`` row without its text, so it costs no
    tokenizing and no forward.
    """
    for row in objects.to_pylist():
        known = dict(zip(row.get("known_doc_ids") or [], row.get("known_fingerprints") or []))
        rows: list[dict[str, Any]] = []
        count = 0
        for doc in read_object(row["path"], row["root"], source):
            rows.append(fingerprinted(doc, settings_digest, known))
            count += 1
            if len(rows) >= source.read_batch_docs:
                yield pa.Table.from_pylist(rows, schema=schema.DOCUMENTS)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=schema.DOCUMENTS)
        if on_object_read is not None:
            on_object_read(row["path"], count)


def fingerprinted(doc: dict[str, Any], settings_digest: str, known: Mapping[str, str]) -> dict[str, Any]:
    """``doc`` with its content hash and fingerprint; turned into an ``unchanged`` marker (text dropped) when
    ``known`` has that fingerprint. A ``doc`` that already carries its content hash (a re-embed, whose text is
    rebuilt from stored chunks) keeps it, so fingerprints stay those of the original source."""
    if doc[schema.ERROR] is not None:
        return doc
    content = doc.get(schema.CONTENT_SHA256) or content_hash(doc[schema.TEXT], doc[schema.METADATA])
    fingerprint = document_fingerprint(content, settings_digest)
    marked = {**doc, schema.DOC_FINGERPRINT: fingerprint, schema.CONTENT_SHA256: content}
    if known.get(doc[schema.DOC_ID]) == fingerprint:
        return {**marked, schema.TEXT: None, schema.ERROR: schema.UNCHANGED}
    return marked


RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, UnicodeError, ValueError)
# botocore errors of the set-up, not of the network: a retry finds the same missing credentials or profile.
_PERMANENT_BOTOCORE = {
    "NoCredentialsError",
    "PartialCredentialsError",
    "ProfileNotFound",
    "NoRegionError",
    "ParamValidationError",
    "InvalidConfigError",
}


def is_transient(exc: BaseException) -> bool:
    """Errors worth a retry: network and timeout errors, 5xx-style I/O errors, botocore/aiohttp connection
    errors. Missing objects, denied access and malformed data are permanent."""
    if isinstance(exc, _PERMANENT) or type(exc).__name__ in _PERMANENT_BOTOCORE:
        return False
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return True
    module, name = type(exc).__module__, type(exc).__name__
    return module.startswith(("botocore", "aiobotocore", "aiohttp", "urllib3")) or "Timeout" in name


def with_retries(what: str, action: Callable[[], Any], delays: tuple[float, ...] = RETRY_DELAYS_S) -> Any:
    """``action()``, retried with backoff while it fails with a transient error."""
    for delay in (*delays, None):
        try:
            return action()
        except Exception as exc:
            if delay is None or not is_transient(exc):
                raise
            log.warning("%s: %s; retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def read_object(path: str, root: str, source: SourceConfig) -> Iterator[dict[str, Any]]:
    """Document rows of one file. A transient storage error is retried with backoff, resuming after the
    records already yielded; a permanent one (or retries exhausted) yields one ``unreadable_source`` row that
    names the object."""
    yielded = 0
    for delay in (*RETRY_DELAYS_S, None):
        try:
            for position, doc in enumerate(_records(path, root, source)):
                if position >= yielded:
                    yielded += 1
                    yield doc
            return
        except Exception as exc:
            if delay is None or not is_transient(exc):
                yield skipped(path, "unreadable_source", f"{type(exc).__name__}: {exc}")
                return
            log.warning("reading %s: %s; retrying in %.1fs", path, exc, delay)
            time.sleep(delay)


def _records(path: str, root: str, source: SourceConfig) -> Iterator[dict[str, Any]]:
    fs, local = url_to_fs(path, **source.storage_options)
    if source.format == "jsonl":
        yield from _jsonl_records(fs, local, path, source)
    elif source.format == "parquet":
        yield from _parquet_records(fs, local, path, source)
    else:
        yield _text_record(fs, local, path, root, source)


def _jsonl_records(fs: Any, local: str, uri: str, source: SourceConfig) -> Iterator[dict[str, Any]]:
    with fs.open(local, "rb", compression="infer") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield _parse_json_line(raw, line_number, uri, source)


def _parse_json_line(raw: bytes, line_number: int, uri: str, source: SourceConfig) -> dict[str, Any]:
    where = f"line {line_number}"
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return skipped(uri, "invalid_utf8", f"{where}: {exc}", raw)
    except json.JSONDecodeError as exc:
        return skipped(uri, "invalid_json", f"{where}: {exc}", raw)
    if not isinstance(record, dict):
        return skipped(uri, "invalid_json", f"{where}: expected an object, got {type(record).__name__}", raw)
    return record_to_document(record, uri, where, source)


def _parquet_records(fs: Any, local: str, uri: str, source: SourceConfig) -> Iterator[dict[str, Any]]:
    with fs.open(local, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        wanted = [source.id_field, source.text_field, *source.metadata_fields]
        columns = [name for name in wanted if name in names]
        row_number = 0
        for batch in parquet.iter_batches(columns=columns, batch_size=source.read_batch_docs):
            for record in batch.to_pylist():
                row_number += 1
                yield record_to_document(record, uri, f"row {row_number}", source, columns=names)


def _text_record(fs: Any, local: str, uri: str, root: str, source: SourceConfig) -> dict[str, Any]:
    byte_limit = source.max_doc_chars * 4  # UTF-8 needs at most 4 bytes a character
    with fs.open(local, "rb", compression="infer") as handle:
        raw = handle.read(byte_limit + 1)
    doc_id = relative_id(uri, root)
    if len(raw) > byte_limit:
        detail = f"file: more than {byte_limit} bytes, so over source.max_doc_chars {source.max_doc_chars} chars"
        return skipped(uri, "too_large", detail, raw[:SNIPPET_CHARS], doc_id)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return skipped(uri, "invalid_utf8", str(exc), raw, doc_id)
    if not text.strip():  # said of the file, not of a JSON record it never was
        return skipped(uri, "empty_text", "file: empty or only whitespace", text, doc_id)
    return record_to_document({"id": doc_id, "text": text}, uri, "file", source, "id", "text")


def _absence(record: dict[str, Any], field: str, columns: Sequence[str] | None = None, most: int = 12) -> str:
    """What is wrong with ``field`` of a record that has no usable value for it: null or blank in this record,
    or not there at all (then with what is there: the record's fields, or for a file with columns, such as
    Parquet, the file's ``columns``)."""
    value = record.get(field)
    if isinstance(value, str):
        return f"{field!r} is blank"
    if field in (columns if columns is not None else record):
        return f"{field!r} is null"
    names = [str(name) for name in (columns if columns is not None else record)]
    shown = ", ".join(names[:most]) + (", ..." if len(names) > most else "")
    kind = "column" if columns is not None else "field"
    return f"no {field!r} {kind}" + (f" ({kind}s: {shown})" if names else f" (no {kind}s)")


def relative_id(uri: str, root: str) -> str:
    """A text file's document id: its path relative to the source root (the file name for a single file)."""
    return uri[len(root) :].lstrip("/") if uri.startswith(root) and uri != root else uri.rsplit("/", 1)[-1]


def record_to_document(
    record: dict[str, Any],
    uri: str,
    where: str,
    source: SourceConfig,
    id_field: str | None = None,
    text_field: str | None = None,
    columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Validate one record into a document row, or a skipped row with the reason (a field that is not there is
    said with the record's fields, or the file's ``columns`` when only some were read; a null one as null)."""
    id_field, text_field = id_field or source.id_field, text_field or source.text_field
    doc_id, text = record.get(id_field), record.get(text_field)
    snippet = json.dumps(record, default=str)[:SNIPPET_CHARS]
    if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        return skipped(uri, "missing_id", f"{where}: {_absence(record, id_field, columns)}", snippet)
    doc_id = str(doc_id)
    if text is None:
        return skipped(uri, "missing_text", f"{where}: {_absence(record, text_field, columns)}", snippet, doc_id)
    if not isinstance(text, str):
        return skipped(uri, "non_string_text", f"{where}: {text_field!r} is {type(text).__name__}", snippet, doc_id)
    if not text.strip():
        return skipped(uri, "empty_text", f"{where}: {text_field!r} is empty", snippet, doc_id)
    if len(text) > source.max_doc_chars:
        detail = f"{where}: {len(text)} chars > source.max_doc_chars {source.max_doc_chars}"
        return skipped(uri, "too_large", detail, snippet, doc_id)
    metadata = {name: record.get(name) for name in source.metadata_fields}
    return {
        schema.DOC_ID: doc_id,
        schema.TEXT: text,
        schema.SOURCE_URI: uri,
        schema.LOCATION: where,
        schema.METADATA: json.dumps(metadata, default=str, ensure_ascii=False),
        schema.ERROR: None,
        schema.ERROR_DETAIL: None,
        schema.SNIPPET: None,
        schema.DOC_FINGERPRINT: None,
        schema.CONTENT_SHA256: None,
    }


def skipped(uri: str, reason: str, detail: str, raw: bytes | str = b"", doc_id: str | None = None) -> dict[str, Any]:
    """A row for a record that cannot be indexed: ``error`` is the reason code, ``error_detail`` says where and
    what, ``snippet`` holds the start of the raw record."""
    snippet = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return {
        schema.DOC_ID: doc_id,
        schema.TEXT: None,
        schema.SOURCE_URI: uri,
        schema.LOCATION: None,
        schema.METADATA: None,
        schema.ERROR: reason,
        schema.ERROR_DETAIL: detail,
        schema.SNIPPET: snippet.strip()[:SNIPPET_CHARS] or None,
        schema.DOC_FINGERPRINT: None,
        schema.CONTENT_SHA256: None,
    }


def content_hash(text: str, metadata_json: str | None) -> str:
    """sha256 of a document's text and pass-through metadata (what the stored rows are made from)."""
    digest = hashlib.sha256(text.encode("utf-8"))
    digest.update(b"\x00" + (metadata_json or "").encode("utf-8"))
    return digest.hexdigest()
