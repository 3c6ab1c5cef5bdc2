"""chunking.py: spans tile the document, respect the size cap, and index the original text (str positions)."""

from __future__ import annotations

import itertools
import random
from bisect import bisect_right
from collections.abc import Sequence
from pydoc_data.topics import topics
from typing import NamedTuple

import pytest

from pipeline.chunking import (
    Span,
    chunk_spans,
    merge_small,
    pack_units,
    paragraph_bounds,
    paragraph_starts,
    sentence_starts,
    token_windows,
    unit_token_bounds,
)

MARKDOWN = (
    """# Lateline

Lateline embeds documents in chunks. Every chunk sees its whole document! Does it scale? It does.

## Install
Run the installer. Then configure the source; see the table below.

- first item of a list
- second item, a little longer than the first one

### Usage notes
Short.

## A long section

"""
    + " ".join(f"Sentence number {i} talks about late chunking and macro windows." for i in range(40))
    + """

#### Tail
The end.
"""
)

NON_ASCII = (
    "Crème brûlée à la façade — naïve café! 👍 Emoji 🎉 mid-sentence. 東京は日本の首都です 東京は大きい。\n\n"
    "Второе предложение здесь. Ελληνικά κείμενο εδώ? Ünïcödé ends here.\n\n"
    "## Überschrift\nMehr Text mit Umlauten: äöü ß. 한국어 문장도 있습니다."
)


class Doc(NamedTuple):
    name: str
    text: str
    offsets: list[tuple[int, int]]
    prose: bool  # text between tokens is whitespace only (no chars the tokenizer drops)


@pytest.fixture(scope="module")
def corpus(encode_offsets) -> list[Doc]:
    docs = [Doc(name, text, encode_offsets(text), True) for name, text in sorted(topics.items())]
    docs.append(Doc("markdown", MARKDOWN, encode_offsets(MARKDOWN), True))
    docs.append(Doc("non_ascii", NON_ASCII, encode_offsets(NON_ASCII), True))
    return docs


def assert_valid_spans(doc: Doc, spans: Sequence[Span], size: int) -> None:
    """Tiling, size cap, char/token agreement and whitespace-only gaps (overlap 0)."""
    n = len(doc.offsets)
    if n == 0:
        assert spans == []
        return
    assert spans[0].token_start == 0, doc.name
    assert spans[-1].token_end == n, doc.name
    for previous, current in itertools.pairwise(spans):
        assert current.token_start == previous.token_end, (doc.name, previous, current)
    for span in spans:
        assert 0 < span.token_end - span.token_start <= size, (doc.name, span)
        assert span.char_start == doc.offsets[span.token_start][0]
        assert span.char_end == doc.offsets[span.token_end - 1][1]
        chunk = doc.text[span.char_start : span.char_end]
        first, last = doc.offsets[span.token_start], doc.offsets[span.token_end - 1]
        assert chunk.startswith(doc.text[first[0] : first[1]])
        assert chunk.endswith(doc.text[last[0] : last[1]])
    if doc.prose:
        gaps = [doc.text[a.char_end : b.char_start] for a, b in itertools.pairwise(spans)]
        assert all(gap.strip() == "" for gap in gaps), (doc.name, [g for g in gaps if g.strip()][:3])
        assert doc.text[: spans[0].char_start].strip() == ""
        assert doc.text[spans[-1].char_end :].strip() == ""


def unit_bounds(text: str, offsets: Sequence[tuple[int, int]], starts_of) -> list[int]:
    return unit_token_bounds(starts_of(text), offsets)


# --- invariants over real prose, every strategy -----------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 64, 256])
def test_token_spans_tile_and_index_text(corpus: list[Doc], size: int) -> None:
    for doc in corpus:
        assert_valid_spans(doc, chunk_spans(doc.text, doc.offsets, "tokens", size), size)


