"""batching.py: token-budget packing covers every sequence once, within budget, and reports padding honestly."""

from __future__ import annotations

import random

import pytest

from pipeline.batching import pack_by_token_budget, padding_waste


def assert_valid_packing(lengths: list[int], batches: list[list[int]], max_tokens: int, max_sequences: int) -> None:
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    assert all(batch for batch in batches)
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= max_tokens or len(batch) == 1, (batch, [lengths[i] for i in batch])
        assert len(batch) <= max_sequences
    # length-sorted, longest first, across and within batches
    ordered = [lengths[i] for i in flat]
    assert ordered == sorted(ordered, reverse=True)


def test_examples() -> None:
    lengths = [5, 10, 3, 10, 1]
    batches = pack_by_token_budget(lengths, max_tokens=20, max_sequences=8)
    assert batches == [[1, 3], [0, 2, 4]]
    assert pack_by_token_budget([], 10, 2) == []


def test_a_sequence_over_budget_is_a_batch_of_one() -> None:
    lengths = [4, 50, 4, 60]
    batches = pack_by_token_budget(lengths, max_tokens=16, max_sequences=8)
    assert [3] in batches and [1] in batches
    assert_valid_packing(lengths, batches, 16, 8)


def test_max_sequences_caps_a_batch_even_with_budget_left() -> None:
    batches = pack_by_token_budget([1] * 10, max_tokens=1000, max_sequences=3)
    assert [len(b) for b in batches] == [3, 3, 3, 1]


def test_the_batch_is_closed_when_a_longer_sequence_would_break_the_budget() -> None:
    # longest first: after 10, 10 the budget of 25 is hit by a third 10 (30 > 25)
    batches = pack_by_token_budget([10, 10, 10, 2], max_tokens=25, max_sequences=8)
    assert_valid_packing([10, 10, 10, 2], batches, 25, 8)
    assert [len(b) for b in batches] == [2, 2]


@pytest.mark.parametrize(("max_tokens", "max_sequences"), [(0, 4), (-1, 4), (10, 0), (10, -2)])
def test_invalid_budget_raises(max_tokens: int, max_sequences: int) -> None:
    with pytest.raises(ValueError, match="max_tokens and max_sequences"):
        pack_by_token_budget([1, 2], max_tokens, max_sequences)


@pytest.mark.parametrize("seed", range(10))
def test_packing_properties(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        lengths = [rng.randint(1, 600) for _ in range(rng.randint(0, 80))]
        max_tokens, max_sequences = rng.randint(1, 4000), rng.randint(1, 64)
        batches = pack_by_token_budget(lengths, max_tokens, max_sequences)
        assert_valid_packing(lengths, batches, max_tokens, max_sequences)


def test_padding_waste_matches_a_hand_computation() -> None:
    lengths = [4, 2, 3, 1]
    batches = [[0, 1], [2, 3]]
    # padded: 2*4 + 2*3 = 14 positions, real: 10 tokens
    assert padding_waste(lengths, batches) == pytest.approx(1 - 10 / 14)
    assert padding_waste(lengths, [[0], [1], [2], [3]]) == 0.0
    assert padding_waste([], []) == 0.0


def test_sorted_packing_wastes_no_more_than_input_order() -> None:
    rng = random.Random(7)
    lengths = [rng.randint(1, 512) for _ in range(200)]
    packed = pack_by_token_budget(lengths, max_tokens=4096, max_sequences=32)
    in_order = [list(range(i, min(i + 8, 200))) for i in range(0, 200, 8)]
    assert padding_waste(lengths, packed) < padding_waste(lengths, in_order)
