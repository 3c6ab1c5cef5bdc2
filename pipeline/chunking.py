"""PURE: split a tokenized document into chunk spans with char and token offsets.

Input is the document text and its token char offsets (one ``(start, end)`` per token, no special tokens, as a
fast tokenizer reports them). Output is a list of :class:`Span`, half-open in both units:
``text[char_start:char_end]`` is the chunk and ``tokens[token_start:token_end]`` are its tokens.

Invariants (tested): with no overlap, token spans tile ``[0, n_tokens)`` in order; a chunk's char span runs from
its first token's start to its last token's end, so the text between two chunks holds no token; no chunk is
longer than ``size`` tokens.

Strategies are versioned (``tokens@v1`` ...): a change in how spans come out must bump the version, because the
version is part of every document fingerprint.
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import NamedTuple

STRATEGY_VERSIONS = {
    "tokens": "tokens@v1",
    "sentences": "sentences@v1",
    "paragraphs": "paragraphs@v1",
    "none": "none@v1",  # the whole document as one chunk (naive mode truncates it to the window)
}

Offsets = Sequence[tuple[int, int]]


class Span(NamedTuple):
    char_start: int
    char_end: int
    token_start: int
    token_end: int


def chunk_spans(
    text: str,
    offsets: Offsets,
    strategy: str,
    size: int,
    overlap: int = 0,
    sentences_per_chunk: int = 4,
    min_tokens: int = 0,
) -> list[Span]:
    """Chunk spans of one document by ``strategy`` (``tokens``, ``sentences``, ``paragraphs``, or ``none``: one
    span over the whole document, ``size`` not applied)."""
    if strategy == "tokens":
        bounds = token_windows(len(offsets), size, overlap)
    elif strategy == "sentences":
        units = unit_token_bounds(sentence_starts(text), offsets)
        bounds = pack_units(units, size, max_units=sentences_per_chunk)
    elif strategy == "paragraphs":
        bounds = paragraph_bounds(text, offsets, size, min_tokens)
    elif strategy == "none":
        bounds = [(0, len(offsets))] if offsets else []
    else:
        raise ValueError(f"chunking.strategy: unknown strategy {strategy!r} (allowed: {sorted(STRATEGY_VERSIONS)})")
    return [to_span(offsets, start, end) for start, end in bounds]


def to_span(offsets: Offsets, token_start: int, token_end: int) -> Span:
    """The span of tokens ``[token_start, token_end)`` with char offsets from its first and last token."""
    return Span(offsets[token_start][0], offsets[token_end - 1][1], token_start, token_end)


def token_windows(n_tokens: int, size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Windows of ``size`` tokens, consecutive ones sharing ``overlap`` tokens; the last ends at ``n_tokens``."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need size > 0 and 0 <= overlap < size (got size={size}, overlap={overlap})")
    windows, start = [], 0
    while start < n_tokens:
        end = min(start + size, n_tokens)
        windows.append((start, end))
        if end == n_tokens:
            break
        start = end - overlap
    return windows


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*|\n(?=#{1,6}\s)")


def sentence_starts(text: str) -> list[int]:
    """Char positions where sentences start (always ``0`` first): after ``.``/``!``/``?`` and whitespace, or
    after a blank line. A heuristic, language-agnostic enough for prose and markdown."""
    return [0] + [m.end() for m in _SENTENCE_END.finditer(text) if 0 < m.end() < len(text)]


def paragraph_starts(text: str) -> list[int]:
    """Char positions where paragraphs start: after blank lines, and at every markdown heading line."""
    return [0] + [m.end() for m in _PARAGRAPH_BREAK.finditer(text) if 0 < m.end() < len(text)]


def unit_token_bounds(unit_char_starts: Sequence[int], offsets: Offsets) -> list[int]:
    """Token boundaries ``[0, b1, ..., n_tokens]`` of text units (sentences, paragraphs) given their char starts.

    A token belongs to the unit its first char falls in; units without tokens vanish.
    """
    token_starts = [start for start, _ in offsets]
    bounds = sorted({bisect_left(token_starts, c) for c in unit_char_starts} | {0, len(offsets)})
    return [b for b in bounds if b <= len(offsets)]


def pack_units(bounds: Sequence[int], size: int, max_units: int | None = None) -> list[tuple[int, int]]:
    """Greedily join consecutive units (given by token ``bounds``) into chunks of at most ``size`` tokens and
    ``max_units`` units; a unit longer than ``size`` is cut into ``size``-token windows on its own."""
    chunks: list[tuple[int, int]] = []
    start, units = bounds[0], 0
    for unit_start, unit_end in itertools.pairwise(bounds):
        if unit_end - start > size or (max_units is not None and units >= max_units):
            if units:
                chunks.append((start, unit_start))
            start, units = unit_start, 0
        if unit_end - unit_start > size:
            chunks.extend((unit_start + a, unit_start + b) for a, b in token_windows(unit_end - unit_start, size))
            start, units = unit_end, 0
            continue
        units += 1
    if units:
        chunks.append((start, bounds[-1]))
    return chunks


def paragraph_bounds(text: str, offsets: Offsets, size: int, min_tokens: int) -> list[tuple[int, int]]:
    """One chunk per paragraph; long paragraphs split on sentences (then tokens) under ``size``; chunks under
    ``min_tokens`` merged into a neighbour while the merge stays within ``size``."""
    sentence_bounds = unit_token_bounds(sentence_starts(text), offsets)
    paragraphs = unit_token_bounds(paragraph_starts(text), offsets)
    chunks: list[tuple[int, int]] = []
    for start, end in itertools.pairwise(paragraphs):
        if end - start <= size:
            chunks.append((start, end))
            continue
        inner = [start] + [b for b in sentence_bounds if start < b < end] + [end]
        chunks.extend(pack_units(inner, size))
    return merge_small(chunks, size, min_tokens)


def merge_small(chunks: list[tuple[int, int]], size: int, min_tokens: int) -> list[tuple[int, int]]:
    """Join each chunk shorter than ``min_tokens`` to the following one when the joined chunk stays within
    ``size`` (so a short heading opens its section's chunk), else to the previous one when that fits, else
    keep it. Contiguous input stays contiguous."""
    merged: list[tuple[int, int]] = []
    waiting: tuple[int, int] | None = None  # a small chunk to be joined with the next one
    for start, end in chunks:
        if waiting is not None:
            if end - waiting[0] <= size:
                start = waiting[0]
            else:
                _join_previous_or_keep(merged, waiting, size)
            waiting = None
        if end - start < min_tokens:
            waiting = (start, end)
        else:
            merged.append((start, end))
    if waiting is not None:
        _join_previous_or_keep(merged, waiting, size)
    return merged


def _join_previous_or_keep(merged: list[tuple[int, int]], small: tuple[int, int], size: int) -> None:
    if merged and small[1] - merged[-1][0] <= size:
        merged[-1] = (merged[-1][0], small[1])
    else:
        merged.append(small)


def token_spans_for_chars(offsets: Offsets, char_spans: Sequence[tuple[int, int]]) -> list[Span]:
    """Spans for given char ranges (a re-embed keeps the stored chunks): each ``[char_start, char_end)`` keeps
    its char offsets and gets the tokens that overlap it (a token ending after ``char_start`` and starting
    before ``char_end``). A range no token overlaps gets an empty token span (``token_start == token_end``)."""
    token_starts = [start for start, _ in offsets]
    token_ends = [end for _, end in offsets]
    spans = []
    for char_start, char_end in char_spans:
        first = bisect_right(token_ends, char_start)
        last = max(first, bisect_left(token_starts, char_end))
        spans.append(Span(char_start, char_end, first, last))
    return spans


def rebuild_text(chunks: Sequence[tuple[int, int, str]]) -> str:
    """A document's text from its stored chunks ``(char_start, char_end, text)`` (any order, may overlap).

    Every chunk's text lands at its char offsets, so ``text[char_start:char_end]`` is each chunk again and all
    token positions are preserved. The gaps between chunks held only whitespace (chunk spans run from a token's
    start to a token's end), which is not stored: a one-char gap becomes a space, a longer one a blank line
    (the usual paragraph break). Tokens are unaffected, but a re-chunk by ``sentences`` or ``paragraphs`` sees
    these guessed breaks, so it can differ from chunking the original text.
    """
    parts: list[str] = []
    position = 0
    for char_start, char_end, text in sorted(chunks):
        if char_start > position:
            gap = char_start - position
            parts.append(" " if gap == 1 else "\n" + " " * (gap - 2) + "\n")
            position = char_start
        if char_end > position:
            parts.append(text[position - char_start :])
            position = char_end
    return "".join(parts)
