"""How sure a figure is: intervals of proportions measured on test images, and paired tests between runs.

A difference between two runs on the same test images is a claim: it is shown with an interval and tested
on the images themselves (McNemar's exact test counts the images one run gets right and the other wrong).
scipy provides the distributions; docs/evaluation.md says how to read the figures.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["bootstrap_interval", "interval", "mcnemar", "wilson_interval"]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``successes / n`` (good also near 0 and 1)."""
    if n <= 0:
        return float("nan"), float("nan")
    result = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(result.low), float(result.high)


def bootstrap_interval(correct, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0):
    """Percentile bootstrap interval of the mean of ``correct`` (0/1 per test image), resampling images."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng([int(seed), 0xB007])
    means = np.empty(int(n_resamples))
    for start in range(0, len(means), 256):  # in blocks: a (resamples x images) array can be large
        block = rng.integers(0, correct.size, size=(min(256, len(means) - start), correct.size))
        means[start : start + len(block)] = correct[block].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def interval(correct, method: str = "wilson", confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0):
    """The ``confidence`` interval of the share of ``correct`` (0/1 per test image) by ``method``."""
    correct = np.asarray(correct, dtype=bool)
    if method == "wilson":
        return wilson_interval(int(correct.sum()), correct.size, confidence)
    if method == "bootstrap":
        return bootstrap_interval(correct, confidence, n_resamples, seed)
    raise ValueError(f"interval method must be 'wilson' or 'bootstrap', got {method!r}")


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's exact test of two runs on the same images.

    ``b``: images ``a`` gets right and ``b`` wrong; ``c``: the reverse. Under "no difference" each
    discordant image goes either way with probability 1/2, so the two-sided p-value is the binomial test of
    ``b`` out of ``b + c``. Returns ``{"b", "c", "p_value"}`` (p is 1 when no image is discordant).
    """
    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"the two runs were tested on different images: {correct_a.shape} and {correct_b.shape}")
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"b": b, "c": c, "p_value": p}
