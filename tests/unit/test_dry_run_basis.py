"""Which earlier run a dry run trusts for its throughput, and how it turns that run into a rate."""

from __future__ import annotations

from pipeline.dryrun import MIN_BASIS_TOKENS, _measured_throughput

SETTINGS = {"chunker": {"strategy": "tokens@v1", "size": 128}, "pooling": {"mode": "late@v1"}, "model": {"name": "m"}}


def summary(**changes) -> dict:
    base = {
        "run_id": "r1",
        "status": "ok",
        "settings": SETTINGS,
        "counts": {"document_tokens": 900_000},
        "wall_s": 176.0,
        "actors": {"size": 2},
        "time_s": {"embed": 324.0},
    }
    return {**base, **changes}


def test_the_rate_is_the_embedding_rate_and_start_up_is_counted_once() -> None:
    rate, fixed, basis = _measured_throughput(summary(), SETTINGS)
    assert rate == 900_000 / 162.0 and fixed == 176.0 - 162.0  # two actors embed side by side
    assert "r1" in basis


def test_small_failed_or_other_settings_runs_are_not_a_basis() -> None:
    assert _measured_throughput(summary(counts={"document_tokens": MIN_BASIS_TOKENS - 1}), SETTINGS) is None
    assert _measured_throughput(summary(status="failed"), SETTINGS) is None
    other = {**SETTINGS, "pooling": {"mode": "naive@v1"}}
    assert _measured_throughput(summary(settings=other), SETTINGS) is None


def test_a_run_without_embedding_time_gives_its_end_to_end_rate() -> None:
    rate, fixed, _ = _measured_throughput(summary(time_s={}), SETTINGS)
    assert rate == 900_000 / 176.0 and fixed == 0.0
