"""The fit diagnosis (fmnist_jax.curves) on synthetic curves of each kind, whose slopes, rises and
spreads over seeds are worked out by hand here, and its check against continued training."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmnist_jax import curves

# Student's t, 97.5% quantile, 2 degrees of freedom (3 seeds): its distribution function is
# 1/2 + t / (2 sqrt(2 + t^2)), so t / sqrt(2 + t^2) = 0.95.
T2 = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # 4.3027


def history(val_mean, deviations=(), train_acc=0.97, val_acc=0.96, start=None):
    """3 seeds: the mean validation curve plus, from epoch `start` (1-based; default: so that the
    deviations end at the last epoch), seed k's deviations[k] (each epoch's deviations sum to 0,
    so the mean curve is `val_mean`); a falling training loss; flat accuracies."""
    val = np.tile(np.asarray(val_mean, float), (3, 1))
    if len(deviations):
        dev = np.asarray(deviations, float)
        first = len(val_mean) - dev.shape[1] if start is None else start - 1
        val[:, first : first + dev.shape[1]] += dev
    n = len(val_mean)
    return {
        "train_loss": [[0.3 / (e + 1) for e in range(n)] for _ in range(3)],
        "val_loss": val.tolist(),
        "train_accuracy": [[train_acc] * n for _ in range(3)],
        "val_accuracy": [[val_acc] * n for _ in range(3)],
    }


# The case: q1_epochs/epochs_5, mean validation loss 0.105, 0.099, 0.093 at epochs 3-5
# with a seed spread of ~0.003, was called a good fit; the same run continued to 10 epochs
# lowered it to 0.081. Per-seed slopes over epochs 3-5 ((y5 - y3) / 2): -0.007, -0.0055, -0.0055.
EPOCHS_5 = [0.20, 0.13, 0.105, 0.099, 0.093]
EPOCHS_5_DEV = [[0.003, -0.002, 0.001], [-0.002, 0.003, -0.001], [-0.001, -0.001, 0.0]]
EPOCHS_10 = EPOCHS_5 + [0.090, 0.087, 0.085, 0.083, 0.0812]
EPOCHS_10_DEV = [
    EPOCHS_5_DEV[0] + [0.002, -0.001, 0.001, -0.002, 0.001],
    EPOCHS_5_DEV[1] + [-0.001, 0.002, -0.002, 0.001, 0.0],
    EPOCHS_5_DEV[2] + [-0.001, -0.001, 0.001, 0.001, -0.001],
]


def test_a_falling_validation_loss_is_still_improving_and_the_continuation_agrees():
    d = curves.diagnose(history(EPOCHS_5, EPOCHS_5_DEV))
    # Mean slope -0.006 per epoch; the slopes' deviations -0.001, +0.0005, +0.0005 give a sample
    # variance of 7.5e-7 and an SE of sqrt(7.5e-7 / 3) = 0.0005; -0.006 + 4.30 * 0.0005 < 0.
    assert d["verdict"] == "still improving" and d["window"] == 3 and d["n_seeds"] == 3
    assert d["val_loss_slope"] == pytest.approx(-0.006, abs=1e-12)  # float sums of 3 terms
    assert d["val_loss_slope_se"] == pytest.approx(0.0005, abs=1e-12)
    assert d["t"] == pytest.approx(T2, rel=1e-9)  # scipy's iterative quantile
    long = history(EPOCHS_10, EPOCHS_10_DEV, start=3)
    short = {k: [row[:5] for row in v] for k, v in long.items()}
    assert short == history(EPOCHS_5, EPOCHS_5_DEV)  # the long run continues the short one
    c = curves.continuation_check(short, long)
    # At epoch 10 (mean 0.0812, the continuation's lowest) each seed is 0.0118, 0.0108, 0.0128
    # below its epoch 5: mean -0.0118, SE 0.000577; -0.0118 + 4.30 * 0.000577 < 0.
    assert c["lowers"] is True and (c["from_epoch"], c["to_epoch"]) == (5, 10)
    assert c["change"] == pytest.approx(-0.0118, abs=1e-12)
    assert curves.agrees(d["verdict"], c) is True


# A U: lowest at epoch 3, then up by 0.12 on every seed (within +-0.003).
U_SHAPE = [0.45, 0.32, 0.28, 0.30, 0.34, 0.40, 0.45, 0.50]
U_DEV = [[0.002, -0.001, 0.003], [-0.001, 0.003, -0.002], [-0.001, -0.002, -0.001]]


def test_a_validation_loss_that_turns_up_is_overfitting_and_its_continuation_does_not_help():
    long = history(U_SHAPE, U_DEV, start=4)
    short = {k: [row[:6] for row in v] for k, v in long.items()}
    d = curves.diagnose(short)
    # Rises from epoch 3 to 6: 0.12 + (+0.003, -0.002, -0.001): mean 0.12, SE 0.00153.
    assert d["verdict"] == "overfitting" and d["best_val_epoch"] == 3
    assert d["val_loss_rise_from_min"] == pytest.approx(0.12, abs=1e-12)
    assert d["val_loss_slope"] == pytest.approx(0.05, abs=1e-12)  # (0.40 - 0.30) / 2
    c = curves.continuation_check(short, long)
    assert c["lowers"] is False and c["to_epoch"] == 7 and curves.agrees(d["verdict"], c) is True


# Levels off from epoch 4 (0.090, then 0.092, 0.091, 0.092), the seeds scattered by ~0.003.
PLATEAU = [0.30, 0.15, 0.10, 0.090, 0.092, 0.091, 0.092]
PLATEAU_DEV = [
    [0.002, -0.003, 0.002, -0.002],
    [-0.001, 0.002, -0.003, 0.003],
    [-0.001, 0.001, 0.001, -0.001],
]


def test_a_plateau_is_a_good_fit_and_its_continuation_does_not_lower_it():
    d = curves.diagnose(history(PLATEAU, PLATEAU_DEV))
    # Slopes over epochs 5-7: +0.0005, +0.0005, -0.001 (mean 0, SE 0.0005: not below 0);
    # rises from epoch 4 to 7: -0.002, +0.006, +0.002 (mean 0.002, SE 0.0023: not above 0); the
    # minimum 3 epochs before the end.
    assert d["verdict"] == "good fit" and d["best_val_epoch"] == 4
    assert d["val_loss_slope"] == pytest.approx(0.0, abs=1e-12)
    assert d["val_loss_rise_from_min"] == pytest.approx(0.002, abs=1e-12)
    assert d["val_loss_rise_se"] == pytest.approx(0.004 / math.sqrt(3), abs=1e-12)
    more = [0.0915, 0.091, 0.0912]
    dev = [[0.002, -0.002, 0.001], [-0.003, 0.001, 0.002], [0.001, 0.001, -0.003]]
    long = history(PLATEAU + more, [p + m for p, m in zip(PLATEAU_DEV, dev, strict=True)], start=4)
    c = curves.continuation_check(history(PLATEAU, PLATEAU_DEV), long)
    # At epoch 9 (0.091): changes from epoch 7 of -0.001 + (0, -0.002, +0.002), mean -0.001,
    # SE 0.00115: -0.001 + 4.30 * 0.00115 > 0, not lowered beyond the spread.
    assert c["to_epoch"] == 9 and c["lowers"] is False and curves.agrees("good fit", c) is True


def test_the_augmentation_rows_case_is_not_still_improving():
    """q1_augmentation/expand was called 'still improving' although its validation loss bottomed
    at epoch 3 and stayed above it: its slope over epochs 3-5 is +0.002 per epoch."""
    d = curves.diagnose(
        history(
            [0.12, 0.095, 0.085, 0.092, 0.089],
            [[0.001, -0.002, 0.003], [-0.002, 0.003, -0.001], [0.001, -0.001, -0.002]],
        )
    )
    # Rises from epoch 3 to 5: 0.004 + (0.002, +0.001, -0.003): mean 0.004, SE 0.00153;
    # 0.004 - 4.30 * 0.00153 < 0: no overfitting shown; the minimum 2 epochs before the end.
    assert d["val_loss_slope"] == pytest.approx(0.002, abs=1e-12)
    assert d["verdict"] == "good fit"


def test_too_few_epochs_to_tell():
    # Two epochs, the seeds disagreeing on the direction (+0.01, -0.005, +0.02).
    two = curves.diagnose(
        {"train_loss": [[0.3, 0.15]] * 3, "val_loss": [[0.17, 0.18], [0.17, 0.165], [0.17, 0.19]]}
    )
    assert two["window"] == 2 and two["verdict"] == curves.NO_LABEL
    # Lowest at the last epoch, but the last 3 epochs' slope is not below 0 beyond the spread
    # (slopes -0.0045, +0.0015, +0.0015: mean -0.0005, SE 0.002).
    flat = history(
        [0.2, 0.12, 0.1, 0.1, 0.099],
        [[0.002, 0.0, -0.006], [-0.001, 0.0, 0.003], [-0.001, 0.0, 0.003]],
    )
    d = curves.diagnose(flat)
    assert d["best_val_epoch"] == 5 and d["verdict"] == curves.NO_LABEL
    # The same curve with the learning rate decayed to 0: training is over by design.
    assert curves.diagnose(flat, decayed=True)["verdict"] == "good fit"
    one_epoch = curves.diagnose(history([0.2]))
    assert one_epoch["verdict"] == curves.NO_LABEL and math.isnan(one_epoch["val_loss_slope"])


def test_one_seed_has_no_spread_to_judge_by():
    h = {k: v[:1] for k, v in history(EPOCHS_5, EPOCHS_5_DEV).items()}
    d = curves.diagnose(h)
    assert d["verdict"] == curves.ONE_SEED and d["n_seeds"] == 1 and math.isnan(d["t"])
    long = {k: v[:1] for k, v in history(EPOCHS_10, EPOCHS_10_DEV, start=3).items()}
    c = curves.continuation_check(h, long)
    assert c["lowers"] is None and curves.agrees("still improving", c) is None


def test_underfitting_is_checked_first():
    """A model that fits a quarter of its training images is underfitting, whatever its curves
    (the quick smoke run's SGD row: train 24%); so is an autoencoder that reconstructs no better
    than its noisy input."""
    d = curves.diagnose(history(EPOCHS_5, EPOCHS_5_DEV, train_acc=0.24, val_acc=0.213))
    assert d["verdict"] == "underfitting" and d["final_train_accuracy"] == pytest.approx(0.24)
    assert d["train_minus_val_accuracy_points"] == pytest.approx(2.7)
    ae = {k: v for k, v in history(PLATEAU, PLATEAU_DEV).items() if "accuracy" not in k}
    ae["val_noisy_loss"] = [[0.05] * 7] * 3
    assert curves.diagnose(ae)["verdict"] == "underfitting"
    ae["val_noisy_loss"] = [[0.2] * 7] * 3
    got = curves.diagnose(ae)
    assert got["verdict"] == "good fit" and got["final_train_accuracy"] is None


def test_diverged_seeds_are_left_out_and_all_diverged_is_diverged():
    h = history(EPOCHS_5, EPOCHS_5_DEV)
    h["val_loss"][0][4] = float("nan")
    d = curves.diagnose(h)
    assert d["n_seeds"] == 2 and d["verdict"] == "still improving"  # slopes -0.0055, -0.0055
    h["train_loss"] = [[0.5, float("inf"), 0.4, 0.3, 0.2]] * 3
    assert curves.diagnose(h)["verdict"] == "diverged"


def test_the_continuation_must_continue_the_same_run_and_agreement_is_one_way():
    short = history(EPOCHS_5, EPOCHS_5_DEV)
    with pytest.raises(ValueError, match="does not continue"):
        curves.continuation_check(short, history(U_SHAPE))
    with pytest.raises(ValueError, match="does not continue"):
        curves.continuation_check(short, short)  # no later epoch
    lowers, stays = {"lowers": True}, {"lowers": False}
    assert (
        curves.agrees("good fit", lowers) is False and curves.agrees("overfitting", lowers) is False
    )
    assert curves.agrees("still improving", stays) is False
    assert (
        curves.agrees(curves.NO_LABEL, lowers) is None
        and curves.agrees("underfitting", stays) is None
    )
    assert "still improving:" in curves.CRITERIA and "underfitting:" in curves.CRITERIA


def test_roughness_is_the_spread_of_the_epoch_to_epoch_changes():
    r = curves.roughness([[1.0, 2.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert r["per_seed"] == pytest.approx([np.std([1.0, -1.0, 1.0]), 0.0])
    assert math.isnan(curves.roughness([[1.0, 2.0]])["mean"])  # two epochs: one change, undefined
