"""Search a lateline table with the model that built it.

The query is embedded the way the model embeds a sentence (mean over all its tokens, L2-normalised) and
compared by cosine similarity with the stored chunk vectors. Searching a table with another model is refused
(:class:`pipeline.sink.TableMismatch`), since the scores would mean nothing.

Scores are exact cosines whether or not ``lateline maintain`` built an ANN index: an index compares compressed
vectors (PQ or SQ codes), so its candidates, ``REFINE_FACTOR`` times the hits asked for, are re-ranked by their
stored vectors. The hits are those candidates' best, not always the exact top k: on NFCorpus (11,901 chunks,
``benchmarks/ann_recall.py``) recall@10 against an exact search was about 0.52 without re-ranking, 0.91-0.92
with 10 candidates per hit and 0.986-0.988 with 50 (two index builds). Without an index the search is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import schema
from pipeline.config import JobConfig
from pipeline.embedding import embed_queries
from pipeline.model import load_model
from pipeline.sink import check_model, missing_table, open_table, read_table_record

BY_DOCUMENT_OVERSAMPLE = 10
REFINE_FACTOR = 50  # ANN candidates per hit, re-ranked by exact cosine on the stored vectors (see above)


@dataclass(frozen=True)
class Hit:
    score: float
    doc_id: str
    chunk_id: str
    char_start: int
    char_end: int
    text: str


class TableNotFound(RuntimeError):
    """The configured table does not exist yet."""


def search(
    config: JobConfig,
    queries: list[str],
    k: int = 10,
    by_document: bool = False,
    chunks_per_doc: int = BY_DOCUMENT_OVERSAMPLE,
) -> list[list[Hit]]:
    """Top ``k`` chunks (or, ``by_document``, the best chunk of each of the top ``k`` documents, found among
    the ``k * chunks_per_doc`` best chunks) per query."""
    table = open_table(config.sink.uri, config.sink.table, config.sink.storage_options)
    if table is None:
        raise TableNotFound(missing_table(config.sink.uri, config.sink.table, config.sink.storage_options))
    model = load_model(config.model, config.embedding.document_prefix)
    check_model(config.sink.table, read_table_record(table), model.identity)
    vectors = embed_queries(model, queries, config.embedding.query_prefix)
    limit = k * chunks_per_doc if by_document else k
    return [_hits(table, vector, limit, k, by_document) for vector in vectors]


def _hits(table, vector, limit: int, k: int, by_document: bool) -> list[Hit]:
    columns = [schema.DOC_ID, schema.CHUNK_ID, schema.CHAR_START, schema.CHAR_END, schema.TEXT]
    query = (
        table.search(vector)
        .distance_type("cosine")
        .refine_factor(REFINE_FACTOR)
        .select([*columns, "_distance"])
        .limit(limit)
    )
    rows = query.to_arrow().to_pylist()
    hits, seen = [], set()
    for row in rows:
        if by_document and row[schema.DOC_ID] in seen:
            continue
        seen.add(row[schema.DOC_ID])
        hits.append(
            Hit(
                1.0 - row["_distance"],
                row[schema.DOC_ID],
                row[schema.CHUNK_ID],
                row[schema.CHAR_START],
                row[schema.CHAR_END],
                row[schema.TEXT],
            )
        )
    return hits[:k]
