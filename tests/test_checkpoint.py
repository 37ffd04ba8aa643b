"""Orbax checkpoints (fmnist_jax.checkpoint) and resuming an interrupted `fit`, on real images."""

import logging
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import checkpoint
from fmnist_jax import fit as fit_lib
from fmnist_jax import train as train_lib
from fmnist_jax.train import TrainConfig

N_TRAIN = 500
BATCH = 50
# Online augmentation and dropout: both draw per-step keys, so a resume that got the step or
# the key wrong would not reproduce the uninterrupted run.
CFG = TrainConfig(augment="online", batch_size=BATCH, epochs=2, eval_batch_size=200)
SEEDS = [3, 4]


@pytest.fixture(scope="module")
def small(task_data):
    train = (task_data.train_images[:N_TRAIN], task_data.train_labels[:N_TRAIN])
    evals = {"val": (task_data.val_images[:300], task_data.val_labels[:300])}
    return train, evals


def _states(cfg=CFG, seeds=SEEDS):
    return fit_lib.init_states(train_lib.program(cfg, N_TRAIN), seeds)


def test_save_then_restore_gives_identical_pytrees(tmp_path):
    states = _states()

    # Make the optimizer state non-trivial so every leaf carries information.
    def perturb(x):
        return x + 0.5 if jnp.issubdtype(x.dtype, jnp.floating) else x + 7

    states = states.replace(
        step=states.step + 7, opt_state=jax.tree_util.tree_map(perturb, states.opt_state)
    )
    extra = {
        "epoch": 3,
        "history": {"train_loss": [[0.5, 0.25], [0.125, float("inf")]]},
        "diverged": [False, True],
    }
    checkpoint.save(tmp_path / "ckpt", 3, states, extra)
    assert checkpoint.latest_step(tmp_path / "ckpt") == 3

    target = checkpoint.abstract_like(states)
    for leaf in jax.tree_util.tree_leaves(target):
        assert isinstance(leaf, jax.ShapeDtypeStruct)
    restored, restored_extra = checkpoint.restore(tmp_path / "ckpt", target)

    chex.assert_trees_all_equal_structs(restored, states)
    chex.assert_trees_all_equal_shapes_and_dtypes(restored, states)
    chex.assert_trees_all_equal(restored, states)
    assert restored_extra == extra

    # A later save becomes the latest; max_to_keep=1 keeps only it.
    checkpoint.save(tmp_path / "ckpt", 4, states, {"epoch": 4})
    assert checkpoint.latest_step(tmp_path / "ckpt") == 4
    assert checkpoint.restore(tmp_path / "ckpt", target)[1] == {"epoch": 4}


def test_restore_from_nothing(tmp_path):
    assert checkpoint.latest_step(tmp_path / "absent") is None
    with pytest.raises(FileNotFoundError):
        checkpoint.restore(tmp_path / "empty", _states())


def test_readers_leave_cleanup_to_the_next_save(tmp_path):
    """Reading starts no background cleanup (Orbax's close() does not wait for it, and a process
    exiting right after a read, e.g. with a clear error, raced it: a traceback at shutdown in CI);
    what a killed save left is removed by the next save instead."""
    directory = tmp_path / "ckpt"
    checkpoint.save(directory, 1, {"w": jnp.arange(3.0)}, {"epoch": 1})
    leftover = directory / "2.orbax-checkpoint-tmp-1234"  # what a save killed midway leaves
    leftover.mkdir()
    (leftover / "partial").write_text("x")
    threads = set(threading.enumerate())
    assert checkpoint.restore_extra(directory) == {"epoch": 1}
    assert checkpoint.latest_step(directory) == 1
    checkpoint.restore(directory, {"w": jnp.zeros(3)})
    for thread in set(threading.enumerate()) - threads:
        thread.join(timeout=10)  # let anything a reader started finish before looking
    assert leftover.exists()
    assert checkpoint.latest_step(tmp_path / "never_written") is None
    assert not (tmp_path / "never_written").exists()  # a reader creates no folder
    checkpoint.save(directory, 2, {"w": jnp.ones(3)}, {"epoch": 2})
    assert not leftover.exists()
    assert sorted(p.name for p in directory.iterdir()) == ["2"]


