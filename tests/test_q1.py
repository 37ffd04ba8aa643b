"""Question 1's experiment modules, run for real on the real data in `--quick` mode.

One results root is shared by the three sweeps, as a user's `results/` is: the augmentation
sweep runs through its real command line (a subprocess), the epochs and optimizer sweeps
in-process after it, so every configuration two sweeps share is trained once and copied. The
augmentation command also writes the tuned row (beyond the original, `q1_tuned/`), which
continues its `expand` row. Metrics are checked against predictions recomputed with sklearn from
the raw test labels (tests/_results_checks.py).
"""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import numpy as np
import pytest
from _results_checks import check_png, check_run_folder, check_sweep_folder, read_json

from experiments import cli, q1
from experiments import sweep as sweep_lib
from experiments.context import make_context
from fmnist_jax.fit import FitResult
from fmnist_jax.train import OptimizerConfig, TrainConfig
from tests._cli import run, usage_error

N_SEEDS = 2
QUICK = ["--quick", "--seeds", str(N_SEEDS)]
NAMES = {
    "q1_augmentation": ["none", "expand", "online", "none_3x_epochs"],
    "q1_epochs": ["epochs_1"],
    "q1_optimizers": ["sgd", "sgd_momentum", "adam"],
}


def run_in_process(experiment: str, argv: list[str]) -> str:
    """q1.main in this process (not --quiet, so the log is visible); returns stdout + stderr."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        q1.main(experiment, argv)
    return buf.getvalue()


@pytest.fixture(scope="module")
def out_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("q1_results")


@pytest.fixture(scope="module")
def augmentation(out_root) -> Path:
    """The real command line, as a user types it."""
    proc = run("experiments.q1_augmentation", *QUICK, "--quiet", "--out", out_root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out_root / "q1_augmentation"


@pytest.fixture(scope="module")
def epochs(out_root, augmentation) -> tuple[Path, str]:
    log = run_in_process("q1_epochs", [*QUICK, "--out", str(out_root)])
    return out_root / "q1_epochs", log


@pytest.fixture(scope="module")
def optimizers(out_root, augmentation) -> tuple[Path, str]:
    log = run_in_process("q1_optimizers", [*QUICK, "--out", str(out_root)])
    return out_root / "q1_optimizers", log


@pytest.fixture(scope="module")
def maxpool(out_root, epochs) -> Path:
    """The epochs sweep again with max pooling (one seed: only the layout is under test)."""
    run_in_process(
        "q1_epochs", ["--quick", "--seeds", "1", "--quiet", "--pool", "max", "--out", str(out_root)]
    )
    return out_root


def parse(argv=()):
    return cli.parse(cli.parser("test", epochs=q1.EPOCHS, lr=q1.LR), list(argv))


# ----------------------------------------------------------------------------------------------
# Every output file, metrics that agree with the predictions


def check_sweep(sweep_dir: Path, experiment: str) -> None:
    for name in NAMES[experiment]:
        # --quick: 1 epoch; the compute-matched control trains 3 (expand's steps)
        config = check_run_folder(sweep_dir / name, N_SEEDS, epochs=3 if "3x" in name else 1)
        tc = config["train_config"]
        assert tc["model"] == "cnn" and tc["pool"] == "avg" and tc["batch_size"] == 100
        assert config["data"]["quick"] is True and config["data"]["counts"]["test"] == 5000
    check_sweep_folder(sweep_dir, NAMES[experiment])


def test_augmentation_sweep_outputs(augmentation):
    check_sweep(augmentation, "q1_augmentation")
    augment = {
        n: read_json(augmentation / n / "config.json")["train_config"]["augment"]
        for n in NAMES["q1_augmentation"]
    }
    assert augment == {
        "none": "none",
        "expand": "expand",
        "online": "online",
        "none_3x_epochs": "none",
    }
    # The compute-matched control trains the optimizer steps of `expand`, and is never chosen.
    steps = {
        n: read_json(augmentation / n / "metrics.json")["optimizer_steps"]
        for n in NAMES["q1_augmentation"]
    }
    assert steps["none_3x_epochs"] == steps["expand"] == [3 * s for s in steps["none"]]
    assert read_json(augmentation / "choice.json")["choice"] != "none_3x_epochs"
    assert "**Compute-matched control.**" in (augmentation / "summary.md").read_text()


def test_epochs_sweep_outputs(epochs):
    sweep_dir, _ = epochs
    check_sweep(sweep_dir, "q1_epochs")
    # The noise of the validation curves is measured and tabulated, not eyeballed.
    m = read_json(sweep_dir / "epochs_1" / "metrics.json")
    assert "val_loss_roughness" in m and "verdict" in m["fit_diagnosis"]
    assert "val-loss roughness" in (sweep_dir / "summary.md").read_text()
    # Identical to the augmentation sweep's `online` row (5 epochs here 1): copied, not trained.
    assert Path(read_json(sweep_dir / "epochs_1" / "config.json")["reused_from"]).name == "online"


def test_optimizer_sweep_outputs(optimizers):
    sweep_dir, _ = optimizers
    check_sweep(sweep_dir, "q1_optimizers")
    opt = {
        n: read_json(sweep_dir / n / "config.json")["train_config"]["optimizer"]
        for n in NAMES["q1_optimizers"]
    }
    assert (opt["sgd"]["name"], opt["sgd"]["learning_rate"], opt["sgd"]["momentum"]) == (
        "sgd",
        1e-3,
        0.0,
    )
    assert (opt["sgd_momentum"]["name"], opt["sgd_momentum"]["momentum"]) == ("sgd", 0.9)
    assert (opt["adam"]["name"], opt["adam"]["learning_rate"]) == ("adam", 1e-3)


# ----------------------------------------------------------------------------------------------
# The tuned row: beyond the original, beside the sweeps, never a sweep's answer


def test_the_tuned_row_continues_the_expand_row_beside_the_sweeps(augmentation, epochs, optimizers):
    tuned_dir = augmentation.parent / "q1_tuned"
    config = check_run_folder(tuned_dir / "tuned", N_SEEDS, epochs=2)  # --quick: 1 + 1 epochs
    # Its own stage trains the originals; the run it continues is the expand row's.
    assert config["train_config"]["augment"] == "none"
    assert (
        config["start"]["train_config"]
        == read_json(augmentation / "expand" / "config.json")["train_config"]
    )
    tuned_history = read_json(tuned_dir / "tuned" / "history.json")
    for key, rows in read_json(augmentation / "expand" / "history.json").items():
        if key != "epoch":
            assert rows == [row[:1] for row in tuned_history[key]], key
    # No choice is made on it, and it takes part in no sweep's choice.
    choice = read_json(tuned_dir / "choice.json")
    assert "choice" not in choice and "selected on the validation split" in choice["note"]
    summary = (tuned_dir / "summary.md").read_text()
    assert "17 candidates" in summary
    assert "Δ val" not in summary and "**chosen**" not in summary  # nothing to compare it with
    for sweep_dir in (augmentation, epochs[0], optimizers[0]):
        assert not (sweep_dir / "tuned").exists()
        assert read_json(sweep_dir / "choice.json")["choice"] in NAMES[sweep_dir.name]
    _, log = optimizers
    assert "sgd: training" in log and "sgd_momentum: training" in log
    assert "adam: identical to" in log  # the online row's configuration


def test_each_choice_is_tested_on_the_validation_images(augmentation):
    """choice.json's comparison with the runner-up is made on the saved validation predictions
    (its difference recomputed here), covers seeds and images, and its verdict follows its
    interval; summary.md words the verdict by it."""
    choice = read_json(augmentation / "choice.json")
    c = choice["comparison"]

    def correct(name):
        with np.load(augmentation / name / "labels.npz") as labels:
            return np.load(augmentation / name / "val_predictions.npy") == labels["val"][None]

    best, second = correct(choice["choice"]), correct(choice["runner_up"])
    assert best.shape == (N_SEEDS, 300)  # --quick: 300 validation images
    # A difference of two ratios of integer counts over 2 x 300 images: float64 rounding only.
    assert c["difference"] == pytest.approx(best.mean() - second.mean(), abs=1e-12)
    assert c["covers"] == "seeds and images" and c["n_seeds"] == N_SEEDS
    low, high = c["ci95"]
    assert low <= c["difference"] <= high
    word = "better" if low > 0 else "worse" if high < 0 else "not distinguishable"
    assert c["verdict"] == word
    summary = (augmentation / "summary.md").read_text()
    assert f"on the validation images: {c['verdict_text']}," in summary


def test_full_size_specs():
    """The real (not --quick) configurations: the report's fixed values, and the tuned row."""
    args = parse()
    aug = {s.name: s for s in q1.augmentation_specs(args)}
    eps = {s.name: s for s in q1.epochs_specs(args)}
    opts = {s.name: s for s in q1.optimizer_specs(args)}
    for spec in (aug["online"], opts["adam"], eps["epochs_5"]):
        cfg = spec.cfg
        assert (cfg.model, cfg.pool, cfg.batch_size, cfg.epochs, cfg.augment) == (
            "cnn",
            "avg",
            100,
            5,
            "online",
        )
        assert (cfg.optimizer.name, cfg.optimizer.learning_rate, cfg.optimizer.schedule) == (
            "adam",
            1e-3,
            "constant",
        )
        assert (cfg.aug.max_degrees, cfg.aug.noise_std) == (10.0, 0.1)
    assert aug["online"].cfg == opts["adam"].cfg == eps["epochs_5"].cfg  # one run, reused
    assert [s.cfg.augment for s in aug.values()] == ["none", "expand", "online", "none"]
    assert aug["none_3x_epochs"].cfg == aug["none"].cfg.replace(epochs=15)  # expand's steps
    assert aug["none_3x_epochs"].role == "control"
    assert [s.cfg.epochs for s in eps.values()] == [3, 5, 8, 10]
    assert (
        opts["sgd"].cfg.optimizer.learning_rate == 1e-3
        and opts["sgd_momentum"].cfg.optimizer.momentum == 0.9
    )
    assert "tuned" not in {**aug, **eps, **opts}  # each sweep varies only its own question
    tuned_spec = q1.tuned_spec(args)
    tuned = tuned_spec.cfg
    assert (tuned.pool, tuned.batch_size, tuned.epochs, tuned.augment) == ("avg", 100, 7, "none")
    assert (tuned.optimizer.schedule, tuned.optimizer.decay_epochs) == ("wsd", 2)
    # Two stages: the `expand` row's run, continued for 2 epochs on the originals.
    assert tuned_spec.start == aug["expand"]
    assert q1.COMMANDS["q1_augmentation"] == ("q1_augmentation", "q1_tuned")