@pytest.mark.parametrize(("size", "per_chunk"), [(8, 4), (32, 1), (64, 3), (512, 4)])
def test_sentence_spans_tile_and_index_text(corpus: list[Doc], size: int, per_chunk: int) -> None:
    for doc in corpus:
        spans = chunk_spans(doc.text, doc.offsets, "sentences", size, sentences_per_chunk=per_chunk)
        assert_valid_spans(doc, spans, size)


@pytest.mark.parametrize(("size", "min_tokens"), [(8, 0), (64, 0), (64, 16), (256, 32), (1024, 0)])
def test_paragraph_spans_tile_and_index_text(corpus: list[Doc], size: int, min_tokens: int) -> None:
    for doc in corpus:
        spans = chunk_spans(doc.text, doc.offsets, "paragraphs", size, min_tokens=min_tokens)
        assert_valid_spans(doc, spans, size)


@pytest.mark.parametrize(("size", "overlap"), [(2, 1), (16, 4), (64, 63), (128, 32)])
def test_token_windows_with_overlap_share_exactly_overlap_tokens(corpus: list[Doc], size: int, overlap: int) -> None:
    for doc in corpus[::4]:
        n = len(doc.offsets)
        spans = chunk_spans(doc.text, doc.offsets, "tokens", size, overlap=overlap)
        assert spans[0].token_start == 0
        assert spans[-1].token_end == n
        for previous, current in itertools.pairwise(spans):
            assert previous.token_end - current.token_start == overlap
            assert current.token_start > previous.token_start
        assert all(s.token_end - s.token_start == size for s in spans[:-1])
        assert all(s.char_start == doc.offsets[s.token_start][0] for s in spans)
        assert all(s.char_end == doc.offsets[s.token_end - 1][1] for s in spans)


@pytest.mark.parametrize(("size", "per_chunk"), [(16, 1), (64, 2), (256, 3), (4096, 4)])
def test_sentence_chunks_hold_at_most_sentences_per_chunk(corpus: list[Doc], size: int, per_chunk: int) -> None:
    for doc in corpus:
        bounds = unit_bounds(doc.text, doc.offsets, sentence_starts)
        for span in chunk_spans(doc.text, doc.offsets, "sentences", size, sentences_per_chunk=per_chunk):
            # sentences the chunk touches: those whose token range meets [token_start, token_end)
            touched = bisect_right(bounds, span.token_end - 1) - bisect_right(bounds, span.token_start) + 1
            assert touched <= per_chunk, (doc.name, span, touched)


@pytest.mark.parametrize("size", [8, 40, 200])
def test_sentence_chunks_start_on_a_sentence_unless_the_sentence_is_too_long(corpus: list[Doc], size: int) -> None:
    for doc in corpus:
        bounds = unit_bounds(doc.text, doc.offsets, sentence_starts)
        for span in chunk_spans(doc.text, doc.offsets, "sentences", size):
            if span.token_start in bounds:
                continue
            sentence = bisect_right(bounds, span.token_start) - 1
            assert bounds[sentence + 1] - bounds[sentence] > size, (doc.name, span)


@pytest.mark.parametrize("size", [8, 64, 512])
def test_paragraph_chunks_never_cross_a_paragraph_or_heading_without_merging(corpus: list[Doc], size: int) -> None:
    for doc in corpus:
        paragraphs = set(unit_bounds(doc.text, doc.offsets, paragraph_starts))
        for span in chunk_spans(doc.text, doc.offsets, "paragraphs", size, min_tokens=0):
            inside = [b for b in paragraphs if span.token_start < b < span.token_end]
            assert inside == [], (doc.name, span, inside)


def test_markdown_headings_start_chunks(encode_offsets) -> None:
    offsets = encode_offsets(MARKDOWN)
    spans = chunk_spans(MARKDOWN, offsets, "paragraphs", 512, min_tokens=0)
    starts = [MARKDOWN[s.char_start : s.char_end].splitlines()[0] for s in spans]
    for heading in ("# Lateline", "## Install", "### Usage notes", "## A long section", "#### Tail"):
        assert heading in starts, starts
    # "## Install" is followed by its text on the next line: heading and body form one paragraph
    install = next(MARKDOWN[s.char_start : s.char_end] for s in spans if MARKDOWN[s.char_start :].startswith("## I"))
    assert install.startswith("## Install\nRun the installer.")


