"""Question 1's experiment modules, run for real on the real data in `--quick` mode.

One results root is shared by the three sweeps, as a user's `results/` is: the augmentation
sweep runs through its real command line (a subprocess), the epochs and optimizer sweeps
in-process after it, so the tuned row (and every other configuration two sweeps share) is
trained once and reused. Metrics are checked against predictions recomputed with sklearn from
the raw test labels (tests/_results_checks.py).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _results_checks import check_png, check_run_folder, check_sweep_folder, read_json
from experiments import common, q1
from fmnist_jax import augment
from fmnist_jax import train as train_lib
from fmnist_jax.fit import prepare_train_set

REPO = Path(__file__).resolve().parent.parent
N_SEEDS = 2
QUICK = ["--quick", "--seeds", str(N_SEEDS)]
NAMES = {
    "q1_augmentation": ["none", "expand", "online", "tuned"],
    "q1_epochs": ["epochs_1", "tuned"],
    "q1_optimizers": ["sgd", "sgd_momentum", "adam", "tuned"],
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
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.q1_augmentation", *QUICK, "--quiet", "--out", str(out_root)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
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
    run_in_process("q1_epochs", ["--quick", "--seeds", "1", "--quiet", "--pool", "max", "--out", str(out_root)])
    return out_root


def parse(argv=()):
    return common.parser("test").parse_args(list(argv))


# ----------------------------------------------------------------------------------------------
# Every output file, metrics that agree with the predictions


def check_sweep(sweep_dir: Path, experiment: str) -> None:
    for name in NAMES[experiment]:
        # --quick: 1 epoch; the tuned row is its 1 stable epoch plus 1 of decay
        config = check_run_folder(sweep_dir / name, N_SEEDS, epochs=2 if name == "tuned" else 1)
        tc = config["train_config"]
        assert tc["model"] == "cnn" and tc["pool"] == "avg" and tc["batch_size"] == 100
        assert config["data"]["quick"] is True and config["data"]["counts"]["test"] == 5000
    check_sweep_folder(sweep_dir, NAMES[experiment])


def test_augmentation_sweep_outputs(augmentation):
    check_sweep(augmentation, "q1_augmentation")
    augment = {n: read_json(augmentation / n / "config.json")["train_config"]["augment"]
               for n in NAMES["q1_augmentation"]}
    assert augment == {"none": "none", "expand": "expand", "online": "online", "tuned": "expand"}
    assert read_json(augmentation / "tuned" / "config.json")["train_config"]["decay_augment"] == "none"


def test_epochs_sweep_outputs(epochs):
    sweep_dir, _ = epochs
    check_sweep(sweep_dir, "q1_epochs")
    # The noise of the validation curves is measured and tabulated, not eyeballed.
    m = read_json(sweep_dir / "epochs_1" / "metrics.json")
    assert "val_loss_roughness" in m and "verdict" in m["fit_diagnosis"]
    assert "val-loss roughness" in (sweep_dir / "summary.md").read_text()


def test_optimizer_sweep_outputs(optimizers):
    sweep_dir, _ = optimizers
    check_sweep(sweep_dir, "q1_optimizers")
    opt = {n: read_json(sweep_dir / n / "config.json")["train_config"]["optimizer"] for n in NAMES["q1_optimizers"]}
    assert (opt["sgd"]["name"], opt["sgd"]["learning_rate"], opt["sgd"]["momentum"]) == ("sgd", 1e-3, 0.0)
    assert (opt["sgd_momentum"]["name"], opt["sgd_momentum"]["momentum"]) == ("sgd", 0.9)
    assert (opt["adam"]["name"], opt["adam"]["learning_rate"]) == ("adam", 1e-3)


# ----------------------------------------------------------------------------------------------
# Reuse: the tuned row is one configuration, trained once


def test_tuned_row_is_shared_and_reused(augmentation, epochs, optimizers):
    trained = augmentation / "tuned"
    first = read_json(trained / "config.json")
    assert "reused_from" not in first
    # Its first epoch is the `expand` row: written from it, not trained again.
    expand = read_json(augmentation / "expand" / "config.json")
    assert Path(expand["snapshot_of"]).resolve() == trained.resolve() and expand["snapshot_epoch"] == 1
    tuned_history = read_json(trained / "history.json")
    expand_history = read_json(augmentation / "expand" / "history.json")
    for key, rows in expand_history.items():
        if key != "epoch":
            assert rows == [row[:1] for row in tuned_history[key]], key
    for sweep_dir, log in (epochs, optimizers):
        config = read_json(sweep_dir / "tuned" / "config.json")
        assert config["fingerprint"] == first["fingerprint"]
        assert config["train_config"] == first["train_config"]
        assert config["train_config"]["optimizer"]["schedule"] == "wsd"
        assert Path(config["reused_from"]).resolve() == trained.resolve()
        assert "tuned: identical to" in log and "reused" in log
        assert (sweep_dir / "tuned" / "metrics.json").read_bytes() == (trained / "metrics.json").read_bytes()
        assert np.array_equal(np.load(sweep_dir / "tuned" / "test_predictions.npy"),
                              np.load(trained / "test_predictions.npy"))
    # The optimizer sweep trained only what it does not share (SGD rows); Adam is the online row.
    _, log = optimizers
    assert "sgd: training" in log and "sgd_momentum: training" in log
    assert "adam: identical to" in log


def test_full_size_specs():
    """The real (not --quick) configurations: the report's fixed values, one tuned row in each."""
    args = parse()
    aug = {s.name: s for s in q1.augmentation_specs(args)}
    eps = {s.name: s for s in q1.epochs_specs(args)}
    opts = {s.name: s for s in q1.optimizer_specs(args)}
    for spec in (aug["online"], opts["adam"], eps["epochs_5"]):
        cfg = spec.cfg
        assert (cfg.model, cfg.pool, cfg.batch_size, cfg.epochs, cfg.augment) == ("cnn", "avg", 100, 5, "online")
        assert (cfg.optimizer.name, cfg.optimizer.learning_rate, cfg.optimizer.schedule) == ("adam", 1e-3, "constant")
        assert (cfg.aug.max_degrees, cfg.aug.noise_std) == (10.0, 0.1)
    assert aug["online"].cfg == opts["adam"].cfg == eps["epochs_5"].cfg  # one run, reused
    assert [s.cfg.augment for s in aug.values()] == ["none", "expand", "online", "expand"]
    assert [s.cfg.epochs for n, s in eps.items() if n != "tuned"] == [3, 5, 8, 10]
    assert opts["sgd"].cfg.optimizer.learning_rate == 1e-3 and opts["sgd_momentum"].cfg.optimizer.momentum == 0.9
    assert aug["tuned"].cfg == eps["tuned"].cfg == opts["tuned"].cfg
    tuned = aug["tuned"].cfg
    assert (tuned.pool, tuned.batch_size, tuned.epochs, tuned.augment) == ("avg", 100, 7, "expand")
    assert (tuned.optimizer.schedule, tuned.optimizer.decay_epochs, tuned.decay_augment) == ("wsd", 2, "none")
    # The tuned run starts as the `expand` row, which the study therefore writes from it.
    assert train_lib.starts_with(tuned, aug["expand"].cfg)
    assert not train_lib.starts_with(tuned, aug["none"].cfg)
    assert aug["online"].cfg.label_smoothing == 0.0  # the faithful rows keep plain cross-entropy