# ----------------------------------------------------------------------------------------------
# Epochs: each row continues the one before


def test_epochs_sweep_continues_each_run_from_the_shorter_one(tmp_path):
    """3, 5, 8 and 10 epochs: each continues the previous one (constant learning rate), and
    equals the same configuration trained alone: fingerprint, history, predictions, metrics."""
    limit = ["--limit", "200", "--seeds", "2"]
    log = run_in_process("q1_epochs", [*limit, "--out", str(tmp_path / "out")])
    sweep = tmp_path / "out" / "q1_epochs"
    for before, e in ((3, 5), (5, 8), (8, 10)):
        assert f"epochs_{e}: continues the {before}-epoch run" in log
    assert "epochs_3: continues" not in log
    opts = parse([*limit, "--quiet", "--out", str(tmp_path / "alone")])
    spec = next(s for s in q1.epochs_specs(opts) if s.name == "epochs_5")
    sweep_lib.run_sweep(make_context(opts), sweep_lib.Sweep("alone", "alone", (spec,)))
    alone, chained = tmp_path / "alone" / "alone" / "epochs_5", sweep / "epochs_5"
    assert (
        read_json(alone / "config.json")["fingerprint"]
        == read_json(chained / "config.json")["fingerprint"]
    )
    assert read_json(alone / "history.json") == read_json(chained / "history.json")
    assert np.array_equal(
        np.load(alone / "test_predictions.npy"), np.load(chained / "test_predictions.npy")
    )
    got, want = read_json(chained / "metrics.json"), read_json(alone / "metrics.json")
    # Its time is the 3-epoch run's plus its own share (no wall-clock comparison: too noisy here).
    chained_time, alone_time = got.pop("timing"), want.pop("timing")
    shorter = read_json(sweep / "epochs_3" / "metrics.json")["timing"]["wall_s"]
    assert chained_time["wall_s"] == pytest.approx(shorter + chained_time["own_wall_s"])
    assert alone_time["own_wall_s"] == alone_time["wall_s"]
    assert got == want

    again = run_in_process("q1_epochs", [*limit, "--out", str(tmp_path / "out")])
    assert "training" not in again and again.count("complete, skipped") == 4


