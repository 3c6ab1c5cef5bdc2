"""PURE: a set of document ids that costs about 16 bytes an id, for the sets a run's driver holds.

The driver remembers every document id a run writes, keeps or finds unchanged: to drop a second copy of an
id, and to tell which stored documents are gone from the source. As Python sets of ``str`` those cost about
100 bytes an id (a gigabyte per ten million documents). :class:`DocIdSet` holds each id as its 128-bit
BLAKE2b digest in sorted NumPy arrays instead. Two different ids share a digest with probability about
``n**2 / 2**129`` (1e-23 at a hundred million ids), far below the trust the pipeline already puts in its
content fingerprints.

Layout: new digests wait in a small Python set; every ``PENDING_LIMIT`` of them become a sorted run, and runs
merge whenever the newer is at least half the size of the older, so there are at most about
``log2(n / PENDING_LIMIT)`` runs, each digest is copied ``O(log n)`` times in all, and the peak while merging
is the two runs being merged. Look-ups of many ids at once (:meth:`DocIdSet.contains`) cost one vectorised
binary search per run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

DIGEST_BYTES = 16
PENDING_LIMIT = 4096
_DTYPE = np.dtype(f"S{DIGEST_BYTES}")
T = TypeVar("T")


def digest(doc_id: str) -> bytes:
    """The 16-byte BLAKE2b digest that stands for ``doc_id``."""
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=DIGEST_BYTES).digest()


def digests(doc_ids: Iterable[str]) -> np.ndarray:
    """Digests of ``doc_ids`` as an ``S16`` array, in order."""
    return np.array([digest(doc) for doc in doc_ids], dtype=_DTYPE)


def _key(doc_id: str) -> bytes:
    # NumPy hands ``S16`` items back without trailing zero bytes; pending keys must compare equal to those.
    return digest(doc_id).rstrip(b"\x00")


class DocIdSet:
    """A set of ``str`` ids: ``add``, ``update``, ``in``, ``len`` and :meth:`contains` for many ids at once.
    Ids cannot be listed back (only their digests are kept): iterate the table or the source for that."""

    def __init__(self, doc_ids: Iterable[str] = ()) -> None:
        self._runs: list[np.ndarray] = []  # sorted, disjoint, unique digests; each under half the one before
        self._pending: set[bytes] = set()  # digests added since the last flush (some may be in a run too)
        self.update(doc_ids)

    def add(self, doc_id: str) -> None:
        self._pending.add(_key(doc_id))
        if len(self._pending) >= PENDING_LIMIT:
            self._flush()

    def update(self, doc_ids: Iterable[str] | DocIdSet) -> None:
        """Add every id of ``doc_ids`` (ids, or another :class:`DocIdSet`)."""
        for keys in _key_batches(doc_ids):
            self._pending.update(keys.tolist())
            if len(self._pending) >= PENDING_LIMIT:
                self._flush()

    def contains(self, doc_ids: Sequence[str]) -> np.ndarray:
        """A boolean array: whether each of ``doc_ids`` is in the set."""
        keys = digests(doc_ids)
        found = self._in_runs(keys)
        if self._pending:
            found |= np.fromiter((key in self._pending for key in keys.tolist()), dtype=bool, count=len(keys))
        return found

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and bool(self.contains([doc_id])[0])

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs) + len(self._unsettled())

    def __iter__(self) -> Iterator[str]:
        raise TypeError("a DocIdSet keeps digests, not ids: it cannot list them")

    @property
    def nbytes(self) -> int:
        """Bytes its sorted runs take (pending digests, at most ``PENDING_LIMIT``, not counted)."""
        return sum(run.nbytes for run in self._runs)

    def _unsettled(self) -> np.ndarray:
        """Pending digests that no run holds yet."""
        keys = np.array(list(self._pending), dtype=_DTYPE)
        return keys[~self._in_runs(keys)]

    def _in_runs(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            positions = np.searchsorted(run, keys).clip(max=len(run) - 1)
            found |= run[positions] == keys
        return found

    def _flush(self) -> None:
        """Turn the pending digests into a run, then merge runs until each is under half the one before."""
        fresh = np.sort(self._unsettled())
        self._pending.clear()
        if not len(fresh):
            return
        self._runs.append(fresh)
        while len(self._runs) > 1 and 2 * len(self._runs[-1]) >= len(self._runs[-2]):
            newer, older = self._runs.pop(), self._runs.pop()
            self._runs.append(np.sort(np.concatenate([older, newer])))


def _key_batches(doc_ids: Iterable[str] | DocIdSet) -> Iterator[np.ndarray]:
    """``doc_ids``' digests in arrays of at most ``PENDING_LIMIT``."""
    if isinstance(doc_ids, DocIdSet):
        for run in [*doc_ids._runs, np.array(list(doc_ids._pending), dtype=_DTYPE)]:
            for start in range(0, len(run), PENDING_LIMIT):
                yield run[start : start + PENDING_LIMIT]
        return
    for batch in batched(doc_ids, PENDING_LIMIT):
        yield digests(batch)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter; none when ``items`` is empty)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class FingerprintIndex:
    """``doc_id -> fingerprint`` for many documents, read-only: the ids' digests sorted in one NumPy array and
    the fingerprints (ASCII) in another, about 48 bytes a document. Ray ships NumPy arrays without copying them
    into each process, so every reader on a node shares one copy, where a dict would be unpickled into ~150
    bytes of Python objects a document in each."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        ids, fingerprints = [], []
        for doc_id, fingerprint in items:
            ids.append(doc_id)
            fingerprints.append(fingerprint.encode("ascii"))
        keys = digests(ids)
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._fingerprints = np.array(fingerprints, dtype=bytes)[order] if fingerprints else np.array([], "S1")

    def get(self, doc_id: str, default: str | None = None) -> str | None:
        if not len(self._keys):
            return default
        key = np.array([digest(doc_id)], dtype=_DTYPE)
        position = min(int(np.searchsorted(self._keys, key)[0]), len(self._keys) - 1)
        if self._keys[position] != key[0]:
            return default
        return self._fingerprints[position].decode("ascii")

    def __len__(self) -> int:
        return len(self._keys)
