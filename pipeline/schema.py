"""Column names and Arrow schemas: the one source of truth for what flows between stages and what is stored.

Offset convention (everywhere in lateline): spans are half-open ``[start, end)``. Char offsets index the
original document text (Python ``str`` positions), so ``text[char_start:char_end]`` is the chunk. Token offsets
index the document's own tokens, without special tokens and without the document prefix.
"""

from __future__ import annotations

import pyarrow as pa

# --- documents, as read from a source (reader -> chunker) -----------------------------------------------
DOC_ID = "doc_id"
TEXT = "text"
SOURCE_URI = "source_uri"
# Where a good record sits in its object: ``line 12`` (JSONL), ``row 3`` (Parquet), ``file`` (a text file); null
# for a document rebuilt from a table (re-embed) and for a skipped record (its ``error_detail`` starts with it).
# It travels with the rows to the sink, which names the dropped copy of a duplicate id by it; it is not stored.
LOCATION = "location"
METADATA = "metadata"  # JSON object of the configured pass-through fields
ERROR = "error"  # reason code of a record that is skipped; null for a good record
ERROR_DETAIL = "error_detail"  # where (file line / row) and what went wrong
SNIPPET = "snippet"  # the start of the raw record, for dead letters
DOC_FINGERPRINT = "doc_fingerprint"
CONTENT_SHA256 = "content_sha256"  # sha256 of text + metadata: lets a re-embed keep fingerprints comparable
UNCHANGED = "unchanged"  # the ``error`` of a document whose fingerprint the table already holds (not a failure)

DOCUMENTS = pa.schema(
    [
        pa.field(DOC_ID, pa.string()),
        pa.field(TEXT, pa.string()),
        pa.field(SOURCE_URI, pa.string()),
        pa.field(LOCATION, pa.string()),
        pa.field(METADATA, pa.string()),
        pa.field(ERROR, pa.string()),
        pa.field(ERROR_DETAIL, pa.string()),
        pa.field(SNIPPET, pa.string()),
        pa.field(DOC_FINGERPRINT, pa.string()),
        pa.field(CONTENT_SHA256, pa.string()),
    ]
)

# --- tokenized documents with their chunk spans (chunker -> embedder) ----------------------------------
INPUT_IDS = "input_ids"
CHAR_STARTS = "char_starts"
CHAR_ENDS = "char_ends"
TOKEN_STARTS = "token_starts"
TOKEN_ENDS = "token_ends"

_int_list = pa.list_(pa.int32())
CHUNKED_DOCUMENTS = pa.schema(
    [
        *list(DOCUMENTS),
        pa.field(INPUT_IDS, _int_list),
        pa.field(CHAR_STARTS, _int_list),
        pa.field(CHAR_ENDS, _int_list),
        pa.field(TOKEN_STARTS, _int_list),
        pa.field(TOKEN_ENDS, _int_list),
    ]
)

# --- chunk rows (embedder -> sink -> LanceDB) ------------------------------------------------------------
CHUNK_ID = "chunk_id"
CHUNK_INDEX = "chunk_index"
CHUNK_COUNT = "chunk_count"
CHAR_START = "char_start"
CHAR_END = "char_end"
TOKEN_START = "token_start"
TOKEN_END = "token_end"
VECTOR = "vector"
MODEL = "model"

TABLE_METADATA_KEY = b"lateline"  # JSON: model identity and embedding settings the table was built with


VECTOR_TYPES = {"float32": pa.float32(), "float16": pa.float16()}


def chunk_schema(dim: int, vector_dtype: str = "float32") -> pa.Schema:
    """Schema of the stored table: one row per chunk, ``vector`` a fixed-size list of ``dim`` floats
    (``float32``, or ``float16`` at half the size)."""
    return pa.schema(
        [
            pa.field(CHUNK_ID, pa.string(), nullable=False),
            pa.field(DOC_ID, pa.string(), nullable=False),
            pa.field(CHUNK_INDEX, pa.int32()),
            pa.field(CHUNK_COUNT, pa.int32()),
            pa.field(TEXT, pa.string()),
            pa.field(CHAR_START, pa.int32()),
            pa.field(CHAR_END, pa.int32()),
            pa.field(TOKEN_START, pa.int32()),
            pa.field(TOKEN_END, pa.int32()),
            pa.field(VECTOR, pa.list_(VECTOR_TYPES[vector_dtype], dim)),
            pa.field(MODEL, pa.string()),
            pa.field(DOC_FINGERPRINT, pa.string()),
            pa.field(SOURCE_URI, pa.string()),
            pa.field(METADATA, pa.string()),
            pa.field(CONTENT_SHA256, pa.string()),
        ]
    )


def embedded_schema(dim: int) -> pa.Schema:
    """What the embedder emits: stored chunk columns, each row's ``location`` in its object, and the skip columns
    (rows of skipped documents carry ``error`` and a null vector; the sink counts them and never stores them)."""
    skip_columns = [pa.field(name, pa.string()) for name in (LOCATION, ERROR, ERROR_DETAIL, SNIPPET)]
    return pa.schema([*list(chunk_schema(dim)), *skip_columns])


def chunk_id(doc_id: str, chunk_index: int) -> str:
    """Stable, unique chunk id: the document id and the chunk's position in it (``doc#7``)."""
    return f"{doc_id}#{chunk_index}"


def require_columns(table: pa.Table, needed: pa.Schema | list[str], stage: str) -> None:
    """Raise a ``ValueError`` naming the stage and the missing columns when ``table`` lacks any of them."""
    names = needed.names if isinstance(needed, pa.Schema) else needed
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise ValueError(f"{stage}: input is missing columns {missing} (has {table.column_names})")