def test_which_runs_continue_which():
    """Only a longer run of the same configuration at a constant rate continues a finished one."""

    def done(cfg, epochs_run=None):
        return FitResult(
            cfg=cfg,
            seeds=[0],
            states=None,
            history={},
            diverged=[False],
            final={},
            epochs_run=cfg.epochs if epochs_run is None else epochs_run,
        )

    three = TrainConfig(epochs=3)
    assert sweep_lib._continues(done(three), three.replace(epochs=5))
    assert not sweep_lib._continues(done(three), three)  # the same run: returned, not continued
    assert not sweep_lib._continues(done(three.replace(epochs=5)), three)
    assert not sweep_lib._continues(
        done(three, epochs_run=2), three.replace(epochs=5)
    )  # stopped early
    assert not sweep_lib._continues(done(three), three.replace(epochs=5, augment="none"))
    wsd = OptimizerConfig(schedule="wsd", decay_epochs=1)
    assert not sweep_lib._continues(done(three), three.replace(epochs=5, optimizer=wsd))


# ----------------------------------------------------------------------------------------------
# --pool max


def test_maxpool_writes_separate_folders(maxpool, epochs):
    avg_dir, _ = epochs
    max_dir = maxpool / "q1_epochs_maxpool"
    config = check_run_folder(max_dir / "epochs_1_maxpool", 1, epochs=1)
    assert config["train_config"]["pool"] == "max"
    assert config["label"].endswith("[max pool]")
    check_sweep_folder(max_dir, ["epochs_1_maxpool"])
    # The average-pooling sweep is untouched: its folders, its summary and its choice.
    assert sorted(p.name for p in avg_dir.iterdir() if p.is_dir()) == ["epochs_1"]
    check_sweep_folder(avg_dir, NAMES["q1_epochs"])
    for name in NAMES["q1_epochs"]:
        assert read_json(avg_dir / name / "config.json")["train_config"]["pool"] == "avg"


