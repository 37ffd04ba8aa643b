"""Is configuration A more accurate than B? Two tests from scipy.stats on what every run saves.

Both configurations are scored on the same images by the same seeds' models (`correct` arrays
bool [n_seeds, n_images]), so two sources of chance are tested separately:
- the seeds (which run of the recipe): Welch's t-test on the per-seed accuracies (ddof=1), with
  the 95% confidence interval of the difference of the means;
- the images (which examples were drawn): McNemar's exact test on the discordant pairs (an image
  one model gets right and the other wrong), seed k of A paired with seed k of B, pooled.
A is called *better* only when both tests reject equality at the 5% level in A's favour; else the
two are *not distinguishable*. With one seed, or no spread over the seeds on either side, Welch's
test is undefined: the verdict is then *untested over the seeds*, whatever the images say.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

ALPHA = 0.05
VERDICTS = ("better", "worse", "not distinguishable", "untested over the seeds")
METHOD = (
    "Welch's t-test on the per-seed accuracies (95% CI of the difference) and McNemar's "
    "exact test on the images one model gets right and the other wrong (seed k paired with "
    "seed k); a difference counts only when both give p < 0.05"
)


def compare(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """A vs B on the same images: `a_correct`, `b_correct` bool [n_seeds, n_images].

    Returns {"difference": mean accuracy of A - B (a fraction), "ci95": [low, high] of it,
    "p_seeds": Welch's p, "p_images": McNemar's exact p, "discordant": [A right only, B right
    only], "n_seeds", "n_images", "verdict": one of VERDICTS}. NaN where undefined (one seed, or
    no spread over the seeds: then the verdict is "untested over the seeds").

    Raises:
      ValueError: the arrays are not [n_seeds, n_images] of the same shape.
    """
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"need two [n_seeds, n_images] arrays of one shape, got {a.shape} and {b.shape}"
        )
    acc_a, acc_b = a.mean(axis=1), b.mean(axis=1)
    diff = float(acc_a.mean() - acc_b.mean())
    low = high = p_seeds = math.nan
    if len(acc_a) > 1 and (acc_a.std() > 0 or acc_b.std() > 0):  # else no spread: undefined
        with warnings.catch_warnings():  # one side without spread: its variance is 0, as meant
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
            t = stats.ttest_ind(acc_a, acc_b, equal_var=False)
        ci = t.confidence_interval(1 - ALPHA)
        low, high, p_seeds = float(ci.low), float(ci.high), float(t.pvalue)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p_images = (
        float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    )
    verdict = "not distinguishable" if math.isfinite(p_seeds) else "untested over the seeds"
    if p_seeds < ALPHA and p_images < ALPHA and diff != 0:
        verdict = "better" if diff > 0 else "worse"
    return {
        "difference": diff,
        "ci95": [low, high],
        "p_seeds": p_seeds,
        "p_images": p_images,
        "discordant": [only_a, only_b],
        "n_seeds": int(a.shape[0]),
        "n_images": int(a.shape[1]),
        "verdict": verdict,
    }


def describe(result: dict, scale: float = 100.0) -> str:
    """A comparison in words, e.g. '+0.42 points, 95% CI [+0.15, +0.69], p = 0.010 (seeds),
    p < 0.001 (images)'. Reads `compare`'s result, also as read back from JSON (NaN as "nan")."""
    low, high = (_number(v) for v in result["ci95"])
    ci = (
        f"95% CI [{low * scale:+.2f}, {high * scale:+.2f}]"
        if math.isfinite(low)
        else "95% CI undefined (one seed, or no spread over the seeds)"
    )
    return (
        f"{_number(result['difference']) * scale:+.2f} points, {ci}, "
        f"{_p(_number(result['p_seeds']))} (seeds), {_p(_number(result['p_images']))} (images)"
    )


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "p undefined"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
