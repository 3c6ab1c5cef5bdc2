"""pooling.py: macro windows tile long documents; pooled pieces equal a straightforward mean over stitched states."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from pipeline.chunking import token_windows
from pipeline.pooling import (
    EncodePlan,
    Frame,
    Window,
    l2_normalize,
    late_pool,
    macro_windows,
    piece_sums,
    plan_late,
    plan_naive,
    stitch,
)

CLS, SEP = 101, 102
FRAME = Frame((CLS,), (), (SEP,))


def random_doc(rng: random.Random, n_tokens: int) -> list[int]:
    return [rng.randint(1, 99) for _ in range(n_tokens)]


def random_tiling(rng: random.Random, n_tokens: int, max_len: int) -> list[tuple[int, int]]:
    spans, start = [], 0
    while start < n_tokens:
        end = min(n_tokens, start + rng.randint(1, max_len))
        spans.append((start, end))
        start = end
    return spans


def states_of(model: torch.nn.Module, input_ids: Sequence[int]) -> np.ndarray:
    """Token states of one unpadded input: [len(input_ids), hidden]."""
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([list(input_ids)])).last_hidden_state
    return hidden[0].numpy()


def pool_plan(model: torch.nn.Module, plan: EncodePlan) -> np.ndarray:
    """Execute a plan the plain way: every sequence alone, sum its pieces, divide by the item's token count."""
    sums = np.zeros((len(plan.item_tokens), model.config.hidden_size), dtype=np.float32)
    for index, sequence in enumerate(plan.sequences):
        pieces = [p for p in plan.pieces if p.sequence == index]
        if not pieces:
            continue
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([sequence])).last_hidden_state
        rows = torch.zeros(len(pieces), dtype=torch.long)
        starts = torch.tensor([p.start for p in pieces])
        ends = torch.tensor([p.end for p in pieces])
        for piece, total in zip(pieces, piece_sums(hidden, rows, starts, ends).numpy()):
            sums[piece.item] += total
    return l2_normalize(sums / np.asarray(plan.item_tokens, dtype=np.float32)[:, None])


# --- Frame ----------------------------------------------------------------------------------------------


def test_frame_wraps_content_and_reports_its_offset_and_capacity() -> None:
    frame = Frame((CLS,), (7, 8), (SEP,))
    assert frame.wrap([1, 2, 3]) == [CLS, 7, 8, 1, 2, 3, SEP]
    assert frame.content_offset == 3
    assert frame.capacity(40) == 36
    assert FRAME.capacity(40) == 38


def test_frame_without_room_raises_naming_the_prefix() -> None:
    with pytest.raises(ValueError, match="document_prefix"):
        Frame((CLS,), (7,) * 10, (SEP,)).capacity(12)


# --- macro_windows --------------------------------------------------------------------------------------


def test_a_document_that_fits_is_one_window() -> None:
    assert macro_windows(0, 20, 6) == [Window(0, 0, 0, 0)]
    assert macro_windows(20, 20, 6) == [Window(0, 20, 0, 20)]
    assert macro_windows(7, 20, 19) == [Window(0, 7, 0, 7)]


def test_long_document_windows_example() -> None:
    # two windows are needed; both are 14 tokens (21 + 6 shared = 27 over two), cut in the middle of the overlap
    assert macro_windows(21, 20, 6) == [Window(0, 14, 0, 10), Window(7, 21, 10, 21)]
    assert macro_windows(40, 20, 6) == [Window(0, 18, 0, 14), Window(11, 29, 14, 25), Window(22, 40, 25, 40)]


@pytest.mark.parametrize("overlap", [20, 25])
def test_overlap_not_below_capacity_raises(overlap: int) -> None:
    with pytest.raises(ValueError, match=r"window_overlap.*20"):
        macro_windows(100, 20, overlap)


def test_a_window_setting_that_cannot_fit_is_a_config_error_before_any_document_is_read() -> None:
    from pipeline.config import ConfigError, EmbeddingConfig
    from pipeline.model import check_window

    check_window(EmbeddingConfig(window_overlap=37), "m", FRAME, 40)  # 38 document tokens a window
    check_window(EmbeddingConfig(mode="naive", window_overlap=600), "m", FRAME, 40)  # naive has no windows
    with pytest.raises(ConfigError, match=r"embedding.window_overlap: must be < the 38 .* 'm' holds \(got 38\)"):
        check_window(EmbeddingConfig(window_overlap=38), "m", FRAME, 40)
    with pytest.raises(ConfigError, match="document_prefix"):
        check_window(EmbeddingConfig(), "m", Frame((CLS,), (7,) * 10, (SEP,)), 12)