# ----------------------------------------------------------------------------------------------
# Bad flags: exit 2, the flag named, nothing written


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--epochs", "-1"),
        ("--seeds", "0"),
        ("--lr", "0"),
        ("--pool", "mean"),
        ("--batch-size", "0"),
        ("--lr", "-1e-3"),
        ("--epochs", "two"),
    ],
)
def test_bad_flags_exit_2_before_any_work(tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        q1.main("q1_optimizers", ["--quick", "--out", str(out), f"{flag}={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err, err
    assert not out.exists()


def test_bad_flag_through_the_command_line(tmp_path):
    out = tmp_path / "out"
    proc = run("experiments.q1_optimizers", "--quick", "--epochs", "-1", "--out", out)
    assert proc.returncode == 2
    assert "--epochs must be >= 1, got -1" in proc.stderr
    assert not out.exists()


def test_the_epochs_sweep_has_no_epochs_flag(tmp_path, capsys):
    """The epochs sweep sets its rows' epochs: it has no --epochs to ignore silently."""
    out = tmp_path / "out"
    main = functools.partial(q1.main, "q1_epochs")
    err = usage_error(main, ["--quick", "--epochs", "2", "--out", out], capsys)
    assert "unrecognized arguments: --epochs 2" in err
    assert not out.exists()


def test_batch_larger_than_the_training_split_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        q1.main(
            "q1_epochs",
            ["--quick", "--quiet", "--batch-size", str(cli.QUICK_TRAIN + 1), "--out", str(out)],
        )
    assert exc.value.code == 2
    assert "--batch-size" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_png_check_rejects_non_png(tmp_path):
    """The figure check itself can fail (guards against a vacuous test)."""
    bogus = tmp_path / "x.png"
    bogus.write_bytes(b"not a png" * 1000)
    with pytest.raises(AssertionError):
        check_png(bogus)
