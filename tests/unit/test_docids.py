"""DocIdSet behaves as a set of str ids (checked against Python's set), in about 16 bytes an id."""

from __future__ import annotations

import random
from itertools import pairwise

import numpy as np
import pytest

from pipeline import docids
from pipeline.docids import DocIdSet, batched


@pytest.fixture(autouse=True)
def small_pending(monkeypatch) -> None:
    # Small runs, so a few thousand ids go through many flushes and merges.
    monkeypatch.setattr(docids, "PENDING_LIMIT", 16)


def test_answers_as_a_python_set_does_through_adds_updates_and_merges() -> None:
    rng = random.Random(7)
    ours, reference = DocIdSet(), set()
    for step in range(3_000):
        if step % 7 == 0:
            batch = [f"doc-{rng.randrange(4_000)}" for _ in range(rng.randrange(40))]
            ours.update(batch)
            reference.update(batch)
        else:
            doc = f"doc-{rng.randrange(4_000)}"
            ours.add(doc)
            reference.add(doc)
        if step % 500 == 0:
            assert len(ours) == len(reference)
    queries = [f"doc-{i}" for i in range(5_000)]
    assert ours.contains(queries).tolist() == [q in reference for q in queries]
    assert len(ours) == len(reference)
    assert all((q in ours) == (q in reference) for q in queries[::37])
    assert len(ours._runs) <= int(np.log2(len(reference) / docids.PENDING_LIMIT)) + 2  # runs stay few


def test_runs_stay_sorted_disjoint_and_each_under_half_the_one_before() -> None:
    ours = DocIdSet(f"id{i}" for i in range(1_000))
    ours.update(f"id{i}" for i in range(500, 1_500))
    runs = ours._runs
    assert all((run[1:] > run[:-1]).all() for run in runs)
    merged = np.concatenate(runs)
    assert len(np.unique(merged)) == len(merged)
    assert all(2 * len(newer) < len(older) for older, newer in pairwise(runs))
    assert len(ours) == 1_500


def test_update_from_another_set_and_ids_whose_digest_ends_in_zero_bytes() -> None:
    # About one digest in 256 ends in a zero byte, which NumPy's S16 items drop: those must still be found.
    zero_tailed = [f"z{i}" for i in range(20_000) if docids.digest(f"z{i}").endswith(b"\x00")][:20]
    assert len(zero_tailed) == 20
    first = DocIdSet(zero_tailed[:10])
    first.add(zero_tailed[10])
    assert all(doc in first for doc in zero_tailed[:11]) and len(first) == 11
    second = DocIdSet(["other"])
    second.update(first)
    assert all(doc in second for doc in zero_tailed[:11]) and len(second) == 12
    assert not second.contains(zero_tailed[11:]).any()


def test_empty_and_non_str_and_no_listing() -> None:
    empty = DocIdSet()
    assert len(empty) == 0 and "x" not in empty and empty.contains([]).tolist() == []
    assert 3 not in DocIdSet(["3"])
    with pytest.raises(TypeError, match="cannot list"):
        list(DocIdSet(["a"]))


def test_memory_is_the_digests(monkeypatch) -> None:
    monkeypatch.setattr(docids, "PENDING_LIMIT", 4096)
    ours = DocIdSet(f"document-{i:09d}" for i in range(100_000))
    assert len(ours) == 100_000
    assert ours.nbytes <= 16 * 100_000 and len(ours._pending) < 4096


def test_batched() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []


def test_fingerprint_index_answers_as_a_dict_does() -> None:
    from pipeline.docids import FingerprintIndex

    pairs = {f"doc-{i}": f"{i * 7919:032x}" for i in range(3_000)}
    index = FingerprintIndex(pairs.items())
    assert len(index) == 3_000
    assert all(index.get(doc) == fingerprint for doc, fingerprint in pairs.items())
    assert index.get("absent") is None and index.get("absent", "x") == "x"
    assert FingerprintIndex().get("a") is None and len(FingerprintIndex()) == 0
