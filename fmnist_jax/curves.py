"""Numbers read off learning curves, so that "noisy", "underfitting" and "overfitting" are
computed criteria rather than impressions.

Curves are per-seed lists of per-epoch values (the history format): [n_seeds][n_epochs].
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# Thresholds of the fit diagnosis (stated in every verdict that uses them).
OVERFIT_RISE = 0.10  # final val loss >= 10% above its minimum ...
UNDERFIT_SLOPE = 0.05  # ... or train loss still falling >= 5% over the last epoch
UNDERFIT_TRAIN_ACC = 0.90  # ... or final train accuracy below 90%


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


def _mean_curve(curve) -> np.ndarray:
    arr = np.asarray(curve, np.float64)
    finite = np.isfinite(arr)
    total = np.where(finite, arr, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def diagnose(history: Mapping[str, Sequence[Sequence[float]]], *, train: str = "train",
             val: str = "val") -> dict:
    """Under/over-fitting from the mean curves over seeds.

    overfitting: the final validation loss is >= OVERFIT_RISE above its minimum, reached at
      an earlier epoch, while the training loss kept falling;
    underfitting: the training loss is still falling by >= UNDERFIT_SLOPE over the last
      epoch, or the final training accuracy is below UNDERFIT_TRAIN_ACC;
    otherwise a good fit. Returns the verdict with the numbers behind it.
    """
    train_loss = _mean_curve(history[f"{train}_loss"])
    val_loss = _mean_curve(history[f"{val}_loss"])
    n = len(train_loss)
    best = int(np.nanargmin(val_loss)) if np.isfinite(val_loss).any() else n - 1
    rise = float(val_loss[-1] / val_loss[best] - 1.0) if np.isfinite(val_loss[best]) else float("nan")
    slope = float(1.0 - train_loss[-1] / train_loss[-2]) if n >= 2 else float("nan")
    train_acc = (float(_mean_curve(history[f"{train}_accuracy"])[-1])
                 if f"{train}_accuracy" in history else None)
    gap = float(val_loss[-1] - train_loss[-1])
    if not np.all(np.isfinite(train_loss)):
        verdict = "diverged"
    elif best < n - 1 and rise >= OVERFIT_RISE and train_loss[-1] < train_loss[best]:
        verdict = "overfitting"
    elif (n >= 2 and slope >= UNDERFIT_SLOPE) or (train_acc is not None and train_acc < UNDERFIT_TRAIN_ACC):
        verdict = "underfitting"
    else:
        verdict = "good fit"
    return {
        "verdict": verdict,
        "best_val_epoch": best + 1,
        "val_loss_rise_from_min": rise,
        "train_loss_last_epoch_drop": slope,
        "final_train_accuracy": train_acc,
        "final_val_minus_train_loss": gap,
        "criteria": (
            f"overfitting: final val loss >= {OVERFIT_RISE:.0%} above its minimum (reached earlier) "
            f"while train loss fell; underfitting: train loss still falling >= {UNDERFIT_SLOPE:.0%} "
            f"over the last epoch or final train accuracy < {UNDERFIT_TRAIN_ACC:.0%}"
        ),
    }
