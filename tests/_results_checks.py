"""Checks of an experiment's results folder (docs/design.md#results-layout) shared by test_q1
and test_q2.

The metrics are recomputed here from `test_predictions.npy` and the real test labels, read
independently of `fmnist_jax.data` (gzip + numpy), with scikit-learn.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

LABELS_GZ = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
CLASSES = (1, 3, 5, 7, 9)
CLASS_NAMES = ("Trouser", "Dress", "Sandal", "Sneaker", "Ankle boot")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_FILES = (
    "config.json",
    "metrics.json",
    "history.json",
    "test_predictions.npy",
    "learning_curves.png",
    "confusion_matrix.png",
)
SWEEP_FILES = ("summary.md", "choice.json", "sweep_val_accuracy.png")


@functools.lru_cache(maxsize=1)
def real_test_labels() -> np.ndarray:
    """The 5,000 test-subset labels (0..4) in file order, straight from the IDX file."""
    raw = gzip.decompress(LABELS_GZ.read_bytes())
    assert int.from_bytes(raw[:4], "big") == 2049 and int.from_bytes(raw[4:8], "big") == 10_000
    labels = np.frombuffer(raw, np.uint8, offset=8)
    keep = np.isin(labels, CLASSES)
    new = np.searchsorted(np.asarray(CLASSES), labels[keep])
    assert new.shape == (5000,) and np.bincount(new).tolist() == [1000] * 5
    return new


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def check_png(path: Path, min_bytes: int = 5_000) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"


def _close(got, want, what):
    # Both sides are float64 ratios of the same integer counts (JSON keeps a float64 exactly):
    # 1e-9 is far below one image (1 / 5,000) and far above the last bits of a division.
    np.testing.assert_allclose(
        np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=0, atol=1e-9, err_msg=what
    )


def check_metrics_against_predictions(run_dir: Path, n_seeds: int) -> np.ndarray:
    """metrics.json agrees with test_predictions.npy against the real labels; returns the
    predictions."""
    run_dir = Path(run_dir)
    preds = np.load(run_dir / "test_predictions.npy")
    assert np.issubdtype(preds.dtype, np.integer), preds.dtype
    assert preds.shape == (n_seeds, 5000), preds.shape
    assert preds.min() >= 0 and preds.max() <= 4
    y = real_test_labels()
    m = read_json(run_dir / "metrics.json")
    report = m["classification_report"]
    per_seed = [
        precision_recall_fscore_support(y, p, labels=range(5), zero_division=0) for p in preds
    ]
    averaged = {
        avg: [
            precision_recall_fscore_support(
                y, p, labels=range(5), average=avg.split()[0], zero_division=0
            )[:3]
            for p in preds
        ]
        for avg in ("macro avg", "weighted avg")
    }

    assert len(m["test_accuracy"]["per_seed"]) == n_seeds
    _close(
        m["test_accuracy"]["per_seed"],
        [accuracy_score(y, p) for p in preds],
        f"{run_dir}: test_accuracy",
    )
    _close(m["test_accuracy"]["mean"], np.mean([accuracy_score(y, p) for p in preds]), "test mean")
    accuracies = [accuracy_score(y, p) for p in preds]
    _close(
        m["test_accuracy"]["std"], np.std(accuracies, ddof=1) if n_seeds > 1 else np.nan, "test std"
    )
    assert len(m["val_accuracy"]["per_seed"]) == n_seeds
    assert all(0 <= v <= 1 for v in m["val_accuracy"]["per_seed"])
    assert m["diverged"] == [False] * n_seeds
    assert sorted(m["per_class_test_accuracy"]) == sorted(CLASS_NAMES)
    for c, name in enumerate(CLASS_NAMES):
        want_acc = [float(np.mean(p[y == c] == c)) for p in preds]
        _close(
            m["per_class_test_accuracy"][name]["per_seed"], want_acc, f"{run_dir}: {name} accuracy"
        )
        for k, key in enumerate(("precision", "recall", "f1-score", "support")):
            _close(
                report["per_class"][name][key]["per_seed"],
                [s[k][c] for s in per_seed],
                f"{run_dir}: {name} {key}",
            )
    for avg, values in averaged.items():
        for k, key in enumerate(("precision", "recall", "f1-score")):
            _close(report[avg][key]["per_seed"], [v[k] for v in values], f"{run_dir}: {avg} {key}")
        assert report[avg]["support"]["per_seed"] == [5000] * n_seeds
    want_cm = sum(confusion_matrix(y, p, labels=range(5)) for p in preds)
    assert np.array_equal(np.asarray(report["confusion_matrix_sum"]), want_cm)
    return preds


def check_history(run_dir: Path, n_seeds: int, epochs: int) -> dict:
    h = read_json(Path(run_dir) / "history.json")
    assert h["epoch"] == list(range(1, epochs + 1))
    for split in ("train", "val", "test"):
        for metric in ("loss", "accuracy"):
            curve = h[f"{split}_{metric}"]
            assert len(curve) == n_seeds and all(len(c) == epochs for c in curve), (
                f"{split}_{metric}"
            )
            assert np.all(np.isfinite(curve))
    # The last epoch's test accuracy is the reported one (float32 on the device: a fraction in
    # [0, 1] rounds by < 6e-8, so 1e-6; one image is 2e-4).
    m = read_json(Path(run_dir) / "metrics.json")
    np.testing.assert_allclose(
        [c[-1] for c in h["test_accuracy"]], m["test_accuracy"]["per_seed"], atol=1e-6
    )
    return h


def check_run_folder(run_dir: Path, n_seeds: int, epochs: int) -> dict:
    """Every file of a configuration's folder, and metrics that agree with its predictions."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"missing {run_dir / name}"
    for png in run_dir.glob("*.png"):
        check_png(png)
    config = read_json(run_dir / "config.json")
    assert config["seeds"] == list(range(n_seeds))
    assert config["train_config"]["epochs"] == epochs
    assert read_json(run_dir / "metrics.json")["complete"] is True
    check_metrics_against_predictions(run_dir, n_seeds)
    check_history(run_dir, n_seeds, epochs)
    return config