# ----------------------------------------------------------------------------------------------
# Epochs: the shorter runs are the first epochs of the longest


def test_epochs_sweep_trains_only_its_longest_run(tmp_path):
    """3, 5 and 8 epochs are written from the 10-epoch run (constant learning rate), and equal
    the same configuration trained on its own: same fingerprint, predictions and metrics."""
    limit = ["--limit", "200", "--seeds", "2"]
    log = run_in_process("q1_epochs", [*limit, "--out", str(tmp_path / "out")])
    sweep = tmp_path / "out" / "q1_epochs"
    assert "epochs_10: training" in log and "tuned: training" in log  # no augmentation: no prefix
    longest = read_json(sweep / "epochs_10" / "history.json")
    for e in (3, 5, 8):
        assert f"epochs_{e}: written from epoch {e} of" in log and f"epochs_{e}: training" not in log
        run_dir = sweep / f"epochs_{e}"
        config = read_json(run_dir / "config.json")
        assert Path(config["snapshot_of"]).resolve() == (sweep / "epochs_10").resolve()
        assert config["snapshot_epoch"] == e == config["train_config"]["epochs"]
        history = read_json(run_dir / "history.json")
        assert history["epoch"] == list(range(1, e + 1))
        for key, rows in longest.items():
            if key != "epoch":
                assert history[key] == [row[:e] for row in rows], key
        assert read_json(run_dir / "metrics.json")["epochs_run"] == e

    args = common.parser("test").parse_args([*limit, "--quiet", "--out", str(tmp_path / "alone")])
    ctx = common.make_context(args)
    spec = next(s for s in q1.epochs_specs(args) if s.name == "epochs_3")
    common.run_sweep(ctx, "alone", [spec], q1.execute, title="alone")  # no snapshots: trained
    alone = tmp_path / "alone" / "alone" / "epochs_3"
    assert "snapshot_of" not in read_json(alone / "config.json")
    assert read_json(alone / "config.json")["fingerprint"] == read_json(sweep / "epochs_3" / "config.json")["fingerprint"]
    assert np.array_equal(np.load(alone / "test_predictions.npy"),
                          np.load(sweep / "epochs_3" / "test_predictions.npy"))
    got, want = read_json(sweep / "epochs_3" / "metrics.json"), read_json(alone / "metrics.json")
    for m in (got, want):
        m.pop("timing")
    assert got == want

    again = run_in_process("q1_epochs", [*limit, "--out", str(tmp_path / "out")])
    assert "training" not in again and again.count("complete, skipped") == 5


