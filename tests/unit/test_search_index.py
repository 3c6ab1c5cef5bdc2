"""Search through an ANN index returns exact cosine scores, best first (real LanceDB in a temp dir)."""

from __future__ import annotations

import lancedb
import numpy as np
import pyarrow as pa

from pipeline import schema
from pipeline.search import _hits

DIM, ROWS = 384, 2_000


def clustered_vectors(rng: np.random.Generator) -> np.ndarray:
    """Rows around 20 centres: close neighbours that a product quantizer blurs together."""
    centres = rng.normal(size=(20, DIM))
    return (centres[rng.integers(0, 20, ROWS)] + 0.5 * rng.normal(size=(ROWS, DIM))).astype("float32")


def test_scores_through_an_ivf_pq_index_are_exact_cosines(tmp_path) -> None:
    rng = np.random.default_rng(0)
    vectors = clustered_vectors(rng)
    ids = [f"c{i}" for i in range(ROWS)]
    data = pa.table(
        {
            schema.DOC_ID: ids,
            schema.CHUNK_ID: ids,
            schema.CHAR_START: pa.array([0] * ROWS, pa.int32()),
            schema.CHAR_END: pa.array([1] * ROWS, pa.int32()),
            schema.TEXT: ids,
            schema.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        }
    )
    table = lancedb.connect(tmp_path / "db").create_table("chunks", data=data)
    table.create_index(metric="cosine", vector_column_name=schema.VECTOR, index_type="IVF_PQ")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for row in (5, 700, 1_500):
        query = vectors[row] + 0.3 * rng.normal(size=DIM).astype("float32")
        exact = unit @ (query / np.linalg.norm(query))
        hits = _hits(table, query, limit=5, k=5, by_document=False)
        # Which neighbours the index finds depends on its (randomly trained) partitions; the scores must not.
        assert np.allclose([hit.score for hit in hits], [exact[ids.index(hit.chunk_id)] for hit in hits], atol=1e-4)
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
        assert hits[0].chunk_id == ids[row], "the query's own row, far ahead of the rest"