def fmt(ms, scale=100.0, digits=2) -> str:
    if ms["std"] == "nan":  # one seed: the mean alone
        return f"{ms['mean'] * scale:.{digits}f}"
    return f"{ms['mean'] * scale:.{digits}f} ± {ms['std'] * scale:.{digits}f}"


def first_table(text: str) -> list[list[str]]:
    """The cells of the body rows of the first Markdown table in `text`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def check_sweep_folder(sweep_dir: Path, names) -> dict:
    """summary.md has one row per configuration, linked to its folder, whose numbers are its
    metrics.json's; choice.json lists the rows and names the one with the best mean validation
    accuracy."""
    sweep_dir = Path(sweep_dir)
    for name in SWEEP_FILES:
        assert (sweep_dir / name).is_file(), f"missing {sweep_dir / name}"
    check_png(sweep_dir / "sweep_val_accuracy.png")
    table_rows = first_table((sweep_dir / "summary.md").read_text())
    assert len(table_rows) == len(names), table_rows
    vals = {}
    for name, cells in zip(names, table_rows, strict=False):
        run_dir = sweep_dir / name
        m = read_json(run_dir / "metrics.json")
        label = read_json(run_dir / "config.json")["label"]
        escaped = label.replace("[", "\\[").replace("]", "\\]")  # inside a Markdown link
        assert cells[0] == f"[{escaped}]({name}/metrics.json)", (cells[0], label)
        assert cells[1] == fmt(m["test_accuracy"]) and cells[2] == fmt(m["val_accuracy"]), cells
        vals[name] = m["val_accuracy"]["mean"]
    choice = read_json(sweep_dir / "choice.json")
    assert choice["rows"] == list(names)
    if "note" in choice:  # rows that answer no choice: the note says why, none is chosen
        assert "choice" not in choice and choice["note"] in (sweep_dir / "summary.md").read_text()
        return choice
    assert choice["choice"] == max(vals, key=vals.get)
    assert re.search(r"\*\*Choice on validation: ", (sweep_dir / "summary.md").read_text())
    return choice
