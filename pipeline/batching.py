"""PURE: length-sorted micro-batches packed to a padded-token budget.

A forward pass costs about ``batch_size * longest_sequence`` tokens (padding included), so sequences are sorted
by length (longest first, so the first batch shows the worst-case memory at once) and packed greedily while
``count * longest <= max_tokens``. Outputs are addressed by the original indices, which restores the order.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack_by_token_budget(lengths: Sequence[int], max_tokens: int, max_sequences: int) -> list[list[int]]:
    """Partition ``range(len(lengths))`` into micro-batches of sequence indices.

    Every index appears exactly once. A batch's padded cost ``len(batch) * max(lengths in batch)`` stays within
    ``max_tokens`` unless one sequence alone exceeds it (then it forms a batch of one). Batches hold at most
    ``max_sequences`` sequences.
    """
    if max_tokens <= 0 or max_sequences <= 0:
        raise ValueError(f"max_tokens and max_sequences must be > 0 (got {max_tokens}, {max_sequences})")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        longest_if_added = max(longest, lengths[index])
        fits = (len(current) + 1) * longest_if_added <= max_tokens and len(current) < max_sequences
        if current and not fits:
            batches.append(current)
            current, longest_if_added = [], lengths[index]
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def padding_waste(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction of computed positions that are padding, for a given packing."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    real = sum(lengths)
    return 0.0 if padded == 0 else 1.0 - real / padded
