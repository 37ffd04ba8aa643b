"""`python -m fmnist_jax.compare A B`: what it reports, what it leaves out, its exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fmnist_jax import compare
from tests import _cli as cli

METRICS = {
    "test_accuracy": {"mean": 0.97, "std": 0.001, "per_seed": [0.969, 0.971]},
    "diverged": [False, False],
    "fit_diagnosis": {"verdict": "good fit", "rise": "nan"},
    "classification_report_text": "  Trouser 0.99",
    "timing": {"wall_s": 12.5},
    "total_train_s": 30.0,
    "encoder_checkpoint": "/a/q2_pretrain/f00/encoder",
    "complete": True,
}


def tree(root: Path, metrics=None, predictions=None, extra=()) -> Path:
    """A results tree with one row (and the rows named in `extra`, copies of it)."""
    for name in ("q1_epochs/epochs_3", *extra):
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps(metrics or METRICS))
        np.save(
            root / name / "test_predictions.npy",
            np.asarray(predictions if predictions is not None else [[0, 1, 2], [4, 3, 2]]),
        )
    return root


def test_the_same_numbers_are_identical_whatever_the_timings_and_paths(tmp_path):
    other = {
        **METRICS,
        "timing": {"wall_s": 99.0},
        "total_train_s": 1.0,
        "encoder_checkpoint": "/b/q2_pretrain/0ff/encoder",
    }
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b", other)
    assert compare.compare(a, b) == []


def test_every_kind_of_difference_is_one_line(tmp_path):
    changed = json.loads(json.dumps(METRICS))
    changed["test_accuracy"]["per_seed"][1] = 0.972
    changed["fit_diagnosis"]["verdict"] = "overfitting"
    changed["fit_diagnosis"]["rise"] = 0.5  # NaN, written "nan", against a number
    del changed["diverged"]
    a = tree(tmp_path / "a", extra=["q1_epochs/epochs_5"])
    b = tree(
        tmp_path / "b", changed, predictions=[[0, 1, 2], [4, 3, 3]], extra=["q1_epochs/epochs_8"]
    )
    diffs = compare.compare(a, b)
    rel = "q1_epochs/epochs_3/metrics.json"
    assert diffs == [
        "only in A: q1_epochs/epochs_5/metrics.json",
        "only in A: q1_epochs/epochs_5/test_predictions.npy",
        "only in B: q1_epochs/epochs_8/metrics.json",
        "only in B: q1_epochs/epochs_8/test_predictions.npy",
        f"{rel}.diverged: only in A",
        f"{rel}.fit_diagnosis.rise: 'nan' != 0.5",
        f"{rel}.fit_diagnosis.verdict: 'good fit' != 'overfitting'",
        f"{rel}.test_accuracy.per_seed[1]: 0.971 != 0.972",
        "q1_epochs/epochs_3/test_predictions.npy: 1 of 6 predictions differ",
    ]
    # A tolerance accepts small metric differences, never different predictions; --ignore skips.
    assert (
        compare.compare(a, b, atol=0.01, ignore=("q1_epochs/epochs_[58]/*",))
        == diffs[4:7] + diffs[8:]
    )


def test_the_command_line_exits_0_1_and_2(tmp_path):
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    run = lambda *args: cli.run("fmnist_jax.compare", *args)  # noqa: E731
    same = run(a, b)
    assert same.returncode == 0 and "identical: 2 files compared" in same.stdout
    np.save(b / "q1_epochs/epochs_3/test_predictions.npy", np.zeros((2, 3), int))
    different = run(a, b)
    assert different.returncode == 1 and "predictions differ" in different.stdout
    missing = run(a, tmp_path / "nothing")
    assert (
        missing.returncode == 2
        and missing.stderr.startswith("error: ")
        and "Traceback" not in missing.stderr
    )
    (tmp_path / "empty").mkdir()
    empty = run(a, tmp_path / "empty")  # a mistyped path must not pass as "identical"
    assert empty.returncode == 2 and "holds no metrics.json" in empty.stderr
    (b / "q1_epochs/epochs_3/metrics.json").write_text('{"test_accuracy": ')  # truncated
    broken = run(a, b)
    assert (
        broken.returncode == 1 and "metrics.json: cannot be read (JSONDecodeError" in broken.stdout
    )
    assert "Traceback" not in broken.stderr


@pytest.mark.parametrize(
    "key", ["timing", "wall_s", "total_train_s", "encoder_checkpoint", "parallel", "member_map"]
)
def test_timings_and_paths_are_left_out(key):
    assert compare.is_left_out(key)
    assert not compare.is_left_out("test_accuracy") and not compare.is_left_out("n_seeds")


def test_predictions_of_another_dtype_differ(tmp_path):
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    np.save(
        b / "q1_epochs/epochs_3/test_predictions.npy",
        np.asarray([[0, 1, 2], [4, 3, 2]], np.float64),
    )
    assert compare.compare(a, b) == [
        "q1_epochs/epochs_3/test_predictions.npy: int64 (2, 3) != float64 (2, 3)"
    ]


def test_a_copied_tree_is_identical(tmp_path):
    a = tree(tmp_path / "a", extra=["q2_lr/lr_0.01"])
    shutil.copytree(a, tmp_path / "b")
    assert compare.compare(a, tmp_path / "b") == []
