"""Fit labels read off learning curves across seeds, and their check against continued training.

Curves are per-seed lists of per-epoch values (the history format): [n_seeds][n_epochs]. A label
rests on the validation loss and on its spread over the seeds (Student's t), and where that
evidence cannot support one the diagnosis says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

WINDOW = 3  # the final slope is fitted over the last min(3, n_epochs) epochs
PLATEAU = 2  # a good fit's validation minimum came at least 2 epochs before the end
UNDERFIT_TRAIN_ACC = 0.95  # final train accuracy below 95%: cannot fit its own training images
NO_LABEL = "too few epochs to tell"
ONE_SEED = "too few seeds to tell"
CRITERIA = (
    "labels from the validation loss across seeds (t: Student's 97.5% quantile with seeds - 1 "
    "degrees of freedom; SE: the standard deviation over seeds / sqrt(seeds)), checked in this "
    "order: diverged: a loss became NaN/inf on every seed; underfitting: final training accuracy "
    f"< {UNDERFIT_TRAIN_ACC:.0%} (every CNN configuration with a working optimizer fits > 96% of "
    "its training batches, even augmented and with dropout), or an autoencoder that reconstructs "
    "the validation images no better than their noisy input; still improving: each seed's "
    f"least-squares slope of the validation loss over the last min({WINDOW}, epochs) epochs is "
    "below 0 beyond the seeds' spread (mean + t SE < 0): more epochs would lower it further; "
    "overfitting: the mean validation loss is lowest before the last epoch and each seed's rise "
    "from that epoch to the last is above 0 beyond the spread (mean - t SE > 0); good fit: "
    f"neither, and that minimum came at least {PLATEAU} epochs before the end (a plateau seen) "
    f"or the learning rate was decayed to 0; otherwise no label: {NO_LABEL} ({ONE_SEED} with "
    "one seed: no spread to judge by). The gap between training and validation accuracy is "
    "shown, not judged: it does not say whether more epochs would raise the validation loss. "
    "Training metrics are those of the training batches as trained (augmented, dropout on)"
)


def roughness(curve: Sequence[Sequence[float]]) -> dict[str, float]:
    """Noise of a curve: the std over epochs of its epoch-to-epoch changes, per seed, then
    mean and std over seeds. NaN when fewer than 3 epochs (2 changes are needed)."""
    values = []
    for row in curve:
        diffs = np.diff(np.asarray(row, np.float64))
        values.append(float(np.std(diffs)) if diffs.size >= 2 else float("nan"))
    arr = np.asarray(values)
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if finite.size else float("nan"),
        "std": float(finite.std()) if finite.size else float("nan"),
        "per_seed": values,
    }


def _spread(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, SE = std(ddof=1)/sqrt(S), t quantile) over seeds; SE and t NaN with one seed."""
    s = len(values)
    if s < 2:
        return float(np.mean(values)), float("nan"), float("nan")
    se = float(np.std(values, ddof=1) / np.sqrt(s))
    return float(np.mean(values)), se, float(stats.t.ppf(0.975, s - 1))


def _finite_seeds(*curves: np.ndarray) -> np.ndarray:
    """The seeds (rows) whose values are finite in every curve given."""
    return np.all([np.isfinite(c).all(axis=1) for c in curves], axis=0)