def _assert_same_run(got, want):
    assert got.history == want.history  # every metric of every epoch, exactly
    assert got.diverged == want.diverged
    assert got.epochs_run == want.epochs_run
    chex.assert_trees_all_equal(got.states, want.states)
    for name in want.final:
        for key in want.final[name]:
            np.testing.assert_array_equal(
                got.final[name][key], want.final[name][key], err_msg=f"{name} {key}"
            )


@pytest.fixture(scope="module")
def uninterrupted(small, tmp_path_factory):
    return fit_lib.fit(
        CFG,
        *small,
        seeds=SEEDS,
        parallel="none",
        checkpoint_dir=tmp_path_factory.mktemp("uninterrupted"),
    )


def test_resume_continues_exactly(small, uninterrupted, tmp_path):
    directory = tmp_path / "run"
    first = fit_lib.fit(
        CFG.replace(epochs=1), *small, seeds=SEEDS, parallel="none", checkpoint_dir=directory
    )
    assert first.epochs_run == 1
    assert checkpoint.latest_step(directory) == 1
    np.testing.assert_array_equal(np.asarray(first.states.step), N_TRAIN // BATCH)

    resumed = fit_lib.fit(CFG, *small, seeds=SEEDS, parallel="none", checkpoint_dir=directory)
    assert checkpoint.latest_step(directory) == 2
    for name, rows in resumed.history.items():
        assert all(len(row) == 2 for row in rows), name
        assert [row[0] for row in rows] == [row[0] for row in first.history[name]], name
    _assert_same_run(resumed, uninterrupted)
    np.testing.assert_array_equal(np.asarray(resumed.states.step), 2 * N_TRAIN // BATCH)

    # Rerunning a finished run trains nothing and returns the same numbers.
    again = fit_lib.fit(CFG, *small, seeds=SEEDS, parallel="none", checkpoint_dir=directory)
    _assert_same_run(again, uninterrupted)
    assert "train_images_per_s" not in again.timing


def test_the_progress_bar_shows_the_epoch_it_counts(small, uninterrupted, capsys):
    """At "k/N" the bar shows epoch k's numbers (mean over seeds), not epoch k-1's."""
    fit_lib.fit(CFG, *small, seeds=SEEDS, parallel="none", progress=True, desc="run")
    shown = [part for part in capsys.readouterr().err.split("\r") if "val_accuracy=" in part]
    for k in (1, 2):
        want = np.mean([row[k - 1] for row in uninterrupted.history["val_accuracy"]])
        at_k = [part for part in shown if f" {k}/2 " in part]
        assert at_k and all(f"val_accuracy={want:.4f}" in part for part in at_k), (k, shown)


def test_a_run_continued_from_a_shorter_one_is_the_longer_run(small, uninterrupted):
    """`start`: a 1-epoch run continued to 2 epochs gives the 2-epoch run bit for bit (what lets
    the epochs sweep train 3, then 2 more epochs for its 5-epoch row, ...). The run it continues
    is left intact: the epoch program donates copies, not its states."""
    first = fit_lib.fit(CFG.replace(epochs=1), *small, seeds=SEEDS, parallel="none")
    kept = jax.tree_util.tree_map(np.asarray, first.states)
    for _ in range(2):  # continued twice from the same run: the same result
        continued = fit_lib.fit(CFG, *small, seeds=SEEDS, parallel="none", start=first)
        _assert_same_run(continued, uninterrupted)
    chex.assert_trees_all_equal(jax.tree_util.tree_map(np.asarray, first.states), kept)
    assert first.epochs_run == 1 and len(first.history["train_loss"][0]) == 1
    assert continued.timing["own_wall_s"] < continued.timing["wall_s"]  # counts the first epoch too
    with pytest.raises(ValueError, match="either `init`"):
        fit_lib.fit(CFG, *small, seeds=SEEDS, start=first, init=first.states)


def test_a_schedule_that_decays_later_continues_the_constant_run(small, uninterrupted):
    """A wsd schedule keeps the constant rate until its decay: the 3-epoch run whose last epoch
    decays, trained in one go, is the 2-epoch constant run continued (the multipliers come from
    the host, so the compiled program is the same), and its last epoch differs from a constant
    one."""
    wsd = CFG.replace(epochs=3, optimizer=train_lib.OptimizerConfig(schedule="wsd", decay_epochs=1))
    decayed = fit_lib.fit(wsd, *small, seeds=SEEDS, parallel="none")
    _assert_same_run(
        fit_lib.fit(wsd, *small, seeds=SEEDS, parallel="none", start=uninterrupted), decayed
    )
    constant = fit_lib.fit(
        CFG.replace(epochs=3), *small, seeds=SEEDS, parallel="none", start=uninterrupted
    )
    assert [row[:2] for row in decayed.history["train_loss"]] == [
        row[:2] for row in constant.history["train_loss"]
    ]
    assert [row[2] for row in decayed.history["train_loss"]] != [
        row[2] for row in constant.history["train_loss"]
    ]


def test_a_stage_on_another_training_set_continues_from_the_last_checkpoint(small, tmp_path):
    """Q1's tuned recipe as two stages: one epoch on the expanded set, then one on the originals
    while the rate falls to 0. Continuing the first stage's result in memory (`start`) and
    resuming from its last checkpoint give the same run; the second stage trains the originals'
    steps, not the expanded set's."""
    train, evals = small
    expand = CFG.replace(augment="expand", epochs=1)
    tuned = CFG.replace(
        augment="none",
        epochs=2,
        optimizer=train_lib.OptimizerConfig(schedule="wsd", decay_epochs=1),
    )
    first = fit_lib.fit(
        expand, train, evals, seeds=SEEDS, parallel="none", checkpoint_dir=tmp_path / "ck"
    )
    steps = N_TRAIN // BATCH
    np.testing.assert_array_equal(np.asarray(first.states.step), 3 * steps)
    run = fit_lib.fit(tuned, train, evals, seeds=SEEDS, parallel="none", start=first)
    np.testing.assert_array_equal(np.asarray(run.states.step), 4 * steps)
    _assert_same_run(
        fit_lib.fit(
            tuned, train, evals, seeds=SEEDS, parallel="none", checkpoint_dir=tmp_path / "ck"
        ),
        run,
    )
    # Continuing on the expanded set instead is another run.
    on_expanded = fit_lib.fit(
        tuned.replace(augment="expand"), train, evals, seeds=SEEDS, parallel="none", start=first
    )
    assert on_expanded.history["train_loss"] != run.history["train_loss"]


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints (issue 16): set aside, the run starts afresh


def _remove_manifest(step_dir):
    (step_dir / "state" / "manifest.ocdbt").unlink()


def _empty_index_files(step_dir):
    for f in (step_dir / "state" / "d").iterdir():
        f.write_bytes(b"")


def _empty_the_array_files(step_dir):
    for f in (step_dir / "state").glob("ocdbt.process_*/d/*"):
        f.write_bytes(b"")


def _change_a_byte_of_the_arrays(step_dir):
    """A byte in the middle of the arrays' data: Orbax restores it without complaint."""
    data = max(
        (f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size
    )
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))


def _garble_sidecar(step_dir):
    (step_dir / "extra" / "metadata").write_text("{not json")


def _other_shapes(step_dir):
    directory = step_dir.parent
    checkpoint.save(directory, 1, {"w": jnp.zeros(3)}, {"epoch": 1, "history": {}, "diverged": []})


@pytest.fixture(scope="module")
def one_epoch(small, tmp_path_factory):
    """A 1-epoch run's checkpoint folder, to copy and damage."""
    directory = tmp_path_factory.mktemp("one_epoch") / "checkpoint"
    fit_lib.fit(
        CFG.replace(epochs=1), *small, seeds=SEEDS, parallel="none", checkpoint_dir=directory
    )
    return directory


@pytest.mark.parametrize(
    "damage",
    [
        _remove_manifest,
        _empty_index_files,
        _empty_the_array_files,
        _change_a_byte_of_the_arrays,
        _garble_sidecar,
        _other_shapes,
    ],
    ids=lambda f: f.__name__[1:],
)
def test_a_damaged_checkpoint_is_set_aside_and_the_run_starts_afresh(
    small, uninterrupted, one_epoch, tmp_path, capfd, damage
):
    directory = tmp_path / "checkpoint"
    shutil.copytree(one_epoch, directory)
    damage(directory / "1")
    capfd.readouterr()
    run = fit_lib.fit(CFG, *small, seeds=SEEDS, parallel="none", checkpoint_dir=directory)
    _assert_same_run(run, uninterrupted)  # trained from epoch 0: the uninterrupted numbers
    err = capfd.readouterr().err
    aside = tmp_path / ".checkpoint.damaged"
    assert f"warning: the checkpoint in {directory} cannot be restored" in err, err
    assert f"moved to {aside}" in err and "starts afresh" in err
    assert "Traceback" not in err and "Event loop is closed" not in err
    # The cause in words, not tensorstore's internals cut off midway.
    [warning] = [line for line in err.splitlines() if line.startswith("warning:")]
    assert not any(
        junk in warning for junk in ("tensorstore_spec", "bound method", "TensorStore({")
    )
    assert warning.count('"') % 2 == 0, warning  # no quoted path cut in half
    assert (aside / "1").is_dir()  # kept for inspection, as it was
    assert checkpoint.latest_step(directory) == 2  # a fresh checkpoint beside it
    with pytest.raises(checkpoint.CheckpointError):  # a damaged checkpoint is never restored
        checkpoint.restore(aside, run.states)


def test_failed_restores_leave_no_tracebacks(tmp_path):
    """Orbax's reads still in flight when a restore fails end after its event loop closed: with
    orbax-checkpoint 0.12 that prints dozens of "Event loop is closed" tracebacks, at exit or
    later, which the entry points' guard (`experiments.cli.main_guard`) drops. Eight failures of
    a 30-array state under the guard, in a subprocess (what is printed at exit counts): only the
    eight warnings are left."""
    code = (
        "import sys, pathlib, jax.numpy as jnp\n"
        "from experiments import cli\nfrom fmnist_jax import checkpoint\n"
        "def run():\n"
        "    state = {f'a{i}': jnp.full((64, 100), float(i)) for i in range(30)}\n"
        "    for k in range(8):\n"
        "        folder = pathlib.Path(sys.argv[1]) / str(k)\n"
        "        checkpoint.save(folder, 1, state, {'epoch': 1})\n"
        "        (folder / '1/state/manifest.ocdbt').unlink()\n"
        "        assert checkpoint.resume(folder, state, 0) is None\n"
        "cli.main_guard(run)\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 8 and all(
        line.startswith("warning: the checkpoint in") for line in lines
    ), proc.stderr


def test_only_orbax_leftover_futures_are_dropped():
    """The entry points' filter on asyncio's logger (`cli._orbax_future_left`): the
    never-retrieved exceptions a failed restore or write leaves (tensorstore's error in the
    message, or orbax in the traceback) are dropped; any other is kept."""
    from experiments import cli

    def record(message, exc_info=None):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (), exc_info)

    restore = (
        "Future exception was never retrieved\nfuture: <Future ValueError('[tensorstore_spec=']"
    )
    try:
        raise ValueError("write failed")
    except ValueError:
        error = sys.exc_info()
    error = (error[0], ValueError("Error in orbax.checkpoint write"), error[2])
    assert cli._orbax_future_left(record(restore))
    assert cli._orbax_future_left(record("_GatheringFuture exception was never retrieved", error))
    assert not cli._orbax_future_left(record("Future exception was never retrieved\nfuture: x"))
    assert not cli._orbax_future_left(record("Task was destroyed but it is pending! orbax"))
