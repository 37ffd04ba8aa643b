"""TensorBoard event files of every run and `--profile`'s trace (experiments/monitor.py), read
back with TensorBoard's own reader and as the gzipped JSON Perfetto opens.

Small real runs (`--limit 200`, 2 seeds): Question 1's epochs sweep twice, with and without
`--profile` (its 5-, 8- and 10-epoch rows continue the shorter ones, so their event files hold
epochs another row trained), and one Question 2 pretraining.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from experiments import cli, monitor, q1, q2
from experiments import sweep as sweep_lib
from experiments.context import make_context
from fmnist_jax import checkpoint
from fmnist_jax.compare import compare
from fmnist_jax.fit import fit
from fmnist_jax.train import OptimizerConfig, TrainConfig

SEEDS = (0, 1)
SMALL = ["--limit", "200", "--seeds", str(len(SEEDS))]
EPOCH_ROWS = ("epochs_3", "epochs_5", "epochs_8", "epochs_10")


def quietly(main, *args) -> str:
    """An entry point in this process; returns its stdout + stderr."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        main(*args)
    return buf.getvalue()


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    quietly(q1.main, "q1_epochs", [*SMALL, "--quiet", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> tuple[Path, Path, str]:
    out, trace = tmp_path_factory.mktemp("profiled"), tmp_path_factory.mktemp("trace")
    log = quietly(
        q1.main, "q1_epochs", [*SMALL, "--quiet", "--out", str(out), "--profile", str(trace)]
    )
    return out, trace, log


def read_json(path: Path):
    return json.loads(path.read_text())


def events(seed_dir: Path) -> list:
    """Every event of a seed's run in file order (one event file per run)."""
    files = sorted(seed_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    return list(LegacyEventFileLoader(str(files[0])).Load())


def session_hparams(evs) -> dict:
    """The hyperparameters of the run's HParams session (exactly one session start)."""
    starts = [
        plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
        for e in evs
        for v in e.summary.value
        if v.tag == "_hparams_/session_start_info"
    ]
    assert len(starts) == 1
    hparams = starts[0].session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in hparams.items()}


def check_events(run_dir: Path) -> dict:
    """The event files of a results folder hold its history.json exactly: per seed, per epoch
    (the step, from 1, each once and in order) every curve of the run under "<quantity>/<set>".
    Returns seed 0's hyperparameters."""
    history = read_json(run_dir / "history.json")
    n_epochs = len(history["epoch"])
    curves = {k: v for k, v in history.items() if k != "epoch" and not k.startswith("pretrain_")}
    tags = {key: f"{key.split('_', 1)[1]}/{key.split('_', 1)[0]}" for key in curves}
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == [
        f"seed_{s}" for s in SEEDS
    ]
    for k, seed in enumerate(SEEDS):
        evs = events(run_dir / "tensorboard" / f"seed_{seed}")
        assert session_hparams(evs)["seed"] == seed
        scalars = [(e.step, v.tag, v.simple_value) for e in evs for v in e.summary.value]
        scalars = [s for s in scalars if not s[1].startswith("_hparams_")]
        want = [(epoch + 1, tags[key]) for epoch in range(n_epochs) for key in curves]
        assert [s[:2] for s in scalars] == want
        got = np.asarray([s[2] for s in scalars], np.float32)
        # TensorBoard keeps scalars as float32: history.json's values (float64, e.g. a loss
        # sum / count) rounded once to float32 are exactly what it holds.
        expected = np.asarray(
            [curves[key][k][epoch] for epoch in range(n_epochs) for key in curves], np.float32
        )
        np.testing.assert_array_equal(got, expected)
    return session_hparams(events(run_dir / "tensorboard" / "seed_0"))


# ----------------------------------------------------------------------------------------------
# Event files


def test_each_rows_event_files_hold_its_history_once(profiled):
    """Every row of the epochs sweep, the continued ones too (the 5-epoch row's first 3 epochs
    were trained as the 3-epoch row), holds its whole history once, the configuration's
    hyperparameters and the learning rate it trained with."""
    out = profiled[0] / "q1_epochs"
    for name in EPOCH_ROWS:
        config = read_json(out / name / "config.json")["train_config"]
        hparams = check_events(out / name)
        assert hparams["epochs"] == config["epochs"] == int(name.split("_")[1])
        assert hparams["model"] == "cnn" and hparams["augment"] == config["augment"]
        assert hparams["optimizer.learning_rate"] == config["optimizer"]["learning_rate"]
        # A constant schedule: the learning rate of every epoch is the configured one.
        lr = read_json(out / name / "history.json")["train_learning_rate"]
        assert np.all(np.asarray(lr) == np.float32(config["optimizer"]["learning_rate"]))


def test_a_pretrainings_event_files_hold_its_reconstruction_errors(tmp_path):
    """Question 2's pretraining: its MSE of train, validation and test and the noisy inputs' own
    MSE (the baseline), and no accuracy."""
    args = [*SMALL, "--quiet", "--stage", "pretrain", "--pretrain-epochs", "2"]
    quietly(q2.main, [*args, "--out", str(tmp_path)])
    (run_dir,) = (tmp_path / q2.PRETRAIN).iterdir()
    hparams = check_events(run_dir)
    assert hparams["model"] == "autoencoder" and hparams["epochs"] == 2
    tags = {v.tag for e in events(run_dir / "tensorboard" / "seed_1") for v in e.summary.value}
    assert {"loss/train", "loss/val", "noisy_loss/val", "noisy_loss/test"} <= tags
    assert not any(t.startswith("accuracy/") for t in tags)


class Interrupted(Exception):
    pass


def test_a_resumed_run_writes_every_epoch_once(tmp_path, monkeypatch):
    """A run stopped after its second epoch and resumed from its checkpoint in a new context
    (as a new process would): its event files hold epochs 1, 2, 3 once each, the resumed
    history's values."""
    opts = cli.parse(cli.parser("test", epochs=3, lr=q1.LR), [*SMALL, "--quiet"])
    spec = sweep_lib.Spec("run", "run", q1.base_config(opts).replace(augment="none"))
    ckpt, folder = tmp_path / "checkpoint", tmp_path / "tensorboard"
    write = monitor.RunLog.write

    def stop_after_epoch_2(self, history):
        write(self, history)
        if len(history["train_loss"][0]) == 2:
            raise Interrupted

    monkeypatch.setattr(monitor.RunLog, "write", stop_after_epoch_2)
    with pytest.raises(Interrupted):
        sweep_lib.train(make_context(opts), spec, ckpt, tensorboard=folder)
    assert checkpoint.latest_step(ckpt) == 2
    monkeypatch.setattr(monitor.RunLog, "write", write)
    result = sweep_lib.train(make_context(opts), spec, ckpt, tensorboard=folder)
    assert result.epochs_run == 3
    for k, seed in enumerate(SEEDS):
        evs = [e for e in events(folder / f"seed_{seed}") if e.step]
        assert [e.step for e in evs] == [1, 2, 3]
        loss = [v.simple_value for e in evs for v in e.summary.value if v.tag == "loss/train"]
        # float32, as TensorBoard stores scalars (see check_events)
        assert np.array_equal(np.float32(loss), np.float32(result.history["train_loss"][k]))


def test_the_learning_rate_is_the_epochs_mean_of_the_schedule():
    """wsd over 2 epochs with 1 of decay, 2 steps per epoch: epoch 1 at the peak rate, epoch 2's
    steps at 1 and 1/2 of it (optax's linear decay to 0 over 2 steps), mean 3/4."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(200, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 5, 200).astype(np.int32)
    optimizer = OptimizerConfig(learning_rate=0.01, schedule="wsd", decay_epochs=1)
    cfg = TrainConfig(model="encoder_classifier", augment="none", epochs=2, optimizer=optimizer)
    seen = []  # the epochs in the history each time the hook is called
    res = fit(
        cfg,
        (images, labels),
        {"val": (images[:50], labels[:50])},
        [0],
        on_epoch=lambda history: seen.append(len(history["train_loss"][0])),
    )
    # float32 products: 0.01 * 1 and 0.01 * 0.75 as the device computes them
    assert res.history["train_learning_rate"] == [
        [float(np.float32(0.01)), float(np.float32(0.01) * np.float32(0.75))]
    ]
    assert seen == [1, 2]


# ----------------------------------------------------------------------------------------------
# --profile


def trace_names(trace: Path) -> set[str]:
    (path,) = trace.glob("plugins/profile/*/perfetto_trace.json.gz")
    with gzip.open(path) as f:
        return {e.get("name") for e in json.load(f)["traceEvents"] if e.get("ph") == "X"}


def test_profile_traces_one_epoch_without_compilation(profiled):
    """One trace, in TensorBoard's layout, holding the epoch program's run and XLA's ops, and no
    lowering or compilation (JAX's own trace annotations for them)."""
    out, trace, log = profiled
    assert len(list(trace.glob("plugins/profile/*/*.xplane.pb"))) == 1
    names = trace_names(trace)
    assert "PjitFunction(jit(epoch_fn))" in names
    assert any("fusion" in name for name in names), sorted(names)[:50]
    assert not names & {"lower_sharding_computation", "backend_compile_and_load"}
    assert "profile of one epoch (epochs_3, epoch 2)" in log


def test_profiling_changes_no_number_and_no_fingerprint(profiled, plain):
    out = profiled[0]
    assert compare(out, plain) == []
    for name in EPOCH_ROWS:
        fingerprint = read_json(out / "q1_epochs" / name / "config.json")["fingerprint"]
        assert read_json(plain / "q1_epochs" / name / "config.json")["fingerprint"] == fingerprint
    # The profiled results are these: a rerun without --profile skips every row.
    log = quietly(q1.main, "q1_epochs", [*SMALL, "--out", str(out)])
    assert log.count("complete, skipped") == len(EPOCH_ROWS)


def test_a_single_epoch_is_not_traced(tmp_path, capsys):
    """A configuration of one epoch: its only epoch compiled, so nothing is traced; one warning
    for the whole process."""
    trace = monitor.EpochTrace(tmp_path / "trace")
    for name in ("a", "b"):
        trace.hook(name, 1)({"train_loss": [[0.5]]})
    err = capsys.readouterr().err
    assert err.count("warning: --profile: a trains a single epoch") == 1 and " b " not in err
    assert trace.state == "waiting" and not (tmp_path / "trace").exists()