def diagnose(history: Mapping[str, Sequence[Sequence[float]]], *, decayed: bool = False) -> dict:
    """The fit label of a run from its `history` ("train_loss", "val_loss" [n_seeds][n_epochs],
    optional "train_accuracy", "val_accuracy", and an autoencoder's "val_noisy_loss") by
    `CRITERIA`; `decayed`: the learning rate ended at 0. Seeds that diverged are left out.

    Returns {"verdict": "diverged", "underfitting", "still improving", "overfitting", "good fit",
    NO_LABEL or ONE_SEED, "n_seeds" (those kept), "n_epochs", "window" (epochs of the slope),
    "val_loss_slope" (mean per-seed slope, loss per epoch), "val_loss_slope_se", "t",
    "best_val_epoch" (1-based, of the mean curve), "val_loss_rise_from_min" (mean per-seed rise
    from it to the last epoch), "val_loss_rise_se", "final_train_accuracy",
    "final_val_accuracy" (fractions, None without them), "train_minus_val_accuracy_points",
    "final_val_minus_train_loss", "learning_rate_decayed", "criteria"}; losses in nats or MSE.
    """
    train = np.asarray(history["train_loss"], np.float64)
    val = np.asarray(history["val_loss"], np.float64)
    keep = _finite_seeds(train, val)
    train, val = train[keep], val[keep]
    n_seeds, n_epochs = val.shape
    out = {"n_seeds": int(n_seeds), "n_epochs": int(n_epochs), "learning_rate_decayed": decayed}
    if n_seeds == 0:
        return {"verdict": "diverged", **out, "criteria": CRITERIA}
    window = min(WINDOW, n_epochs)
    x = np.arange(window) - (window - 1) / 2  # least-squares slope: sum(x y) / sum(x^2)
    slopes = val[:, n_epochs - window :] @ x / (float(x @ x) if window >= 2 else 1.0)
    slope, slope_se, t = _spread(slopes)
    best = int(np.argmin(val.mean(axis=0)))
    rise, rise_se, _ = _spread(val[:, -1] - val[:, best])
    acc = {
        k: float(np.mean(np.asarray(history[f"{k}_accuracy"], np.float64)[keep][:, -1]))
        for k in ("train", "val")
        if f"{k}_accuracy" in history
    }
    noisy = history.get("val_noisy_loss")
    no_better = noisy is not None and not (
        val[:, -1].mean() < np.asarray(noisy, np.float64)[keep][:, -1].mean()
    )
    if acc.get("train", 1.0) < UNDERFIT_TRAIN_ACC or no_better:
        verdict = "underfitting"
    elif n_seeds < 2:
        verdict = ONE_SEED
    elif window >= 2 and slope + t * slope_se < 0:
        verdict = "still improving"
    elif best < n_epochs - 1 and rise - t * rise_se > 0:
        verdict = "overfitting"
    elif best <= n_epochs - 1 - PLATEAU or decayed:
        verdict = "good fit"
    else:
        verdict = NO_LABEL
    gap = 100 * (acc["train"] - acc["val"]) if len(acc) == 2 else float("nan")
    return {
        "verdict": verdict,
        **out,
        "window": window,
        "val_loss_slope": slope if window >= 2 else float("nan"),
        "val_loss_slope_se": slope_se if window >= 2 else float("nan"),
        "t": t,
        "best_val_epoch": best + 1,
        "val_loss_rise_from_min": rise,
        "val_loss_rise_se": rise_se,
        "final_train_accuracy": acc.get("train"),
        "final_val_accuracy": acc.get("val"),
        "train_minus_val_accuracy_points": gap,
        "final_val_minus_train_loss": float(val[:, -1].mean() - train[:, -1].mean()),
        "criteria": CRITERIA,
    }


def continuation_check(short: Mapping, long: Mapping) -> dict:
    """What continuing the run did: `long` is `short` trained on (the same seeds; its first
    epochs' "val_loss" equal `short`'s, bit for bit).

    The continuation lowers the validation loss when, at the continuation's best epoch (where
    its mean over seeds is lowest, which an early-stopped run would keep), each seed's change
    from the short run's last epoch is below 0 beyond the seeds' spread (mean + t SE < 0, as in
    `CRITERIA`). Picking that epoch on the mean of S seeds biases the change down by about the
    epoch-to-epoch noise / sqrt(S), about one SE: well inside t (4.3 for 3 seeds).

    Returns {"lowers": bool, None with one seed, "change" (mean over seeds), "change_se", "t",
    "from_epoch", "to_epoch" (1-based), "n_seeds" (finite on both sides)}.

    Raises:
      ValueError: `long` is not `short` continued (another number of seeds, no more epochs, or
        different first epochs).
    """
    a = np.asarray(short["val_loss"], np.float64)
    b = np.asarray(long["val_loss"], np.float64)
    n = a.shape[1]
    if (
        b.shape[0] != a.shape[0]
        or b.shape[1] <= n
        or not np.array_equal(b[:, :n], a, equal_nan=True)
    ):
        raise ValueError(
            f"the longer run ({b.shape[1]} epochs of {b.shape[0]} seeds) does not continue the "
            f"shorter one ({n} epochs of {a.shape[0]} seeds): compare runs of one configuration"
        )
    b = b[_finite_seeds(b)]
    best = n + int(np.argmin(b[:, n:].mean(axis=0))) if len(b) else n
    change, se, t = _spread(b[:, best] - b[:, n - 1]) if len(b) else (np.nan,) * 3
    return {
        "lowers": bool(change + t * se < 0) if len(b) >= 2 else None,
        "change": change,
        "change_se": se,
        "t": t,
        "from_epoch": n,
        "to_epoch": best + 1,
        "n_seeds": len(b),
    }


def agrees(label: str, continuation: Mapping) -> bool | None:
    """Whether a fit label agrees with what the continuation did ("still improving" if and only
    if it lowers the validation loss; "good fit" and "overfitting" if it does not); None where
    the label claims nothing about more epochs, or the continuation cannot tell (one seed)."""
    lowers = continuation.get("lowers")
    if lowers is None or label not in ("still improving", "good fit", "overfitting"):
        return None
    return lowers == (label == "still improving")
