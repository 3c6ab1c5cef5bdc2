"""The documents a table holds, as the driver keeps them for a run: id, fingerprint and source object.

An incremental run needs, for every stored document, its fingerprint (to skip it when unchanged) and its object
(to hand each reader just its objects' share, to tell which documents are gone). Held as Python strings in a
dict that cost about 225 bytes a document on the driver (a gigabyte per five million); as Arrow columns, with
the object names dictionary-encoded, it is about 60 (12-character ids, 32-character fingerprints). Python
values are made only for the part a caller asks for, a batch at a time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema

COLUMNS = (schema.DOC_ID, schema.DOC_FINGERPRINT, schema.SOURCE_URI)
ITER_BATCH = 65_536  # rows turned into Python values at once


class KnownDocuments:
    """``doc_id -> (doc_fingerprint, source_uri)``, read-only, one entry per document (ids are unique)."""

    def __init__(self, rows: pa.Table | None = None) -> None:
        if rows is None:
            rows = pa.table({name: pa.array([], pa.string()) for name in COLUMNS})
        rows = rows.select(list(COLUMNS))
        uris = rows[schema.SOURCE_URI].combine_chunks()
        if not pa.types.is_dictionary(uris.type):
            # One string per object, shared by its documents, not one per document.
            uris = pc.dictionary_encode(uris, null_encoding="encode")
        self._rows = rows.set_column(2, schema.SOURCE_URI, uris).combine_chunks()

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, tuple[str, str]]) -> KnownDocuments:
        """From a plain ``doc_id -> (fingerprint, source_uri)`` mapping (tests, small tables)."""
        ids = list(mapping)
        return cls(
            pa.table(
                {
                    schema.DOC_ID: pa.array(ids, pa.string()),
                    schema.DOC_FINGERPRINT: pa.array([mapping[doc][0] for doc in ids], pa.string()),
                    schema.SOURCE_URI: pa.array([mapping[doc][1] for doc in ids], pa.string()),
                }
            )
        )

    def __len__(self) -> int:
        return self._rows.num_rows

    def __iter__(self) -> Iterator[str]:
        """The document ids."""
        for batch in self._rows.to_batches(ITER_BATCH):
            yield from batch.column(0).to_pylist()

    def items(self) -> Iterator[tuple[str, tuple[str, str]]]:
        """``(doc_id, (fingerprint, source_uri))`` for every document, made a batch at a time."""
        for batch in self._rows.to_batches(ITER_BATCH):
            ids, fingerprints, uris = (batch.column(i).to_pylist() for i in range(3))
            yield from zip(ids, zip(fingerprints, uris))

    @property
    def nbytes(self) -> int:
        """Bytes its Arrow buffers take."""
        return self._rows.nbytes

    def docs_per_object(self) -> Counter:
        """``source_uri -> number of documents`` the table holds from that object."""
        uris = self._uris()
        counts = pc.value_counts(uris.indices)
        names = uris.dictionary.to_pylist()
        return Counter(
            {names[index]: count for index, count in zip(counts.field(0).to_pylist(), counts.field(1).to_pylist())}
        )

    def in_objects(self, paths: Iterable[str], inside: bool = True) -> KnownDocuments:
        """The documents whose object is one of ``paths`` (``inside=False``: whose object is not)."""
        uris = self._uris()
        listed = pc.is_in(uris.dictionary, value_set=pa.array(list(paths), pa.string()))
        rows_listed = pc.fill_null(pc.take(listed, uris.indices), False)
        return KnownDocuments(self._rows.filter(rows_listed if inside else pc.invert(rows_listed)))

    def grouped_by(self, paths: Sequence[str]) -> tuple[np.ndarray, pa.Array, pa.Array]:
        """The documents of each of ``paths`` in turn, as ``(offsets, doc_ids, fingerprints)``: those of
        ``paths[i]`` are at ``offsets[i]:offsets[i + 1]`` (the layout of an Arrow list column); documents of
        other objects are left out. No Python value is made per document."""
        uris = self._uris()
        position = {path: index for index, path in enumerate(paths)}
        object_of_name = np.array([position.get(name, -1) for name in uris.dictionary.to_pylist()], dtype=np.int64)
        object_of_row = object_of_name[uris.indices.to_numpy(zero_copy_only=False)] if len(uris) else np.zeros(0, int)
        kept = np.flatnonzero(object_of_row >= 0)
        order = pa.array(kept[np.argsort(object_of_row[kept], kind="stable")])
        counts = np.bincount(object_of_row[kept], minlength=len(paths))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        ids, fingerprints = (self._rows[name].take(order).combine_chunks() for name in COLUMNS[:2])
        return offsets, ids, fingerprints

    def _uris(self) -> Any:
        column = self._rows[schema.SOURCE_URI]
        return column.chunk(0) if column.num_chunks else pa.array([], column.type)


def read_known_documents(table: Any) -> KnownDocuments:
    """What ``table`` (a LanceDB table, or ``None``) holds: one scan of its chunk-0 rows."""
    if table is None or table.count_rows() == 0:
        return KnownDocuments()
    rows = table.search().where(f"{schema.CHUNK_INDEX} = 0").select(list(COLUMNS)).limit(table.count_rows()).to_arrow()
    return KnownDocuments(rows)