# ----------------------------------------------------------------------------------------------
# The expand construction


def test_expand_triples_the_training_set_with_aligned_labels(task_data):
    spec = next(s for s in q1.augmentation_specs(parse()) if s.name == "expand")
    n = 300
    images, labels = task_data.train_images[:n], task_data.train_labels[:n]
    big_images, big_labels = (np.asarray(a) for a in prepare_train_set(spec.cfg, images, labels))
    assert big_images.shape == (3 * n, 28, 28, 1) and big_labels.shape == (3 * n,)
    assert np.array_equal(big_labels, np.tile(labels, 3))
    originals, rotated, noisy = big_images[:n], big_images[n:2 * n], big_images[2 * n:]
    assert np.array_equal(originals, images)
    assert not np.array_equal(rotated, images) and not np.array_equal(noisy, images)
    assert rotated.min() >= 0 and noisy.min() >= 0 and noisy.max() <= 1
    # Noise of the configured sigma (clipping at 0 and 1 only shrinks it).
    residual = (noisy - images).std()
    assert 0.05 < residual < 0.1 + 1e-3, residual

    # Aligned: copy i is closest to original i (so label i is its label).
    def nearest(copies):
        flat = images.reshape(n, -1)
        d = ((copies.reshape(n, 1, -1) - flat[None]) ** 2).sum(-1)
        return d.argmin(axis=1)

    assert np.array_equal(nearest(noisy), np.arange(n))
    # Rotated copy i is original i turned by some angle within ±max_degrees: the best angle on a
    # fine grid reproduces it almost exactly (bilinear interpolation of a slightly different
    # angle), far closer than any other image comes.
    grid = np.linspace(-spec.cfg.aug.max_degrees, spec.cfg.aug.max_degrees, 81)
    turned = jax.jit(jax.vmap(lambda a: augment.rotate(jnp.asarray(images), jnp.full((n,), a))))(grid)
    errors = ((np.asarray(turned) - rotated[None]) ** 2).mean(axis=(2, 3, 4))  # [angles, n]
    best = errors.min(axis=0)
    assert best.max() < 2e-3, best.max()
    assert np.mean(np.abs(grid[errors.argmin(axis=0)])) > 1.0  # really rotated, not copied
    flat = images.reshape(n, -1)
    others = ((rotated.reshape(n, 1, -1) - flat[None]) ** 2).mean(-1) + np.diag(np.full(n, np.inf))
    assert np.all(best < others.min(axis=1))


