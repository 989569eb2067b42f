"""bench/calibration.py's yardstick: the ECE a perfectly calibrated model shows on a finite test file."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is no package of textpipe's: import it from the clone
from bench.calibration import perfectly_calibrated_ece  # noqa: E402


def test_a_certain_model_that_is_always_right_measures_zero():
    assert perfectly_calibrated_ece(torch.ones(300, dtype=torch.float64), draws=20).max() == 0


def test_the_floor_is_the_sampling_error_of_a_bins_accuracy():
    n = 400  # one bin of coin flips: E|mean - 0.5| is about sqrt(2 / pi) * 0.5 / sqrt(n)
    floor = perfectly_calibrated_ece(torch.full((n,), 0.5, dtype=torch.float64), draws=2000).mean()
    assert abs(floor - math.sqrt(2 / math.pi) * 0.5 / math.sqrt(n)) < 0.002


def test_more_rows_lower_the_floor():
    confidence = torch.linspace(0.5, 1.0, 10, dtype=torch.float64)
    small, large = (perfectly_calibrated_ece(confidence.repeat(k), draws=300).mean() for k in (50, 800))
    assert large < small / 3
