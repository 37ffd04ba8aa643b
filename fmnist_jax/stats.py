"""Is configuration A more accurate than B? One interval over both sources of chance.

Both configurations are scored on the same images (`correct` arrays bool [n_seeds, n_images]);
seed k of A and seed k of B are unrelated models. Each side's scores form a crossed array,
y[s, i] = mu + a[s] + g[i] + e[s, i] (two-way random effects), so the difference D of the mean
accuracies has the variance

  (var(a_A) + var(e_A)/n) / S_A + (var(a_B) + var(e_B)/n) / S_B + var(g_A - g_B) / n.

The first two terms are estimated as in Welch's test, by each side's per-seed accuracies'
variance (ddof=1) over its seeds; the last, by the variance of the per-image seed-mean
differences over n (which also holds var(e_A)/S_A + var(e_B)/S_B, removed with var(e) from each
side's residual mean square of the two-way analysis of variance; floored at 0). The interval is
Student's t with Satterthwaite's (1946) degrees of freedom (S_A - 1, S_B - 1, n - 1): Welch's
interval, widened by what drawing other test images would add.

A two-way (pigeonhole) bootstrap over seeds and images was the alternative (`scipy.stats.bootstrap`
cannot cross two factors): it counts var(e) about three times (Owen 2007, "The pigeonhole
bootstrap", Ann. Appl. Stat. 1(2)) and, with 3 seeds, resamples their spread at 2/3 of its size
with normal quantiles. In the simulated studies of tests/test_stats.py (3 seeds, 95%) it covered
the truth 85% of the time when the seeds dominate and 100% with image-by-seed noise alone, and
Welch's interval over the seeds alone 40% when the models' own hard images dominate; this
interval covers 94-97.5% in all four kinds.

Every term is computed from integer sums of the bool arrays by the same few float operations, so
it is the same bit for bit on any machine; only scipy's t quantile might differ in its last bits,
which could move a verdict only for an interval end within ~1e-15 of 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05
Z = 1.959963984540054  # the normal 97.5% quantile, for the power estimate
MAX_SEEDS = 100  # the power estimate searches up to this many seeds per side
VERDICTS = ("better", "worse", "not distinguishable")
FRAGILE = "fragile: one seed fewer or more could change it"
METHOD = (
    "Welch's 95% t interval over the seeds' accuracies, widened by the variance that drawing "
    "other test images would add (from the per-image differences, less the image-by-seed part "
    "the seeds already carry; Satterthwaite's degrees of freedom), so that it covers both which "
    "runs and which images chance gave; a difference counts when its interval excludes 0"
)


def compare(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """A vs B on the same images: `a_correct`, `b_correct` bool [n_seeds, n_images].

    Returns {"difference": mean accuracy of A - B (a fraction), "ci95": [low, high] of it, "p":
    its two-sided p-value, "se": its standard error, "df": Satterthwaite's degrees of freedom,
    "verdict": one of VERDICTS ("better"/"worse" when the interval excludes 0), "fragile": the
    verdict changes when any one seed of either side is left out or counted twice (a seed fewer,
    or one more like one seen), "verdict_text": the verdict, with FRAGILE appended when fragile,
    "covers": "seeds and images", or "images" with one seed (no seed spread to measure),
    "seeds_needed": `seeds_needed`'s answer, "n_seeds", "n_images"}.

    Raises:
      ValueError: the arrays are not [n_seeds, n_images] of one shape with >= 2 images.
    """
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] < 1 or a.shape[1] < 2:
        raise ValueError(
            f"need two [n_seeds, n_images] arrays of one shape, got {a.shape} and {b.shape}"
        )
    diff, low, high, p, se, df = _interval(a, b)
    verdict = _verdict(low, high)
    others = [(np.delete(a, s, 0), b) for s in range(len(a)) if len(a) > 1]
    others += [(a, np.delete(b, s, 0)) for s in range(len(b)) if len(b) > 1]
    others += [(np.vstack([a, a[s]]), b) for s in range(len(a))]
    others += [(a, np.vstack([b, b[s]])) for s in range(len(b))]
    fragile = any(_verdict(*_interval(x, y)[1:3]) != verdict for x, y in others)
    return {
        "difference": diff,
        "ci95": [low, high],
        "p": p,
        "se": se,
        "df": df,
        "verdict": verdict,
        "fragile": fragile,
        "verdict_text": f"{verdict} ({FRAGILE})" if fragile else verdict,
        "covers": "seeds and images" if len(a) > 1 else "images",
        "seeds_needed": seeds_needed(a, b),
        "n_seeds": int(a.shape[0]),
        "n_images": int(a.shape[1]),
    }


def _components(a: np.ndarray, b: np.ndarray) -> dict:
    """The variance terms of A - B from integer sums (a, b bool [seeds of A or B, n_images])."""
    (sa, n), sb = a.shape, len(b)
    out = {"difference": (sb * int(a.sum()) - sa * int(b.sum())) / (sa * sb * n)}
    z = sb * a.sum(axis=0, dtype=np.int64) - sa * b.sum(axis=0, dtype=np.int64)
    zs, zz = int(z.sum()), int(z @ z)  # the per-image seed-mean differences are z / (sa sb)
    out["images"] = (n * zz - zs * zs) / (n * (n - 1) * (sa * sb) ** 2) / n
    for side, y in (("a", a), ("b", b)):
        s, k, q = len(y), y.sum(axis=1, dtype=np.int64), y.sum(axis=0, dtype=np.int64)
        t, kk, qq = int(k.sum()), int(k @ k), int(q @ q)
        if s > 1:  # var(a) + var(e)/n: the per-seed accuracies' variance; var(e): residuals'
            out[f"seeds_{side}"] = (s * kk - t * t) / (s * (s - 1) * n * n)
            var_e = (s * n * t - s * kk - n * qq + t * t) / (s * n * (s - 1) * (n - 1))
            out["images"] -= var_e / (s * n)  # leaves var(g_A - g_B) / n
    out["images"] = max(0.0, out["images"])
    return out


def _interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """(difference, low, high, p, se, df) of A - B."""
    c, n = _components(a, b), a.shape[1]
    parts = [(c["images"], n - 1)]  # (variance term, its degrees of freedom)
    parts += [(c[f"seeds_{x}"] / len(y), len(y) - 1) for x, y in (("a", a), ("b", b)) if len(y) > 1]
    var, diff = sum(v for v, _ in parts), c["difference"]
    if var == 0:  # no variation at all: the difference is what it is
        return diff, diff, diff, float(diff == 0), 0.0, math.inf
    df = var**2 / sum(v * v / d for v, d in parts)  # Satterthwaite (1946)
    se, t = math.sqrt(var), float(stats.t.ppf(1 - ALPHA / 2, df))
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return diff, diff - t * se, diff + t * se, p, se, df


def _verdict(low: float, high: float) -> str:
    return "better" if low > 0 else "worse" if high < 0 else "not distinguishable"


def seeds_needed(a: np.ndarray, b: np.ndarray) -> dict:
    """How many seeds per side would make the 95% interval narrower than the observed difference.

    From `compare`'s variance terms (a, b bool [n_seeds, n_images], n_seeds >= 2): with S seeds
    per side the variance would be (v_A + v_B) / S + var(g_A - g_B) / n, v the per-seed
    accuracies' variance, and the half-width Z times its root (a normal approximation).

    Returns {"seeds": the smallest S <= MAX_SEEDS whose half-width is below |difference|, else
    None, "why": None, or why no number of seeds would do}.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if len(a) < 2 or len(b) < 2:
        return {"seeds": None, "why": "one seed: the seed-to-seed spread is unknown"}
    c = _components(a, b)
    diff, seeds = abs(c["difference"]), c["seeds_a"] + c["seeds_b"]
    if diff == 0:
        return {"seeds": None, "why": "no difference observed"}
    if Z * math.sqrt(c["images"]) >= diff:
        return {"seeds": None, "why": "more test images, not seeds: the images alone are too few"}
    for s in range(2, MAX_SEEDS + 1):
        if Z * math.sqrt(seeds / s + c["images"]) < diff:
            return {"seeds": s, "why": None}
    return {"seeds": None, "why": f"more than {MAX_SEEDS} seeds per side"}


def describe(result: dict, scale: float = 100.0) -> str:
    """A comparison in words, e.g. '+0.42 points, 95% CI [+0.15, +0.69] over seeds and images,
    p = 0.010'. Reads `compare`'s result, also as read back from JSON."""
    low, high = (float(v) for v in result["ci95"])
    p = float(result["p"])
    return (
        f"{float(result['difference']) * scale:+.2f} points, 95% CI [{low * scale:+.2f}, "
        f"{high * scale:+.2f}] over {result['covers']}, "
        + ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")
    )