@pytest.mark.parametrize(("size", "min_tokens"), [(64, 16), (256, 32), (512, 64)])
def test_paragraph_chunks_cross_a_paragraph_only_when_a_small_piece_was_merged(
    corpus: list[Doc], size: int, min_tokens: int
) -> None:
    for doc in corpus:
        unmerged = paragraph_bounds(doc.text, doc.offsets, size, 0)
        piece_starts = {start for start, _ in unmerged}
        lengths = {start: end - start for start, end in unmerged}
        for span in chunk_spans(doc.text, doc.offsets, "paragraphs", size, min_tokens=min_tokens):
            assert span.token_start in piece_starts  # merging joins whole pieces
            assert span.token_end == len(doc.offsets) or span.token_end in piece_starts
            pieces = sorted(b for b in piece_starts if span.token_start <= b < span.token_end)
            if len(pieces) > 1:
                assert any(lengths[p] < min_tokens for p in pieces), (doc.name, span)


# --- empty input and errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["tokens", "sentences", "paragraphs"])
@pytest.mark.parametrize("text", ["", "   \n\n\t  "])
def test_empty_or_blank_input_has_no_spans(encode_offsets, strategy: str, text: str) -> None:
    assert chunk_spans(text, encode_offsets(text), strategy, 16, min_tokens=4) == []


def test_unknown_strategy_is_named(encode_offsets) -> None:
    with pytest.raises(ValueError, match=r"chunking\.strategy.*'words'"):
        chunk_spans("Some text.", encode_offsets("Some text."), "words", 16)


@pytest.mark.parametrize(
    ("size", "overlap", "named"),
    [(0, 0, "size"), (-3, 0, "size"), (8, 8, "overlap"), (8, 9, "overlap"), (8, -1, "overlap")],
)
def test_invalid_token_window_settings_raise(encode_offsets, size: int, overlap: int, named: str) -> None:
    text = "A few words to chunk."
    with pytest.raises(ValueError, match=named) as info:
        chunk_spans(text, encode_offsets(text), "tokens", size, overlap=overlap)
    assert str(size) in str(info.value) and str(overlap) in str(info.value)


@pytest.mark.parametrize("strategy", ["sentences", "paragraphs"])
@pytest.mark.parametrize("size", [0, -3])
def test_invalid_size_raises_for_unit_strategies(encode_offsets, strategy: str, size: int) -> None:
    text = "First sentence here. Second one.\n\nA paragraph."
    with pytest.raises(ValueError, match="size"):
        chunk_spans(text, encode_offsets(text), strategy, size)


# --- char offsets are str positions ---------------------------------------------------------------------


def test_char_offsets_are_str_positions_for_non_ascii(encode_offsets) -> None:
    text = "日本語 façade 👍 naïve 🎉 🎉 done."
    spans = chunk_spans(text, encode_offsets(text), "tokens", 1)
    assert [text[s.char_start : s.char_end] for s in spans] == [
        "日",
        "本",
        "語",
        "façade",
        "👍",
        "naïve",
        "🎉",
        "🎉",
        "done",
        ".",
    ]


def test_non_ascii_sentence_chunks_are_the_original_text(encode_offsets) -> None:
    offsets = encode_offsets(NON_ASCII)
    spans = chunk_spans(NON_ASCII, offsets, "sentences", 512, sentences_per_chunk=1)
    chunks = [NON_ASCII[s.char_start : s.char_end] for s in spans]
    assert chunks[0] == "Crème brûlée à la façade — naïve café!"
    assert "Второе предложение здесь." in chunks
    assert chunks[-1].endswith("있습니다.")


