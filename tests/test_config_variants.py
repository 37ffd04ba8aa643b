"""Any configuration from the command line (`experiments.run`, `--config PATH`) and any student's
variant (`--classes`, `--init`, `--pool`, the augmentation), through the real command lines on
the real data, in tiny runs (`--quick --limit 200 --seeds 1`)."""

from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import run as experiments_run
from experiments import study
from experiments.context import LOCK_FILE
from fmnist_jax import data
from fmnist_jax.train import TrainConfig, build_model
from tests._cli import assert_clean_failure, run, usage_error

TINY = ["--quick", "--limit", "200", "--seeds", "1", "--quiet"]
VARIANT = ["--classes", "0,2,4,6,8", "--init", "he_normal", "--pool", "max"]
VARIANT_NAMES = ["T-shirt/top", "Pullover", "Coat", "Shirt", "Bag"]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def snapshot(folder: Path) -> dict:
    """Every file's bytes, but the results folder's lock (held by each command that writes)."""
    files = sorted(Path(folder).rglob("*"))
    return {p: p.read_bytes() for p in files if p.is_file() and p.name != LOCK_FILE}


# ----------------------------------------------------------------------------------------------
# A variant's whole (quick) study


@pytest.fixture(scope="session")
def variant_study(tmp_path_factory) -> Path:
    """Built once per test session, also under pytest-xdist (the first worker builds it under a
    lock in the session's shared temporary folder; the others wait and reuse it)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "variant_study"
    with open(shared / "variant_study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "REPORT.md").is_file():
            proc = run("experiments.study", *TINY, *VARIANT, "--out", out)
            assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_a_variant_study_names_its_classes_and_settings(variant_study):
    report = (variant_study / "REPORT.md").read_text(encoding="utf-8")
    title = report.splitlines()[0]
    assert all(name in title for name in VARIANT_NAMES), title
    assert "--classes 0,2,4,6,8 --init he_normal --pool max" in title
    assert "(original labels 0, 2, 4, 6, 8): T-shirt/top, Pullover, Coat, Shirt, Bag." in report
    assert "| initialisation | he_normal | xavier_uniform |" in report
    assert "He/Kaiming-normal kernels" in report and "head to 5" in report
    # Per-class columns are the variant's classes, none of the original's.
    assert "| T-shirt/top % |" in report
    assert not any(f"{n} %" in report for n in ("Trouser", "Dress", "Sandal", "Sneaker"))
    # The original report's numbers are neither quoted nor compared.
    assert "## Differences from the original report" not in report
    assert "The original report concluded" not in report
    assert "none is quoted or compared here" in report
    for config in variant_study.glob("q1_*/*/config.json"):
        recorded = read_json(config)
        assert recorded["data"]["classes"] == [0, 2, 4, 6, 8], config
        assert recorded["train_config"]["init"] == "he_normal", config
        assert "num_classes" not in recorded["train_config"], config  # 5: the default count
        assert recorded["train_config"]["pool"] == "max", config
    metrics = read_json(variant_study / "q1_epochs_maxpool" / "epochs_1_maxpool" / "metrics.json")
    assert sorted(metrics["per_class_test_accuracy"]) == sorted(VARIANT_NAMES)


@pytest.mark.slow
def test_another_variant_is_refused_in_its_results_folder(variant_study):
    """Variants never share a results folder, even with --overwrite: refused before training."""
    before = snapshot(variant_study)
    proc = run("experiments.q1_epochs", *TINY, "--overwrite", "--out", variant_study)
    assert_clean_failure(proc, 2, "another variant", "classes", "--out")
    assert snapshot(variant_study) == before


@pytest.mark.slow
def test_a_saved_config_is_skipped_where_complete_and_reproduced_elsewhere(variant_study, tmp_path):
    """The variant's tuned row (which continues its expand row): rerun from its config.json into
    its own results folder it is skipped, into a new one it gives the same numbers."""
    row = variant_study / "q1_tuned_maxpool" / "tuned_maxpool"
    before = snapshot(variant_study)
    proc = run("experiments.run", "--config", row / "config.json", "--out", variant_study)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "complete, skipped" in proc.stdout
    assert snapshot(variant_study) == before

    other = tmp_path / "again"
    proc = run("experiments.run", "--config", row / "config.json", "--out", other, "--quiet")
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = other / "q1_tuned_maxpool" / "tuned_maxpool"
    assert (
        read_json(again / "config.json")["fingerprint"]
        == read_json(row / "config.json")["fingerprint"]
    )
    proc = run("fmnist_jax.compare", row, again)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------
# One configuration and --config


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    """An SGD-with-momentum CNN, every setting from flags."""
    out = tmp_path_factory.mktemp("run") / "results"
    flags = ["--optimizer", "sgd", "--momentum", "0.9", "--no-noise", "--flip"]
    proc = run("experiments.run", *TINY, *flags, "--out", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (config,) = (out / "runs").glob("*/config.json")
    return config


@pytest.mark.slow
def test_every_flag_lands_in_the_recorded_configuration(one_run):
    cfg = read_json(one_run)["train_config"]
    assert cfg["optimizer"] == {
        "name": "sgd",
        "learning_rate": 0.001,
        "momentum": 0.9,
        "schedule": "constant",
        "decay_epochs": 0.0,
    }
    assert cfg["aug"]["noise"] is False and cfg["aug"]["flip"] is True
    # The original variant's fields added for the variants are not recorded at their defaults.
    assert "init" not in cfg and "num_classes" not in cfg


@pytest.mark.slow
def test_a_flag_after_config_overrides_that_field_only(one_run):
    out = one_run.parent.parent.parent
    proc = run("experiments.run", "--config", one_run, "--lr", "0.01", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr[-4000:]
    original = read_json(one_run)
    (changed,) = [p for p in (out / "runs").glob("*/config.json") if p != one_run]
    recorded = read_json(changed)
    assert recorded["train_config"]["optimizer"]["learning_rate"] == 0.01
    assert recorded["fingerprint"] != original["fingerprint"]
    recorded["train_config"]["optimizer"]["learning_rate"] = 0.001
    assert recorded["train_config"] == original["train_config"]
    assert recorded["data"] == original["data"] and recorded["seeds"] == original["seeds"]
    assert read_json(one_run)["fingerprint"] == original["fingerprint"]  # left as it was


@pytest.mark.slow
def test_a_variant_run_is_refused_where_the_original_variant_is(one_run):
    out = one_run.parent.parent.parent
    proc = run("experiments.run", *TINY, "--classes", "0,1", "--out", out)
    assert_clean_failure(proc, 2, "another variant", "--out")


# Bad input: each case in this process, through the entry point's `main` (argparse and the
# entry point's checks alike: exit 2, one error line), and one case per kind through the real
# command line.


BAD_CONFIGS = {
    "missing": None,
    "not JSON": '{"fingerprint": ',
    "no train_config": '{"fingerprint": "x"}',
    "unknown field": '{"train_config": {"colour": "red"}}',
    "bad value": '{"train_config": {"pool": "min"}}',
}


def bad_config(kind: str, folder: Path) -> Path:
    path = folder / "config.json"
    if BAD_CONFIGS[kind] is not None:
        path.write_text(BAD_CONFIGS[kind])
    return path


@pytest.mark.parametrize("kind", BAD_CONFIGS)
def test_a_bad_config_file_is_one_error_line(kind, tmp_path, capsys):
    argv = ["--config", bad_config(kind, tmp_path), "--out", tmp_path / "out"]
    assert "config" in usage_error(experiments_run.main, argv, capsys)
    assert not (tmp_path / "out").exists()


def test_a_bad_config_file_through_the_command_line(tmp_path):
    path, out = bad_config("not JSON", tmp_path), tmp_path / "out"
    proc = run("experiments.run", "--config", path, "--out", out)
    assert_clean_failure(proc, 2, "--config", "cannot be read")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--lr", "-1"], "learning rate must be > 0"),
        (["--momentum", "1.5"], "momentum must be in [0, 1)"),
        (["--rotation-degrees", "200"], "max_degrees must be in [0, 180]"),
        (["--widths", "512,x"], "--widths must be an integer"),
        (["--optimizer", "rmsprop"], "invalid choice"),
        (["--init", "orthogonal"], "invalid choice"),
    ],
)
def test_a_bad_field_value_is_one_error_line_with_its_range(args, needle, tmp_path, capsys):
    assert needle in usage_error(experiments_run.main, [*args, "--out", tmp_path / "out"], capsys)
    assert not (tmp_path / "out").exists()


def test_a_bad_field_value_through_the_command_line(tmp_path):
    """A range the configuration checks (past argparse)."""
    proc = run("experiments.run", "--momentum", "1.5", "--out", tmp_path / "out")
    assert_clean_failure(proc, 2, "momentum must be in [0, 1)")
    assert not (tmp_path / "out").exists()


BAD_CLASSES = [
    ("1,3,3", "distinct, got 3 twice"),
    ("0,10", "in 0..9, got 10"),
    ("4", "2 to 10 classes, got 1"),
    ("0,1,2,3,4,5,6,7,8,9,0", "2 to 10 classes, got 11"),
    ("0,two", "got '0,two'"),
]


@pytest.mark.parametrize("classes, needle", BAD_CLASSES)
def test_bad_classes_are_one_error_line(classes, needle, tmp_path, capsys):
    err = usage_error(study.main, ["--classes", classes, "--out", tmp_path / "out"], capsys)
    assert "--classes" in err and needle in err
    assert not (tmp_path / "out").exists()


def test_bad_classes_through_the_command_line(tmp_path):
    """A flag argparse refuses (its type)."""
    proc = run("experiments.study", "--classes", "1,3,3", "--out", tmp_path / "out")
    assert_clean_failure(proc, 2, "--classes", "distinct, got 3 twice")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# The variant's parts


def test_the_task_of_other_classes_keeps_their_order_and_names():
    """Labels 0..k-1 in the given order, Fashion-MNIST's names, and a split fixed by the classes:
    loading twice gives the same split; the classes reversed relabel the same images."""
    a = data.load_task(classes=(8, 0), limit=300)
    b = data.load_task(classes=(8, 0), limit=300)
    assert a.class_names == ("Bag", "T-shirt/top")
    assert set(np.unique(a.train_labels)) == {0, 1}
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.val_labels, b.val_labels)
    c = data.load_task(classes=(0, 8))
    d = data.load_task(classes=(8, 0))
    np.testing.assert_array_equal(c.test_images, d.test_images)  # file order either way
    np.testing.assert_array_equal(c.test_labels, 1 - d.test_labels)
    assert len(c.test_labels) == 2000  # 1,000 test images per class


FAN_IN, FAN_OUT = 720, 265  # the CNN's fc1 (flatten 720 -> dense 265): 190,800 weights
# Expected weight variance of each scheme (the formulas' sources: Glorot & Bengio 2010,
# He et al. 2015, LeCun et al. 1998; PyTorch's kaiming_uniform_(a=sqrt(5)): bound 1/sqrt(fan_in))
EXPECTED_VAR = {
    "xavier_uniform": 2 / (FAN_IN + FAN_OUT),
    "xavier_normal": 2 / (FAN_IN + FAN_OUT),
    "he_uniform": 2 / FAN_IN,
    "he_normal": 2 / FAN_IN,
    "lecun_normal": 1 / FAN_IN,
    "pytorch": 1 / (3 * FAN_IN),
}


@pytest.mark.parametrize("init", EXPECTED_VAR)
def test_each_init_gives_its_weight_statistics(init):
    cfg = TrainConfig(model="cnn", init=init, num_classes=3)
    model = build_model(cfg)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    kernel = np.asarray(variables["params"]["fc1"]["kernel"], np.float64)
    bias = np.asarray(variables["params"]["fc1"]["bias"], np.float64)
    assert kernel.shape == (FAN_IN, FAN_OUT)
    std = math.sqrt(EXPECTED_VAR[init])
    # The sample std of n = 190,800 draws has a relative standard error of about
    # sqrt((kurtosis - 1) / (4 n)) <= 0.0015 (kurtosis <= 3 here): 1% is over 6 standard errors.
    assert abs(kernel.std() / std - 1) < 0.01, (kernel.std(), std)
    assert abs(kernel.mean()) < 5 * std / math.sqrt(kernel.size)  # 5 standard errors of a mean
    if init.endswith("uniform") or init == "pytorch":
        bound = math.sqrt(3) * std  # a uniform's half-width is sqrt(3) std
        # float32 rounding aside, nothing beyond the bound; with 190,800 draws the largest is
        # within 0.1% of it (P(all below 0.999 bound) = 0.999^190800, about 1e-83).
        assert np.abs(kernel).max() <= bound * (1 + 1e-6)
        assert np.abs(kernel).max() >= 0.999 * bound
    else:  # jax's normals are truncated at 2 standard deviations of the underlying normal,
        # rescaled by 1/0.8796 to keep the variance: nothing beyond 2 / 0.8796 std
        assert np.abs(kernel).max() <= 2 / 0.87962566103423978 * std * (1 + 1e-6)
    if init == "pytorch":  # bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's nn.Linear
        assert np.abs(bias).max() <= FAN_IN**-0.5 and np.abs(bias).std() > 0
    else:
        assert not bias.any()
    logits = model.apply(variables, jnp.zeros((4, 28, 28, 1)))
    assert logits.shape == (4, 3)  # num_classes outputs
