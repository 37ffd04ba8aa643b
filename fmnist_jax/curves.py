"""Numbers read off learning curves, so that "noisy", "underfitting" and "overfitting" are
computed criteria rather than impressions.

Curves are per-seed lists of per-epoch values (the history format): [n_seeds][n_epochs].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Thresholds of the fit diagnosis (why each, in CRITERIA; stated in every diagnosis).
TURN_NOISE = 2.0  # the val loss rose > 2x its own noise (see `noise`) above its minimum ...
TURN_FLOOR = 0.05  # ... and > 5% of that minimum (for curves too short to measure the noise)
GAP_POINTS = 2.0  # train accuracy >= 2 points above val accuracy: fits its training data better
UNDERFIT_TRAIN_ACC = 0.95  # final train accuracy below 95%: cannot fit its own training images
STILL_FALLING = 0.05  # train loss fell >= 5% over the last epoch, at a rate not decayed to 0
CRITERIA = (
    "overfitting: the validation loss turned (judged from 4 epochs on, when its noise can be "
    f"measured), rising above its minimum (reached earlier) by more than {TURN_NOISE:g}x its "
    f"noise (the mean curve's, from its second differences) and {TURN_FLOOR:.0%} of the minimum "
    "while the "
    f"training loss kept falling, or the training accuracy exceeds the validation accuracy by "
    f">= {GAP_POINTS:g} points (about 6 standard errors of a 3,000-image validation accuracy near "
    f"97%: no sampling accident); underfitting (checked first): final training accuracy < "
    f"{UNDERFIT_TRAIN_ACC:.0%} (every CNN configuration with a working optimizer fits > 96% of its "
    "training batches, even augmented and with dropout), or an autoencoder that reconstructs the "
    "validation images no better than their noisy input itself; still improving: the training "
    f"loss fell by >= {STILL_FALLING:.0%} over the last epoch (or there was only one) at a "
    "learning rate not decayed to 0: more epochs would still help; otherwise a good fit. Training "
    "metrics are those of the training batches as trained (augmented, dropout on)"
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


def noise(curve: Sequence[float]) -> float:
    """The noise of a curve around its trend: std(second differences) / sqrt(6), which for white
    noise of std s around a smooth trend is s (a second difference x[t+1] - 2 x[t] + x[t-1]
    has variance 6 s^2 and cancels a linear trend). NaN below 4 epochs."""
    second = np.diff(np.asarray(curve, np.float64), n=2)
    return float(np.std(second, ddof=1) / np.sqrt(6.0)) if second.size >= 2 else float("nan")


def _mean_curve(curve) -> np.ndarray:
    arr = np.asarray(curve, np.float64)
    finite = np.isfinite(arr)
    total = np.where(finite, arr, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def diagnose(
    history: Mapping[str, Sequence[Sequence[float]]],
    *,
    decayed: bool = False,
    train: str = "train",
    val: str = "val",
) -> dict:
    """Under/over-fitting from the mean curves over seeds, by `CRITERIA`: the validation trend
    (where the validation loss is lowest, how far it rose after), the generalization gap
    (val - train loss; train - val accuracy) and convergence (the last epoch's fall of the train
    loss; `decayed`: the learning rate ended at 0, so a falling loss is the annealing).

    Returns the verdict ("diverged", "overfitting", "underfitting", "still improving" or
    "good fit") with every number behind it (losses in nats or MSE, accuracies as fractions).
    """
    train_loss, val_loss = (
        _mean_curve(history[f"{train}_loss"]),
        _mean_curve(history[f"{val}_loss"]),
    )
    n = len(train_loss)
    best = int(np.nanargmin(val_loss)) if np.isfinite(val_loss).any() else n - 1
    val_noise = noise(val_loss)
    rise = float(val_loss[-1] - val_loss[best])
    threshold = max(
        TURN_NOISE * val_noise if np.isfinite(val_noise) else 0.0,
        TURN_FLOOR * float(val_loss[best]),
    )
    turned = bool(
        np.isfinite(val_noise)
        and best < n - 1
        and rise > threshold
        and train_loss[-1] < train_loss[best]
    )
    drop = float(1.0 - train_loss[-1] / train_loss[-2]) if n >= 2 else float("nan")
    falling = bool(
        (n < 2 or drop >= STILL_FALLING) and not decayed
    )  # one epoch: nothing says it converged
    acc = {}
    for split in (train, val):
        if f"{split}_accuracy" in history:
            acc[split] = float(_mean_curve(history[f"{split}_accuracy"])[-1])
    gap_points = 100 * (acc[train] - acc[val]) if len(acc) == 2 else float("nan")
    noisy = f"{val}_noisy_loss"  # an autoencoder's: the noisy input's own error
    no_better = noisy in history and not val_loss[-1] < _mean_curve(history[noisy])[-1]
    if not np.all(np.isfinite(train_loss)):
        verdict = "diverged"
    elif (train in acc and acc[train] < UNDERFIT_TRAIN_ACC) or no_better:
        verdict = "underfitting"
    elif turned or gap_points >= GAP_POINTS:
        verdict = "overfitting"
    elif falling:
        verdict = "still improving"
    else:
        verdict = "good fit"
    return {
        "verdict": verdict,
        "best_val_epoch": best + 1,
        "val_loss_rise_from_min": rise,
        "val_loss_turn_threshold": threshold,
        "val_loss_noise": val_noise,
        "final_val_minus_train_loss": float(val_loss[-1] - train_loss[-1]),
        "final_train_accuracy": acc.get(train),
        "final_val_accuracy": acc.get(val),
        "train_minus_val_accuracy_points": gap_points,
        "train_loss_last_epoch_drop": drop,
        "learning_rate_decayed": decayed,
        "criteria": CRITERIA,
    }