# --- sentence and paragraph boundaries ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four", ["One. ", "Two! ", "Three? ", "Four"]),
        ('He said "Go." Then left.', ['He said "Go." ', "Then left."]),
        ("Pi is 3.14 roughly. Yes", ["Pi is 3.14 roughly. ", "Yes"]),
        ("Title\n\nBody text", ["Title\n\n", "Body text"]),
        ("Ends with a stop. ", ["Ends with a stop. "]),
    ],
)
def test_sentence_starts(text: str, expected: list[str]) -> None:
    starts = sentence_starts(text)
    assert [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)])] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# A\ntext\n## B\nmore\n\npara", ["# A\ntext\n", "## B\nmore\n\n", "para"]),
        ("one\n  \n\n two", ["one\n  \n\n ", "two"]),
        ("#hashtag line\n####### seven\ntext", ["#hashtag line\n####### seven\ntext"]),
        ("no breaks at all. Two sentences.", ["no breaks at all. Two sentences."]),
    ],
)
def test_paragraph_starts(text: str, expected: list[str]) -> None:
    starts = paragraph_starts(text)
    assert [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)])] == expected


def test_unit_token_bounds_assign_tokens_by_their_first_char() -> None:
    offsets = [(0, 3), (4, 7), (8, 11)]
    assert unit_token_bounds([0, 4], offsets) == [0, 1, 3]
    assert unit_token_bounds([0, 5], offsets) == [0, 2, 3]  # char 5 is inside token 1: it stays in unit 0
    assert unit_token_bounds([0, 5, 6], offsets) == [0, 2, 3]  # units without tokens vanish
    assert unit_token_bounds([0, 12], offsets) == [0, 3]  # a unit of trailing whitespace vanishes
    assert unit_token_bounds([0], []) == [0]


# --- token_windows / pack_units / merge_small: examples and randomized properties -----------------------


