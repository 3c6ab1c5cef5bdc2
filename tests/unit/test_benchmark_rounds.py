"""The throughput benchmark's rounds: ratios paired within a round, medians and ranges over rounds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"
_SPEC = importlib.util.spec_from_file_location("throughput_benchmark", _PATH)
throughput = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(throughput)


def _round(late: float, st_default: float) -> dict:
    return {"late": {"wall_s": late}, "st-default": {"wall_s": st_default}}


def test_each_ratio_is_paired_within_its_round_then_the_median_taken():
    # A machine that slows down round after round: each round's pair, minutes apart, shows late 1.6x, 1.4x and
    # 1.5x faster, and the reported ratio is their median, whatever the rounds' own speeds.
    rounds = [_round(100.0, 160.0), _round(200.0, 280.0), _round(300.0, 450.0)]
    results, found, spread = throughput.summarize_rounds(rounds)
    assert found["late_vs_st_default"] == pytest.approx(1.5)
    assert spread["late_vs_st_default"] == {
        "min": pytest.approx(1.4),
        "max": pytest.approx(1.6),
        "rounds": 3,
        "held": 2,
    }
    # The table's row is a real run: the one with the median wall time.
    assert results["late"]["wall_s"] == 200.0 and results["st-default"]["wall_s"] == 280.0


def test_an_even_count_of_rounds_shows_the_lower_middle_run():
    results, found, spread = throughput.summarize_rounds([_round(120.0, 150.0), _round(100.0, 160.0)])
    assert results["late"]["wall_s"] == 100.0 and results["st-default"]["wall_s"] == 150.0
    assert found["late_vs_st_default"] == pytest.approx((1.25 + 1.6) / 2)
    assert spread["late_vs_st_default"]["held"] == 1


def test_rotation_moves_every_variant_through_the_first_place():
    variants = ["late", "st-default", "raw"]
    firsts = [throughput.rotated(variants, index)[0] for index in range(3)]
    assert sorted(firsts) == sorted(variants)
    assert all(sorted(throughput.rotated(variants, index)) == sorted(variants) for index in range(5))


def test_memory_targets_are_upper_bounds():
    assert throughput.target_holds("memory_10x_over_1x", 1.19)
    assert not throughput.target_holds("memory_10x_over_1x", 1.21)
    assert throughput.target_holds("late_vs_st_default", 1.5)
    assert not throughput.target_holds("late_vs_st_default", 1.49)