@pytest.mark.parametrize("seed", range(5))
def test_macro_window_properties(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        capacity = rng.randint(1, 40)
        overlap, n = rng.randint(0, capacity - 1), rng.randint(0, 250)
        windows = macro_windows(n, capacity, overlap)
        assert windows[0].start == 0 and windows[-1].end == n
        assert windows[0].keep_start == 0 and windows[-1].keep_end == n
        for previous, current in itertools.pairwise(windows):
            assert current.keep_start == previous.keep_end  # kept ranges tile [0, n)
            assert current.start > previous.start and current.end > previous.end
            assert current.start <= previous.end  # no token is left out
        for window in windows:
            assert 0 <= window.end - window.start <= capacity
            assert window.start <= window.keep_start <= window.keep_end <= window.end
        if n > capacity:
            # the fewest windows that can cover n with `overlap` shared tokens, all of the shortest such length
            assert len(windows) == len(token_windows(n, capacity, overlap))
            length = windows[0].end - windows[0].start
            assert all(w.end - w.start == length for w in windows)
            assert (length - 1) * len(windows) < n + (len(windows) - 1) * overlap
            assert all(previous.end - current.start >= overlap for previous, current in itertools.pairwise(windows))
            assert all(w.keep_end > w.keep_start for w in windows)
            for w in windows:  # a kept token sees at least half the overlap on each side that is not a document end
                assert w.start == 0 or w.keep_start - w.start >= overlap // 2
                assert w.end == n or w.end - w.keep_end >= overlap // 2


@pytest.mark.parametrize("seed", range(3))
def test_each_token_is_kept_where_it_has_the_most_context(seed: int) -> None:
    """Distance to the nearest window edge (document ends are not edges) is largest in the keeping window."""
    rng = random.Random(seed)
    far = 10**9
    for _ in range(300):
        capacity = rng.randint(2, 30)
        overlap, n = rng.randint(0, capacity - 1), rng.randint(capacity + 1, 120)
        windows = macro_windows(n, capacity, overlap)

        def context(t: int, w: Window, n: int = n) -> int:
            return min(t - w.start if w.start > 0 else far, w.end - 1 - t if w.end < n else far)

        for keeper in windows:
            for t in range(keeper.keep_start, keeper.keep_end):
                best = max(context(t, w) for w in windows if w.start <= t < w.end)
                assert context(t, keeper) == best, (n, capacity, overlap, t)


# --- stitch, piece_sums, late_pool (no model) -----------------------------------------------------------


@pytest.mark.parametrize(("n", "capacity", "overlap"), [(5, 20, 6), (100, 20, 6), (57, 10, 9), (33, 8, 0)])
def test_stitch_gives_every_token_exactly_one_state_in_order(n: int, capacity: int, overlap: int) -> None:
    windows = macro_windows(n, capacity, overlap)
    # a fake state per token: its document index, as seen from each window
    window_states = [np.arange(w.start, w.end, dtype=np.float32)[:, None] for w in windows]
    assert stitch(window_states, windows)[:, 0].tolist() == list(range(n))


def test_piece_sums_equal_slice_sums() -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, 4, generator=gen)
    pieces = [(0, 0, 9), (1, 2, 5), (2, 4, 4), (2, 8, 9), (0, 3, 4)]
    rows, starts, ends = (torch.tensor(column) for column in zip(*pieces))
    sums = piece_sums(hidden, rows, starts, ends)
    expected = torch.stack([hidden[r, s:e].sum(dim=0) for r, s, e in pieces])
    np.testing.assert_allclose(sums.numpy(), expected.numpy(), atol=1e-5)
    assert sums[2].abs().max() == 0  # an empty piece sums to zero


def test_piece_sums_are_float32_for_half_precision_states() -> None:
    hidden = torch.ones(1, 4, 2, dtype=torch.bfloat16)
    sums = piece_sums(hidden, torch.tensor([0]), torch.tensor([1]), torch.tensor([4]))
    assert sums.dtype == torch.float32
    assert sums.tolist() == [[3.0, 3.0]]


def test_late_pool_is_the_normalised_mean_over_each_span() -> None:
    rng = np.random.default_rng(0)
    states = rng.normal(size=(12, 5)).astype(np.float32)
    spans = [(0, 4), (4, 5), (3, 12)]
    pooled = late_pool(states, spans)
    for vector, (start, end) in zip(pooled, spans):
        mean = states[start:end].mean(axis=0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-6)
    assert pooled.dtype == np.float32


def test_l2_normalize_leaves_zero_rows_zero() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


