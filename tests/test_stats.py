"""fmnist_jax.stats: the two tests every verdict rests on, checked against their formulas
written out here (Welch's t with its Welch-Satterthwaite degrees of freedom; McNemar's exact
binomial test), and the verdict rule."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from fmnist_jax import stats


def correct_from_accuracies(accuracies, n_images=2000, seed=0):
    """bool [n_seeds, n_images] with the given per-seed accuracies (random images right)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(accuracies), n_images), bool)
    for k, acc in enumerate(accuracies):
        out[k, rng.choice(n_images, int(round(acc * n_images)), replace=False)] = True
    return out


def welch_by_hand(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff, se = a.mean() - b.mean(), math.sqrt(va + vb)
    half = sps.t.ppf(0.975, df) * se
    return diff, (diff - half, diff + half), 2 * sps.t.sf(abs(diff) / se, df)


def mcnemar_by_hand(b, c):
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_the_seed_test_is_welchs_t_with_its_interval():
    a = correct_from_accuracies([0.975, 0.972, 0.978], seed=1)
    b = correct_from_accuracies([0.968, 0.970, 0.966], seed=2)
    got = stats.compare(a, b)
    diff, (low, high), p = welch_by_hand(a.mean(1), b.mean(1))
    assert got["difference"] == pytest.approx(diff, abs=1e-12)
    assert got["ci95"] == pytest.approx([low, high], abs=1e-12)
    assert got["p_seeds"] == pytest.approx(p, rel=1e-9)
    assert got["n_seeds"] == 3 and got["n_images"] == 2000


def test_the_image_test_is_mcnemars_exact_test_on_the_discordant_pairs():
    a = correct_from_accuracies([0.95, 0.96], seed=3)
    b = correct_from_accuracies([0.94, 0.95], seed=4)
    got = stats.compare(a, b)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert got["discordant"] == [only_a, only_b]
    assert got["p_images"] == pytest.approx(mcnemar_by_hand(only_a, only_b), rel=1e-9)


def test_better_needs_both_tests():
    # A wins by 1 point on every seed, on images B gets wrong: both tests reject.
    b = correct_from_accuracies([0.96, 0.961, 0.959], seed=5)
    a = b.copy()
    for k in range(3):
        a[k, np.flatnonzero(~b[k])[:20]] = True
    assert stats.compare(a, b)["verdict"] == "better" and stats.compare(b, a)["verdict"] == "worse"
    # The same mean difference, but the seeds disagree (+2.5, -0.5, +1 points): the images'
    # test rejects, the seeds' test does not, so the two are not distinguishable.
    noisy = b.copy()
    for k, (gain, loss) in enumerate([(50, 0), (0, 10), (20, 0)]):
        noisy[k, np.flatnonzero(~b[k])[:gain]] = True
        noisy[k, np.flatnonzero(b[k])[:loss]] = False
    got = stats.compare(noisy, b)
    assert got["p_images"] < 0.05 and got["p_seeds"] > 0.05
    assert got["verdict"] == "not distinguishable"
    # Identical models: nothing to tell apart; one seed: the spread is unknown.
    same = stats.compare(b, b)
    assert (
        same["verdict"] == "not distinguishable"
        and same["p_images"] == 1.0
        and same["difference"] == 0
    )
    one = stats.compare(a[:1], b[:1])
    assert math.isnan(one["p_seeds"]) and one["verdict"] == "untested over the seeds"
    assert "undefined" in stats.describe(one)
    # No spread over the seeds on either side (a quick run's 60 images): a 40-point gap is
    # untested over the seeds, never "not distinguishable".
    flat_a, flat_b = np.zeros((2, 60), bool), np.zeros((2, 60), bool)
    flat_a[:, :50], flat_b[:, :26] = True, True
    flat = stats.compare(flat_a, flat_b)
    assert flat["verdict"] == "untested over the seeds" and flat["p_images"] < 0.001
    # As read back from a JSON file (NaN written as "nan"): the same words.
    assert stats.describe(
        {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in one.items()}
        | {"ci95": ["nan", "nan"]}
    ) == stats.describe(one)


def test_describe_and_bad_input():
    a = correct_from_accuracies([0.975, 0.972, 0.978], seed=1)
    b = correct_from_accuracies([0.968, 0.970, 0.966], seed=2)
    text = stats.describe(stats.compare(a, b))
    assert text.startswith("+0.70 points, 95% CI [") and "(seeds)" in text and "(images)" in text
    assert re.search(
        r"\], p (= 0\.\d{3}|< 0\.001) \(seeds\), p (= 0\.\d{3}|< 0\.001) \(images\)$", text
    ), text
    tiny = stats.describe(
        {"difference": 0.01, "ci95": [0.005, 0.015], "p_seeds": 1e-5, "p_images": 0.02}
    )
    assert tiny.endswith("p < 0.001 (seeds), p = 0.020 (images)")  # never "p = < 0.001"
    with pytest.raises(ValueError, match="one shape"):
        stats.compare(a, b[:2])


def test_one_side_without_spread_is_tested_quietly():
    """One configuration scores the same on every seed, the other does not: Welch's test is
    defined (one variance is 0, as meant) and scipy's precision-loss warning is not printed."""
    a = np.zeros((2, 60), bool)
    a[:, :49] = True
    b = correct_from_accuracies([0.5, 0.6], n_images=60, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = stats.compare(a, b)
    assert math.isfinite(got["p_seeds"]) and got["verdict"] in ("better", "not distinguishable")