def test_token_windows_examples() -> None:
    assert token_windows(0, 4) == []
    assert token_windows(3, 4) == [(0, 3)]
    assert token_windows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert token_windows(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert token_windows(8, 4, 1) == [(0, 4), (3, 7), (6, 8)]


@pytest.mark.parametrize("seed", range(5))
def test_token_windows_properties(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        n, size = rng.randint(0, 300), rng.randint(1, 40)
        overlap = rng.randint(0, size - 1)
        windows = token_windows(n, size, overlap)
        if n == 0:
            assert windows == []
            continue
        assert windows[0][0] == 0 and windows[-1][1] == n
        assert all(0 < end - start <= size for start, end in windows)
        assert all(end - start == size for start, end in windows[:-1])
        for (s1, e1), (s2, _) in itertools.pairwise(windows):
            assert e1 - s2 == overlap and s2 > s1
        assert sum(1 for _, end in windows if end == n) == 1  # nothing after the window that reaches n


def test_pack_units_examples() -> None:
    assert pack_units([0, 3, 6, 9], 6) == [(0, 6), (6, 9)]
    assert pack_units([0, 3, 6, 9], 6, max_units=1) == [(0, 3), (3, 6), (6, 9)]
    # a unit longer than size is cut into size-token windows on its own
    assert pack_units([0, 2, 12, 14], 4) == [(0, 2), (2, 6), (6, 10), (10, 12), (12, 14)]
    assert pack_units([5, 7, 9], 10) == [(5, 9)]
    assert pack_units([0], 10) == []


def random_bounds(rng: random.Random, max_unit: int) -> list[int]:
    bounds = [rng.randint(0, 5)]
    for _ in range(rng.randint(0, 30)):
        bounds.append(bounds[-1] + rng.randint(1, max_unit))
    return bounds


@pytest.mark.parametrize("seed", range(5))
def test_pack_units_properties(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        size = rng.randint(1, 30)
        bounds = random_bounds(rng, 2 * size)
        max_units = rng.choice([None, 1, 2, 3, 5])
        chunks = pack_units(bounds, size, max_units=max_units)
        unit_set = set(bounds)
        if len(bounds) == 1:
            assert chunks == []
            continue
        assert chunks[0][0] == bounds[0] and chunks[-1][1] == bounds[-1]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
        assert all(0 < end - start <= size for start, end in chunks)
        for start, end in chunks:
            whole = start in unit_set and end in unit_set
            units = sum(1 for b in bounds if start <= b < end)
            if whole and max_units is not None:
                assert units <= max_units
            if not whole:  # a cut: the chunk lies inside one unit longer than size
                unit = bisect_right(bounds, start) - 1
                assert bounds[unit] <= start and end <= bounds[unit + 1]
                assert bounds[unit + 1] - bounds[unit] > size
        # greedy: a chunk of whole units could not take the next (short) unit
        for (start, end), (next_start, _) in itertools.pairwise(chunks):
            if start in unit_set and end in unit_set:
                next_unit_end = bounds[bounds.index(next_start) + 1]
                if next_unit_end - next_start <= size:
                    full = max_units is not None and sum(1 for b in bounds if start <= b < end) >= max_units
                    assert full or next_unit_end - start > size, (bounds, size, max_units, chunks)


def test_merge_small_examples() -> None:
    assert merge_small([(0, 3), (3, 20)], 30, 5) == [(0, 20)]
    assert merge_small([(0, 20), (20, 23)], 30, 5) == [(0, 23)]  # the last merges with the previous one
    assert merge_small([(0, 3), (3, 30)], 26, 5) == [(0, 3), (3, 30)]  # the merge would exceed size
    assert merge_small([(0, 3), (3, 5), (5, 6)], 30, 0) == [(0, 3), (3, 5), (5, 6)]
    assert merge_small([(0, 1), (1, 2), (2, 3)], 30, 5) == [(0, 3)]
    assert merge_small([], 30, 5) == []


def test_merge_small_merges_a_small_middle_chunk_with_the_following_one() -> None:
    assert merge_small([(0, 40), (40, 45), (45, 85)], 60, 10) == [(0, 40), (40, 85)]


def test_small_heading_paragraph_merges_into_its_own_section(encode_offsets) -> None:
    first = " ".join(["The first section talks about apples."] * 5)
    second = " ".join(["The second section talks about pears."] * 5)
    text = f"## First\n\n{first}\n\n## Second\n\n{second}\n"
    offsets = encode_offsets(text)
    spans = chunk_spans(text, offsets, "paragraphs", 100, min_tokens=8)
    chunks = [text[s.char_start : s.char_end] for s in spans]
    assert any(chunk.startswith("## Second") for chunk in chunks), chunks


@pytest.mark.parametrize("seed", range(5))
def test_merge_small_properties(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        size, min_tokens = rng.randint(1, 40), rng.randint(0, 20)
        cuts = [0]
        for _ in range(rng.randint(0, 20)):
            cuts.append(cuts[-1] + rng.randint(1, size))
        chunks = list(itertools.pairwise(cuts))
        merged = merge_small(chunks, size, min_tokens)
        if not chunks:
            assert merged == []
            continue
        assert merged[0][0] == 0 and merged[-1][1] == cuts[-1]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(merged))
        assert {b for _, b in merged} <= set(cuts)  # only whole chunks are joined
        assert all(end - start <= size for start, end in merged)
        # nothing left that the rule would still merge: no small chunk next to a neighbour it fits with
        for (s1, e1), (s2, e2) in itertools.pairwise(merged):
            small = e1 - s1 < min_tokens or e2 - s2 < min_tokens
            assert not (small and e2 - s1 <= size), (chunks, size, min_tokens, merged)
        # a join only happens when a small chunk is involved
        for start, end in merged:
            pieces = [(a, b) for a, b in chunks if start <= a < end]
            if len(pieces) > 1:
                assert any(b - a < min_tokens for a, b in pieces)