# --- plans (structure) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [FRAME, Frame((CLS,), (7, 8), (SEP,)), Frame((), (), (SEP,))])
def test_late_plan_pieces_cover_each_span_once_and_never_frame_tokens(frame: Frame) -> None:
    rng = random.Random(1)
    docs = [(random_doc(rng, n), random_tiling(rng, n, 9)) for n in (0, 3, 18, 20, 21, 64, 100)]
    docs.append((random_doc(rng, 50), [(0, 50), (10, 12), (45, 50)]))  # overlapping spans are fine too
    capacity, overlap = 20, 6
    plan = plan_late(docs, frame, capacity, overlap)
    assert plan.item_tokens == [end - start for _, spans in docs for start, end in spans]
    sequence_windows = [w for ids, _ in docs for w in macro_windows(len(ids), capacity, overlap)]
    assert len(plan.sequences) == len(sequence_windows)
    covered: dict[int, list[int]] = {}
    for piece in plan.pieces:
        window, sequence = sequence_windows[piece.sequence], plan.sequences[piece.sequence]
        assert frame.content_offset <= piece.start < piece.end <= len(sequence) - len(frame.trail)
        shift = window.start - frame.content_offset
        covered.setdefault(piece.item, []).extend(range(piece.start + shift, piece.end + shift))
    spans = [span for _, doc_spans in docs for span in doc_spans]
    for item, (start, end) in enumerate(spans):
        assert sorted(covered[item]) == list(range(start, end)), item
    for (ids, _), sequences in zip(docs, _split_by_doc(plan, docs, capacity, overlap)):
        windows = macro_windows(len(ids), capacity, overlap)
        assert sequences == [frame.wrap(ids[w.start : w.end]) for w in windows]


def _split_by_doc(plan: EncodePlan, docs, capacity: int, overlap: int) -> list[list[list[int]]]:
    out, at = [], 0
    for ids, _ in docs:
        count = len(macro_windows(len(ids), capacity, overlap))
        out.append(plan.sequences[at : at + count])
        at += count
    return out


def test_naive_plan_is_one_truncated_input_per_span_pooled_whole() -> None:
    ids = list(range(1, 31))
    plan = plan_naive([(ids, [(0, 4), (4, 30)]), ([5, 6], [(0, 2)])], FRAME, capacity=10)
    assert plan.sequences == [
        [CLS, 1, 2, 3, 4, SEP],
        [CLS, *range(5, 15), SEP],  # truncated to the capacity
        [CLS, 5, 6, SEP],
    ]
    assert [(p.item, p.sequence, p.start, p.end) for p in plan.pieces] == [(0, 0, 0, 6), (1, 1, 0, 12), (2, 2, 0, 4)]
    assert plan.item_tokens == [6, 12, 4]


# --- plans against a real (tiny) encoder ----------------------------------------------------------------


@pytest.mark.parametrize("frame", [FRAME, Frame((CLS,), (7, 8), (SEP,))])
def test_late_plan_equals_late_pool_over_one_forward_when_docs_fit(tiny_bert, frame: Frame) -> None:
    rng = random.Random(2)
    capacity = frame.capacity(40)
    docs = [(random_doc(rng, n), random_tiling(rng, n, 7)) for n in (1, 5, 17, capacity)]
    pooled = pool_plan(tiny_bert, plan_late(docs, frame, capacity, overlap=6))
    expected = []
    for ids, spans in docs:
        states = states_of(tiny_bert, frame.wrap(ids))
        content = states[frame.content_offset : frame.content_offset + len(ids)]  # no [CLS], prefix or [SEP]
        expected.append(late_pool(content, spans))
    np.testing.assert_allclose(pooled, np.concatenate(expected), atol=1e-5)


def test_late_plan_equals_late_pool_over_stitched_windows_for_a_long_doc(tiny_bert) -> None:
    rng = random.Random(3)
    ids = random_doc(rng, 100)
    spans = [*random_tiling(rng, 100, 13), (0, 100), (15, 40)]
    capacity, overlap = 20, 6
    windows = macro_windows(len(ids), capacity, overlap)
    assert len(windows) > 1
    window_states = [states_of(tiny_bert, FRAME.wrap(ids[w.start : w.end]))[1 : 1 + w.end - w.start] for w in windows]
    expected = late_pool(stitch(window_states, windows), spans)
    pooled = pool_plan(tiny_bert, plan_late([(ids, spans)], FRAME, capacity, overlap))
    np.testing.assert_allclose(pooled, expected, atol=1e-5)


def test_stitching_one_window_is_the_single_forward(tiny_bert) -> None:
    rng = random.Random(4)
    ids = random_doc(rng, 30)
    windows = macro_windows(len(ids), 38, 6)
    states = states_of(tiny_bert, FRAME.wrap(ids))[1:-1]
    np.testing.assert_array_equal(stitch([states], windows), states)
    spans = random_tiling(rng, 30, 8)
    np.testing.assert_allclose(late_pool(stitch([states], windows), spans), late_pool(states, spans), atol=0)


def test_late_vectors_depend_on_context_and_naive_vectors_do_not(tiny_bert) -> None:
    rng = random.Random(5)
    ids = random_doc(rng, 24)
    changed = [*ids[:12], *random_doc(rng, 12)]  # same first chunk, different rest of the document
    spans = [(0, 12), (12, 24)]
    late = [pool_plan(tiny_bert, plan_late([(d, spans)], FRAME, 38, 6))[0] for d in (ids, changed)]
    naive = [pool_plan(tiny_bert, plan_naive([(d, spans)], FRAME, 38))[0] for d in (ids, changed)]
    assert not np.allclose(late[0], late[1], atol=1e-4)
    np.testing.assert_allclose(naive[0], naive[1], atol=1e-6)
