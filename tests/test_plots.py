"""Figures: valid, non-trivial PNGs; robust to diverged seeds; atomic writes; clear errors."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from fmnist_jax import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]


def _curve(rng, start, delta, n_seeds=3, n_epochs=6):
    t = 1 - np.exp(-np.arange(n_epochs) / 2)
    return [list(start + delta * t + rng.normal(0, 0.02, n_epochs)) for _ in range(n_seeds)]


def _history(rng, n_seeds=3, n_epochs=6):
    h = {}
    for s in ("train", "val", "test"):
        h[f"{s}_loss"] = _curve(rng, 1.2, -0.8, n_seeds, n_epochs)
        h[f"{s}_accuracy"] = _curve(rng, 0.5, 0.4, n_seeds, n_epochs)
    return h


def _ae_history(rng):
    return {
        k: _curve(rng, 0.1, -0.05)
        for k in ("train_loss", "val_loss", "test_loss", "val_noisy_loss", "test_noisy_loss")
    }


def _cm(rng):
    return np.diag([900, 950, 800, 850, 780]) + rng.integers(0, 40, (5, 5))


def _images(rng, n=5):
    clean = rng.random((n, 28, 28))
    return np.clip(clean + rng.normal(0, 0.3, clean.shape), 0, 1), clean * 0.8, clean


def _bars():
    return {
        "CNN": {c: (0.9 + 0.01 * i, 0.01) for i, c in enumerate(CLASSES + ["overall"])},
        "Autoencoder": {c: (0.85 + 0.015 * i, 0.02) for i, c in enumerate(CLASSES + ["overall"])},
    }


def _call(name, path, rng):
    """Draw figure `name` to `path` with realistic inputs; return what the function returns."""
    if name == "learning_curves":
        return plots.learning_curves(_history(rng), path, title="CNN")
    if name == "overlay_curves":
        curves = {
            "adam": _history(rng),
            "sgd": _history(rng, n_epochs=3),
            "one seed": _history(rng, 1, 8),
        }
        return plots.overlay_curves(curves, path, title="optimisers")
    if name == "confusion_matrix":
        return plots.confusion_matrix(_cm(rng), CLASSES, path, title="confusion")
    if name == "denoising_rows":
        noisy, rec, clean = _images(rng)
        return plots.denoising_rows(noisy, rec, clean, path, title="denoising", labels=CLASSES)
    if name == "bar_comparison":
        return plots.bar_comparison(_bars(), path, title="per class", ylabel="test accuracy")
    raise AssertionError(name)


ALL = ["learning_curves", "overlay_curves", "confusion_matrix", "denoising_rows", "bar_comparison"]


def _assert_png(path: Path, min_bytes: int = 5_000) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes, f"{path.name} is only {len(data)} bytes"
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    h, w = img.shape[:2]
    assert 200 <= h <= 2000 and 200 <= w <= 2500, img.shape
    assert float(np.std(img[..., :3])) > 0.02, "image is (nearly) a single flat colour"
    return img


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("name", ALL)
def test_writes_valid_png(name, tmp_path, rng):
    target = tmp_path / "sub" / f"{name}.png"  # parent folder created on demand
    out = _call(name, target, rng)
    assert isinstance(out, Path) and out == target
    _assert_png(target)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp file left


def test_learning_curves_diverged_seed(tmp_path, rng):
    h = _history(rng)
    h["train_loss"][1][3:] = [float("nan")] * 3
    h["val_loss"][1][2] = float("inf")
    h["val_accuracy"][1] = ["nan"] * 6  # as io.write_json stores non-finite floats
    fig = plots.learning_curves(h, None, title="x")
    legends = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert "train (1 diverged)" in legends and "val (1 diverged)" in legends
    assert "test" in legends
    # the mean ignores the diverged seed instead of turning NaN
    mean_line = next(
        line for line in fig.axes[0].get_lines() if line.get_label() == "train (1 diverged)"
    )
    y = np.asarray(mean_line.get_ydata(), dtype=float)
    assert np.all(np.isfinite(y))
    expected = np.nanmean(np.array(h["train_loss"], dtype=float), axis=0)
    np.testing.assert_allclose(y, expected)
    _assert_png(plots.learning_curves(h, tmp_path / "lc.png", title="x"))


def test_learning_curves_all_nan_and_ragged(tmp_path, rng):
    h = _history(rng, n_seeds=2)
    h["test_loss"] = [[float("nan")] * 6, [float("nan")] * 6]
    h["train_accuracy"] = [[0.5, 0.6, 0.7], [0.5, 0.6, 0.7, 0.8, 0.85]]  # one seed stopped early
    fig = plots.learning_curves(h, None, title="x")
    legends = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "train" in legends  # a shorter seed is not "diverged"
    _assert_png(plots.learning_curves(h, tmp_path / "lc.png", title="x"))


def test_learning_curves_panels(rng):
    fig = plots.learning_curves(
        _ae_history(rng),
        None,
        title="AE",
        ylabels={"loss": "MSE"},
        sets=("train", "val", "test", "val_noisy", "test_noisy"),
    )
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    assert fig.axes[0].get_ylabel() == "MSE"
    assert len(fig.axes[0].get_legend().get_texts()) == 5
    assert "3 seeds" in fig.get_suptitle()

    full = plots.learning_curves(_history(rng, n_seeds=4), None, title="CNN")
    assert len(full.axes) == 2
    assert [ax.get_xlabel() for ax in full.axes] == ["epoch", "epoch"]
    assert "4 seeds" in full.get_suptitle()
    # epochs are 1-based
    assert full.axes[0].get_lines()[0].get_xdata()[0] == 1

    only_val = plots.learning_curves(
        _history(rng), None, title="x", sets=("val",), metrics=("accuracy",)
    )
    assert len(only_val.axes) == 1 and len(only_val.axes[0].get_legend().get_texts()) == 1

    with pytest.raises(ValueError, match="no curves"):
        plots.learning_curves({"foo": [[1.0]]}, None, title="x")


def test_overlay_curves_different_lengths_and_missing_metric(rng):
    curves = {
        "a": _history(rng, n_epochs=10),
        "b": _history(rng, n_epochs=4),
        "no metric": {"train_loss": [[1.0]]},
    }
    fig = plots.overlay_curves(curves, None, title="t", metric="val_accuracy")
    lines = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert [len(line.get_xdata()) for line in lines] == [10, 4]
    with pytest.raises(ValueError, match="val_f1"):
        plots.overlay_curves(curves, None, title="t", metric="val_f1")


def test_confusion_matrix_text_and_counts(tmp_path):
    cm = np.array([[8, 2], [0, 0]])
    fig = plots.confusion_matrix(cm, ["a", "b"], None, title="t")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[0].startswith("80.0%") and texts[1].startswith("20.0%")
    assert texts[2].startswith("0.0%")  # an empty row does not divide by zero
    im = fig.axes[0].images[0]
    assert im.get_clim() == (0.0, 1.0)
    np.testing.assert_allclose(np.asarray(im.get_array()), [[0.8, 0.2], [0.0, 0.0]])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    counts = plots.confusion_matrix(cm, ["a", "b"], None, title="t", normalise=False)
    assert [t.get_text() for t in counts.axes[0].texts] == ["8", "2", "0", "0"]
    _assert_png(
        plots.confusion_matrix(cm, ["a", "b"], tmp_path / "cm.png", title="t", normalise=False)
    )


def test_confusion_matrix_bad_input(tmp_path, rng):
    with pytest.raises(ValueError, match="square"):
        plots.confusion_matrix(np.ones((5, 4), int), CLASSES, tmp_path / "a.png", title="t")
    with pytest.raises(ValueError, match="square"):
        plots.confusion_matrix(np.ones(5, int), CLASSES, tmp_path / "a.png", title="t")
    with pytest.raises(ValueError, match="class names"):
        plots.confusion_matrix(_cm(rng), CLASSES[:4], tmp_path / "a.png", title="t")
    with pytest.raises(ValueError, match="non-negative"):
        plots.confusion_matrix(-np.eye(2), ["a", "b"], tmp_path / "a.png", title="t")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape", [(4, 28, 28), (4, 784), (4, 28, 28, 1)])
def test_denoising_rows_shapes(shape, rng):
    x = rng.random(shape)
    fig = plots.denoising_rows(x, x, x, None, title="t")
    assert len(fig.axes) == 12
    im = fig.axes[0].images[0]
    assert im.get_array().shape == (28, 28)
    assert im.get_clim() == (0.0, 1.0)
    assert fig.axes[0].get_xticks().size == 0 and fig.axes[0].get_yticks().size == 0
    assert [fig.axes[r * 4].get_ylabel() for r in range(3)] == [
        "noisy input",
        "reconstruction",
        "clean target",
    ]


def test_denoising_rows_bad_input(tmp_path, rng):
    noisy, rec, clean = _images(rng, n=5)
    with pytest.raises(ValueError, match="same number"):
        plots.denoising_rows(noisy, rec[:4], clean, tmp_path / "d.png", title="t")
    with pytest.raises(ValueError, match="labels"):
        plots.denoising_rows(noisy, rec, clean, tmp_path / "d.png", title="t", labels=CLASSES[:3])
    with pytest.raises(ValueError, match="expected images"):
        plots.denoising_rows(
            noisy.reshape(5, -1)[:, :100], rec, clean, tmp_path / "d.png", title="t"
        )
    assert list(tmp_path.iterdir()) == []


def test_bar_comparison_zoom_and_inputs(rng):
    fig = plots.bar_comparison(_bars(), None, title="t", ylabel="acc")
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert hi == pytest.approx(1.0)  # an axis limit set to 1.0; approx's default 1e-6 relative
    assert 0.7 < lo < 0.83  # zoomed: below min(mean - std) = 0.83, but not down to 0
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES + ["overall"]
    assert len(ax.patches) == 12
    # non-accuracy data (e.g. MSE) is not forced up to 1.0; dict form and bare numbers accepted
    mse = plots.bar_comparison(
        {"a": {"x": {"mean": 0.02, "std": 0.001}, "y": 0.03}, "b": {"x": (0.025, float("nan"))}},
        None,
        title="t",
        ylabel="MSE",
    )
    assert mse.axes[0].get_ylim()[1] < 0.1
    with pytest.raises(ValueError):
        plots.bar_comparison({}, None, title="t", ylabel="y")
    with pytest.raises(ValueError, match="mean, std"):
        plots.bar_comparison({"a": {"x": (1, 2, 3)}}, None, title="t", ylabel="y")


def _failing_savefig(monkeypatch):
    real = Figure.savefig

    def half_then_fail(self, fname, *args, **kwargs):
        buf = io.BytesIO()
        real(self, buf, *args, **kwargs)
        data = buf.getvalue()
        Path(fname).write_bytes(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)


@pytest.mark.parametrize("name", ["learning_curves", "confusion_matrix"])
def test_atomic_when_saving_fails(name, tmp_path, rng, monkeypatch):
    target = tmp_path / "fig.png"
    _failing_savefig(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        _call(name, target, rng)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_atomic_keeps_older_file(tmp_path, rng, monkeypatch):
    target = tmp_path / "fig.png"
    _call("bar_comparison", target, rng)
    old = target.read_bytes()
    _failing_savefig(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        _call("denoising_rows", target, rng)
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
    monkeypatch.undo()
    _call("denoising_rows", target, rng)  # a successful save replaces it
    assert target.read_bytes() != old
    _assert_png(target)


def test_no_pyplot_state(tmp_path, rng):
    import sys

    _call("learning_curves", tmp_path / "a.png", rng)
    if "matplotlib.pyplot" in sys.modules:  # someone else imported it: at least we opened nothing
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []
    assert math.isfinite(plots.DPI) and 100 <= plots.DPI <= 120