# ----------------------------------------------------------------------------------------------
# --pool max


def test_maxpool_writes_separate_folders(maxpool, epochs):
    avg_dir, _ = epochs
    max_dir = maxpool / "q1_epochs_maxpool"
    for name in ("epochs_1_maxpool", "tuned_maxpool"):
        config = check_run_folder(max_dir / name, 1, epochs=2 if name.startswith("tuned") else 1)
        assert config["train_config"]["pool"] == "max"
        assert config["label"].endswith("[max pool]")
    check_sweep_folder(max_dir, ["epochs_1_maxpool", "tuned_maxpool"])
    # The average-pooling sweep is untouched: its folders, its summary and its choice.
    assert sorted(p.name for p in avg_dir.iterdir() if p.is_dir()) == ["epochs_1", "tuned"]
    check_sweep_folder(avg_dir, NAMES["q1_epochs"])
    for name in NAMES["q1_epochs"]:
        assert read_json(avg_dir / name / "config.json")["train_config"]["pool"] == "avg"


# ----------------------------------------------------------------------------------------------
# Bad flags: exit 2, the flag named, nothing written


@pytest.mark.parametrize("flag,value", [
    ("--epochs", "-1"), ("--seeds", "0"), ("--lr", "0"), ("--pool", "mean"), ("--batch-size", "0"),
    ("--lr", "-1e-3"), ("--epochs", "two"),
])
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
    proc = subprocess.run([sys.executable, "-m", "experiments.q1_epochs", "--quick", "--epochs", "-1",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--epochs must be >= 1, got -1" in proc.stderr
    assert not out.exists()


def test_batch_larger_than_the_training_split_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        q1.main("q1_epochs", ["--quick", "--quiet", "--batch-size", str(common.QUICK_TRAIN + 1), "--out", str(out)])
    assert exc.value.code == 2
    assert "--batch-size" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_png_check_rejects_non_png(tmp_path):
    """The figure check itself can fail (guards against a vacuous test)."""
    bogus = tmp_path / "x.png"
    bogus.write_bytes(b"not a png" * 1000)
    with pytest.raises(AssertionError):
        check_png(bogus)


def test_roughness_cell_handles_undefined_roughness():
    """Fewer than 3 epochs: the roughness is NaN, stored in JSON as "nan"; the table shows '–'."""
    assert q1.roughness_cell({"val_loss_roughness": {"mean": "nan", "std": "nan", "per_seed": ["nan"]}}) == "–"
    assert q1.roughness_cell({}) == "–"
    assert q1.roughness_cell({"val_loss_roughness": {"mean": 0.01234, "std": 0.001}}) == "0.0123 ± 0.0010"


def test_q1_all_runs_the_three_sweeps_planned_together(tmp_path, monkeypatch):
    """`python -m experiments.q1_all` hands all three sweeps, in the study's order, to one plan
    (what that plan does is tested through the study); its flags are the sweeps' own."""
    calls = []
    monkeypatch.setattr(q1, "run_all", lambda experiments, ctx: calls.append((tuple(experiments), ctx.args)))
    q1.main_all(["--quick", "--quiet", "--seeds", "2", "--out", str(tmp_path / "out")])
    [(experiments, args)] = calls
    assert experiments == q1.ORDER == ("q1_epochs", "q1_augmentation", "q1_optimizers")
    assert args.quick and args.seeds == 2 and args.out == tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        q1.main_all(["--quick", "--lr", "0", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2 and len(calls) == 1


# ----------------------------------------------------------------------------------------------
# Worker processes (--workers): the same bits as one process, a failure stops them all


def test_workers_train_the_same_numbers_as_one_process(tmp_path, optimizers):
    """The optimizer sweep trained by 2 worker processes (each pinned to one core) gives the
    results of the in-process run of the `optimizers` fixture bit for bit."""
    sequential, _ = optimizers
    out = tmp_path / "out"
    proc = subprocess.run(  # a subprocess, so the workers' lines are captured too
        [sys.executable, "-m", "experiments.q1_optimizers", *QUICK, "--workers", "2", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout
    assert "training 4 configurations, 2 at a time in worker processes" in log
    # Longest first: the tuned run (1 + 1 epochs) starts before the 1-epoch ones.
    starts = [line for line in log.splitlines() if line.endswith(": training")]
    assert len(starts) == 4 and all(line.startswith("[worker ") for line in starts), starts
    assert "tuned" in starts[0] or "tuned" in starts[1], starts  # the first two start together
    check_sweep(out / "q1_optimizers", "q1_optimizers")
    for name in NAMES["q1_optimizers"]:
        a, b = sequential / name, out / "q1_optimizers" / name
        assert read_json(b / "config.json")["fingerprint"] == read_json(a / "config.json")["fingerprint"]
        assert np.array_equal(np.load(a / "test_predictions.npy"), np.load(b / "test_predictions.npy")), name
        assert read_json(a / "history.json") == read_json(b / "history.json"), name
        ma, mb = read_json(a / "metrics.json"), read_json(b / "metrics.json")
        for key in ("test_accuracy", "val_accuracy", "per_class_test_accuracy", "classification_report"):
            assert ma[key] == mb[key], (name, key)
    # Rerun: everything is complete, so no worker is started.
    again = run_in_process("q1_optimizers", [*QUICK, "--workers", "2", "--out", str(out)])
    assert "worker" not in again and again.count("complete, skipped") == 4


def test_a_failed_worker_stops_the_others_and_keeps_their_work(tmp_path, monkeypatch, capsys):
    """The second worker exits with status 2 at once: the parent stops the first, starts no
    other, writes no summary and exits with that status and a message saying how to resume."""
    from experiments import workers

    real = workers.worker_command
    started = []

    def command(job_file):
        started.append(job_file.name)
        if len(started) == 2:
            return [sys.executable, "-c", "import sys; sys.exit(2)"]
        return real(job_file)

    stopped = []
    real_stop = workers._stop
    monkeypatch.setattr(workers, "worker_command", command)
    monkeypatch.setattr(workers, "_stop", lambda procs, **kw: (stopped.extend(procs), real_stop(procs, **kw)))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        q1.main("q1_optimizers", [*QUICK, "--quiet", "--workers", "2", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: the worker training q1_optimizers/" in err and "failed (exit status 2" in err
    assert "rerun the same command to resume" in err
    assert len(started) == 2  # of 4 configurations: none started after the failure
    assert stopped and all(p.poll() is not None for p in stopped)  # worker 1 was stopped, and ended
    assert not (out / "q1_optimizers" / "summary.md").exists()


def test_bad_workers_value_is_a_usage_error(tmp_path, capsys):
    for value in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as exc:
            q1.main("q1_optimizers", ["--quick", "--workers", value, "--out", str(tmp_path / "out")])
        assert exc.value.code == 2
        assert "--workers must be 'auto' or an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
