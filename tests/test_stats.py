"""fmnist_jax.stats: the interval over seeds and images, checked against its formula written out
here, against the truth of simulated studies (its coverage), and on constructed cases whose
answers are worked out by hand (the verdicts, the fragile flag, the seeds needed)."""

from __future__ import annotations

import json
import math

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


def interval_by_hand(a, b):
    """(difference, low, high, p, df): Welch's variance of the per-seed accuracies plus the
    variance of the per-image seed-mean differences over n, less each side's var(e) / (S n),
    var(e) the residual mean square of the two-way analysis of variance; t, Satterthwaite."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = a.shape[1]
    images = np.var(a.mean(0) - b.mean(0), ddof=1) / n
    terms = []
    for y in (a, b):
        s = len(y)
        rows, cols = y.mean(1), y.mean(0)
        residuals = y - rows[:, None] - cols[None, :] + y.mean()
        images -= np.sum(residuals**2) / ((s - 1) * (n - 1)) / (s * n)
        terms.append((np.var(rows, ddof=1) / s, s - 1))
    terms.append((max(images, 0.0), n - 1))
    var = sum(v for v, _ in terms)
    df = var**2 / sum(v * v / d for v, d in terms)
    diff, se = a.mean() - b.mean(), math.sqrt(var)
    half = sps.t.ppf(0.975, df) * se
    return diff, diff - half, diff + half, 2 * sps.t.sf(abs(diff) / se, df), df


def simulated_study(rng, n_seeds, n_images, delta, seed_spread, image_spread, base):
    """A crossed study with a known truth: P(A right) = d_i + u_i + delta/2 + alpha_s and
    P(B right) = d_i - u_i - delta/2 + beta_s, with d ~ U(base) and u = +-image_spread (A's and
    B's own hard images) per image, alpha, beta ~ U(-seed_spread, seed_spread) per seed; every
    effect has mean 0, so the expected accuracy difference over seeds and images is delta."""
    d = rng.uniform(*base, n_images)
    u = image_spread * rng.choice([-1.0, 1.0], n_images)
    alpha = rng.uniform(-seed_spread, seed_spread, (n_seeds, 1))
    beta = rng.uniform(-seed_spread, seed_spread, (n_seeds, 1))
    a = rng.random((n_seeds, n_images)) < d + u + delta / 2 + alpha
    b = rng.random((n_seeds, n_images)) < d - u - delta / 2 + beta
    return a, b


def test_the_interval_is_welchs_widened_by_the_images():
    a = correct_from_accuracies([0.975, 0.972, 0.978], seed=1)
    b = correct_from_accuracies([0.968, 0.970, 0.966], seed=2)
    got = stats.compare(a, b)
    diff, low, high, p, df = interval_by_hand(a, b)
    # The two compute the same quantities, here from float sums of <= 6,000 terms (relative
    # rounding < 1e-12) and there from integer sums: 1e-9 leaves room and catches any real slip.
    assert got["difference"] == pytest.approx(diff, rel=1e-9)
    assert got["ci95"] == pytest.approx([low, high], rel=1e-9)
    assert got["p"] == pytest.approx(p, rel=1e-9) and got["df"] == pytest.approx(df, rel=1e-9)
    assert got["covers"] == "seeds and images" and got["n_seeds"] == 3 and got["n_images"] == 2000


@pytest.mark.parametrize(
    "seed_spread, image_spread, base",
    [
        (0.08, 0.0, (0.6, 0.8)),
        (0.0, 0.0, (0.6, 0.8)),
        (0.0, 0.45, (0.5, 0.5)),
        (0.04, 0.1, (0.6, 0.8)),
    ],
    ids=["seeds dominate", "image-by-seed noise only", "hard images dominate", "all three"],
)
def test_the_interval_covers_the_truth_at_the_nominal_rate(seed_spread, image_spread, base):
    """400 simulated 3-seed studies of 2,000 images: the 95% interval holds the true difference
    in 95% of them, within 3 binomial standard errors (sqrt(0.95 * 0.05 / 400) = 0.011). On
    these same studies a two-way bootstrap over seeds and images covered 85%, 100%, 94.5% and
    91.5%, and Welch's interval over the seeds alone 96.5%, 97.5%, 40% and 96%."""
    rng, delta, sims = np.random.default_rng(7), 0.02, 400
    hits = 0
    for _ in range(sims):
        a, b = simulated_study(rng, 3, 2000, delta, seed_spread, image_spread, base)
        low, high = stats.compare(a, b)["ci95"]
        hits += low <= delta <= high
    assert abs(hits / sims - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / sims), hits / sims


def test_it_is_wider_than_a_seeds_only_interval_when_the_images_dominate():
    """Each model gets the same images right on every seed but for 2 (its seeds agree to 0.2
    point), and A and B disagree on 600 of the 2,000 images: Welch's interval over the seeds sees
    almost no chance, while drawing other images would move the difference by about
    sqrt(600) / 2,000 = 1.2 points (the per-image differences' standard error)."""
    rng = np.random.default_rng(3)
    base = rng.random(2000) < 0.8
    a, b = np.tile(base, (3, 1)), np.tile(base, (3, 1))
    a[:, :300], b[:, 300:600] = True, True
    a[:, 300:600], b[:, :300] = False, False
    for k in range(3):
        a[k, 600 + 2 * k : 602 + 2 * k] ^= True
        b[k, 700 + 2 * k : 702 + 2 * k] ^= True
    got = stats.compare(a, b)
    welch = sps.ttest_ind(a.mean(1), b.mean(1), equal_var=False).confidence_interval()
    images_alone = 1.96 * np.std(a.mean(0) - b.mean(0), ddof=1) / math.sqrt(2000)
    low, high = got["ci95"]
    assert high - low > 5 * (welch.high - welch.low)
    # The image-by-seed share removed from the images' term is that of 2 images per seed out of
    # 600 differing: 0.9 of the images' half-width is a safe floor.
    assert (high - low) / 2 > 0.9 * images_alone and got["verdict"] == "not distinguishable"


def test_identical_models_tie_and_a_big_difference_is_better():
    b = correct_from_accuracies([0.96, 0.961, 0.959], seed=5)
    same = stats.compare(b, b)
    assert same["difference"] == 0 and same["verdict"] == "not distinguishable"
    assert same["p"] == 1.0 and not same["fragile"]
    # A gets 40 more images right than B on every seed (2 points on 2,000 images).
    a = b.copy()
    for k in range(3):
        a[k, np.flatnonzero(~b[k])[:40]] = True
    assert stats.compare(a, b)["verdict"] == "better"
    worse = stats.compare(b, a)
    assert worse["verdict"] == "worse" and worse["verdict_text"] == "worse"
    assert worse["difference"] == pytest.approx(-0.02, abs=1e-15)  # 120 / 6,000, exactly


def test_the_same_predictions_give_the_same_interval_in_any_order():
    """Bit for bit: the interval is computed from integer counts, so neither a second call nor
    another order of the images or the seeds changes a single bit of it."""
    a = correct_from_accuracies([0.975, 0.972, 0.978], seed=1)
    b = correct_from_accuracies([0.968, 0.970, 0.966], seed=2)
    first = stats.compare(a, b)
    assert stats.compare(a.copy(), b.copy()) == first
    images, seeds = np.random.default_rng(0).permutation(2000), [2, 0, 1]
    shuffled = stats.compare(a[seeds][:, images], b[::-1][:, images])
    assert shuffled["ci95"] == first["ci95"] and shuffled["p"] == first["p"]


def test_one_seed_covers_only_the_images():
    a = correct_from_accuracies([0.975], seed=1)
    b = correct_from_accuracies([0.968], seed=2)
    got = stats.compare(a, b)
    diff = a.mean() - b.mean()
    half = sps.t.ppf(0.975, 1999) * np.std(a[0] * 1.0 - b[0], ddof=1) / math.sqrt(2000)
    assert got["covers"] == "images" and got["df"] == pytest.approx(1999)
    assert got["ci95"] == pytest.approx([diff - half, diff + half], rel=1e-9)  # as above
    assert got["seeds_needed"] == {
        "seeds": None,
        "why": "one seed: the seed-to-seed spread is unknown",
    }
    assert "over images" in stats.describe(got)


def gains(extra, n_images=10_000, base=9_700):
    """B: 3 identical seeds right on the first `base` images; A: B plus, for seed k, extra[k]
    more images right (disjoint): A's per-seed gains are extra[k] / n_images."""
    b = np.zeros((3, n_images), bool)
    b[:, :base] = True
    a, start = b.copy(), base
    for k, m in enumerate(extra):
        a[k, start : start + m] = True
        start += m
    return a, b


def test_a_verdict_one_seed_could_change_is_fragile():
    """Gains of 1.00, 1.10, 1.20 points: 'better' with 3 seeds (t with 2 degrees of freedom),
    but without the first seed only 2 remain (1 degree of freedom, t = 12.7) and the interval
    reaches 0; gains of 1.00, 1.04, 1.08 stay clear of 0 whichever seed is left out or twice."""
    a, b = gains([100, 110, 120])
    got = stats.compare(a, b)
    assert got["verdict"] == "better" and got["fragile"]
    assert got["verdict_text"] == "better (fragile: one seed fewer or more could change it)"
    assert interval_by_hand(a, b)[1] > 0 and interval_by_hand(a[1:], b)[1] < 0
    a, b = gains([100, 104, 108])
    variants = [(np.delete(a, k, 0), b) for k in range(3)] + [
        (a, np.delete(b, k, 0)) for k in range(3)
    ]
    variants += [(np.vstack([a, a[k]]), b) for k in range(3)] + [
        (a, np.vstack([b, b[k]])) for k in range(3)
    ]
    assert all(interval_by_hand(x, y)[1] > 0 for x, y in variants)
    got = stats.compare(a, b)
    assert got["verdict_text"] == "better" and not got["fragile"]


def test_the_seeds_needed_worked_out_by_hand():
    """1,000 images. B, on all 3 seeds: wrong on images 0-29. A, on all seeds: wrong on 0-9, right
    on 10-29; seed 0 also wrong on 30-34, seed 1 on 35-39, seed 2 on 40-59.
    A: 98.5, 98.5, 97.0% (variance 7.5e-5, ddof 1); B: 97.0% on every seed (variance 0);
    difference 0.01. Per-image seed-mean differences: +1 on 20 images, -1/3 on 30, 0 elsewhere:
    variance (20 + 30/9 - 1000 * 0.01^2) / 999. A's residual sum of squares
    T - sum(k^2)/n - sum(q^2)/S + T^2/(S n) = 2940 - 2881.35 - 8760/3 + 2881.2 = 19.85 over
    2 * 999 degrees of freedom (B's is 0), so var(g_A - g_B)/n = (that variance - 19.85/1998/3)
    / 1000. With S seeds the half-width is 1.96 * sqrt(7.5e-5 / S + var(g)/n): below 0.01 from
    S = 13 on (7.5e-5 / S < 6.09e-6)."""
    b = np.ones((3, 1000), bool)
    b[:, :30] = False
    a = np.ones((3, 1000), bool)
    a[:, :10] = False
    a[0, 30:35], a[1, 35:40], a[2, 40:60] = False, False, False
    image = ((20 + 30 / 9 - 1000 * 0.01**2) / 999 - 19.85 / 1998 / 3) / 1000
    need = 7.5e-5 / ((0.01 / stats.Z) ** 2 - image)
    assert 12 < need < 13  # so 13 seeds, not 12 (need = 12.3)
    assert stats.seeds_needed(a, b) == {"seeds": 13, "why": None}
    assert stats.compare(a, b)["seeds_needed"]["seeds"] == 13
    # Identical seeds; A and B disagree on 101 images for a 0.1-point difference: drawing other
    # images alone moves it by about sqrt(101) / 1,000 = 1 point, and no number of seeds helps.
    a, b = np.ones((3, 1000), bool), np.ones((3, 1000), bool)
    a[:, :50], b[:, 50:101] = False, False
    assert stats.seeds_needed(a, b)["why"].startswith("more test images, not seeds")
    assert stats.seeds_needed(a, a)["why"] == "no difference observed"


def test_describe_reads_the_result_also_from_json_and_bad_input_is_refused():
    a = correct_from_accuracies([0.975, 0.972, 0.978], seed=1)
    b = correct_from_accuracies([0.968, 0.970, 0.966], seed=2)
    got = stats.compare(a, b)
    low, high = got["ci95"]
    text = stats.describe(got)
    assert text == (
        f"+0.70 points, 95% CI [{low * 100:+.2f}, {high * 100:+.2f}] over seeds and images, "
        f"p = {got['p']:.3f}"
    )
    assert stats.describe(json.loads(json.dumps(got))) == text
    tiny = {"difference": 0.01, "ci95": [0.005, 0.015], "p": 1e-5, "covers": "seeds and images"}
    assert stats.describe(tiny).endswith("over seeds and images, p < 0.001")  # not "p = 0.000"
    with pytest.raises(ValueError, match="one shape"):
        stats.compare(a, b[:2])
    with pytest.raises(ValueError, match="one shape"):
        stats.compare(a[:, :1], b[:, :1])
