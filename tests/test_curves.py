"""The fit diagnosis (fmnist_jax.curves) on synthetic curves of each kind, and on curves of the
study's own runs (3 seeds averaged, copied from a full run of the study on 2026-11-30)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fmnist_jax import curves


def history(train_loss, val_loss, train_acc=None, val_acc=None, seeds=3, jitter=0.0):
    """Per-seed curves around the given mean curves (seed k shifted by (k - 1) * jitter)."""

    def rows(curve):
        return [[float(v) + (k - 1) * jitter for v in curve] for k in range(seeds)]

    h = {"train_loss": rows(train_loss), "val_loss": rows(val_loss)}
    if train_acc is not None:
        h["train_accuracy"], h["val_accuracy"] = rows(train_acc), rows(val_acc)
    return h


# The 10-epoch CNN row (online augmentation): the validation loss jitters by ~0.01 per epoch and
# ends 0.009 above its minimum, a wobble, not a turn; the training loss still falls 5%.
CNN_10 = history(
    [0.2221, 0.1321, 0.1129, 0.1023, 0.0956, 0.0883, 0.0857, 0.0805, 0.0801, 0.0758],
    [0.1164, 0.1187, 0.0931, 0.0893, 0.0881, 0.0896, 0.0963, 0.0860, 0.0738, 0.0826],
    [0.9205, 0.9535, 0.9608, 0.9644, 0.9664, 0.9686, 0.9692, 0.9717, 0.9720, 0.9730],
    [0.9586, 0.9573, 0.9697, 0.9720, 0.9719, 0.9732, 0.9704, 0.9721, 0.9753, 0.9731],
)
# The tuned row: its last two epochs on the original images while the rate falls to 0 (train
# loss 0.019, val loss 0.077, train accuracy 99.3%), formerly called "underfitting".
TUNED = history(
    [0.1369, 0.0749, 0.0613, 0.0509, 0.0449, 0.0292, 0.0186],
    [0.0899, 0.0854, 0.0849, 0.0785, 0.0847, 0.0741, 0.0774],
    [0.952, 0.9735, 0.978, 0.9812, 0.9835, 0.9893, 0.993],
    [0.9707, 0.9743, 0.9761, 0.9759, 0.976, 0.9792, 0.9806],
)


def test_a_validation_loss_that_turns_up_is_overfitting():
    d = curves.diagnose(
        history([0.5, 0.3, 0.2, 0.12, 0.07, 0.04], [0.45, 0.32, 0.28, 0.3, 0.34, 0.4])
    )
    assert d["verdict"] == "overfitting"
    assert d["best_val_epoch"] == 3 and d["val_loss_rise_from_min"] == pytest.approx(0.12)


def test_two_epochs_cannot_show_a_turn():
    """A validation loss that rose from epoch 1 to 2 while the training loss fell fast: too short
    to tell a turn from noise (2+2 epochs of Q2's fine-tuning looked like this)."""
    d = curves.diagnose(history([0.3, 0.17], [0.17, 0.18], [0.92, 0.961], [0.955, 0.953]))
    assert d["best_val_epoch"] == 1 and d["val_loss_rise_from_min"] > 0.05 * 0.17
    assert math.isnan(d["val_loss_noise"]) and d["verdict"] == "still improving"


def test_a_large_accuracy_gap_is_overfitting():
    d = curves.diagnose(
        history(
            [0.3, 0.1, 0.03, 0.01],
            [0.2, 0.15, 0.14, 0.14],
            [0.9, 0.97, 0.995, 0.999],
            [0.94, 0.955, 0.96, 0.962],
        )
    )
    assert d["verdict"] == "overfitting"
    assert d["train_minus_val_accuracy_points"] == pytest.approx(3.7)


def test_underfitting_is_checked_before_a_gap():
    """A model that fits a quarter of its training images is underfitting, whatever its gap
    (the quick smoke run's SGD row: train 24%, val 21%); an autoencoder that reconstructs no
    better than its noisy input is underfitting too."""
    d = curves.diagnose(history([1.6, 1.58], [1.61, 1.6], [0.2, 0.24], [0.2, 0.213]))
    assert d["train_minus_val_accuracy_points"] > 2 and d["verdict"] == "underfitting"
    h = history([0.2, 0.15, 0.14, 0.139], [0.16, 0.15, 0.146, 0.145])
    h["val_noisy_loss"] = [[0.05] * 4] * 3
    assert curves.diagnose(h)["verdict"] == "underfitting"
    h["val_noisy_loss"] = [[0.2] * 4] * 3
    assert curves.diagnose(h)["verdict"] == "good fit"


def test_low_training_accuracy_is_underfitting():
    d = curves.diagnose(
        history(
            [1.2, 0.9, 0.7, 0.62],
            [1.1, 0.85, 0.7, 0.63],
            [0.6, 0.75, 0.82, 0.86],
            [0.62, 0.76, 0.83, 0.86],
        )
    )
    assert d["verdict"] == "underfitting" and d["final_train_accuracy"] == pytest.approx(0.86)


def test_a_training_loss_still_falling_is_still_improving_unless_the_rate_was_decayed():
    falling = history(
        [0.4, 0.25, 0.18, 0.15],
        [0.3, 0.2, 0.16, 0.14],
        [0.9, 0.95, 0.96, 0.965],
        [0.92, 0.95, 0.96, 0.962],
    )
    d = curves.diagnose(falling)
    assert d["verdict"] == "still improving" and d["train_loss_last_epoch_drop"] == pytest.approx(
        1 / 6
    )
    assert curves.diagnose(falling, decayed=True)["verdict"] == "good fit"


def test_a_flat_converged_run_is_a_good_fit():
    d = curves.diagnose(
        history(
            [0.3, 0.12, 0.1, 0.099],
            [0.2, 0.13, 0.11, 0.108],
            [0.9, 0.965, 0.97, 0.971],
            [0.94, 0.962, 0.966, 0.967],
        )
    )
    assert d["verdict"] == "good fit"
    assert d["final_val_minus_train_loss"] == pytest.approx(0.009)


def test_noise_is_not_a_turn():
    """The 10-epoch CNN: the last epoch's rise (0.009) is below twice the curve's own epoch-to-
    epoch noise, so the validation trend has not turned (the former rule said overfitting)."""
    d = curves.diagnose(CNN_10)
    assert d["val_loss_rise_from_min"] == pytest.approx(0.0088, abs=1e-6)
    assert d["val_loss_turn_threshold"] > d["val_loss_rise_from_min"]
    assert d["verdict"] == "still improving"


def test_the_tuned_row_is_a_good_fit():
    """A falling train loss at a rate decayed to 0 is the annealing, not underfitting; the gap
    (1.2 points, 0.059 nats) is small."""
    d = curves.diagnose(TUNED, decayed=True)
    assert d["verdict"] == "good fit"
    assert d["train_minus_val_accuracy_points"] == pytest.approx(1.24, abs=1e-6)
    assert d["learning_rate_decayed"] is True


def test_diverged_and_short_curves():
    assert (
        curves.diagnose(history([0.5, float("nan")], [0.4, float("nan")]))["verdict"] == "diverged"
    )
    one = curves.diagnose(history([0.5], [0.4], [0.9], [0.92]))  # one epoch: no trend, no noise
    assert math.isnan(one["train_loss_last_epoch_drop"]) and one["verdict"] == "underfitting"
    # One epoch of a model that fits its data: nothing says it has converged.
    assert curves.diagnose(history([0.3], [0.2], [0.97], [0.96]))["verdict"] == "still improving"
    autoencoder = curves.diagnose(
        history([0.05, 0.03, 0.025, 0.0245], [0.04, 0.028, 0.026, 0.0258])
    )
    assert autoencoder["verdict"] == "good fit" and autoencoder["final_train_accuracy"] is None
    assert (
        "overfitting:" in autoencoder["criteria"]
        and "underfitting (checked first):" in autoencoder["criteria"]
    )


def test_roughness_is_the_spread_of_the_epoch_to_epoch_changes():
    r = curves.roughness([[1.0, 2.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert r["per_seed"] == pytest.approx([np.std([1.0, -1.0, 1.0]), 0.0])
    assert math.isnan(curves.roughness([[1.0, 2.0]])["mean"])  # two epochs: one change, undefined


def test_noise_ignores_the_trend_and_measures_the_jitter():
    trend = np.linspace(1.0, 0.2, 200) ** 2
    assert curves.noise(trend) < 1e-4  # a smooth curve has (almost) no noise
    jitter = np.random.default_rng(0).normal(0, 0.01, 200)
    assert curves.noise(trend + jitter) == pytest.approx(0.01, rel=0.15)
    assert math.isnan(curves.noise([0.3, 0.2, 0.1]))
