"""`fit` over 8 (fake CPU) devices equals `fit` on one, for parallel="data" and parallel="seeds".

JAX fixes its device count when it starts, so the 8-device runs happen in a child Python
started with XLA_FLAGS=--xla_force_host_platform_device_count=8; it trains on a small real
subset passed through an .npz and writes its results to another .npz that the tests compare.

Horizon and tolerances as in test_train.py (tests/_numerics.py derives them): the runs are 2
epochs of 3 steps, because on 8 devices the sums (BatchNorm statistics over a split batch,
per-device member programs) round differently, and this CNN's training amplifies rounding
differences chaotically after a few dozen steps. Conv biases (exactly-zero gradient, noise
under Adam) are not compared; eval metrics, which see them through BatchNorm's running means,
are compared loosely.
"""

import json
import os
import subprocess
import sys
import textwrap

import _numerics as numerics
import numpy as np
import pytest

N_DEVICES = 8
N_TRAIN = 240  # 3 steps of 80 per epoch
BATCH = 80  # divisible by 8: each device gets 10 images of a batch in "data" mode
CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    from fmnist_jax import fit as fit_lib
    from fmnist_jax.train import TrainConfig

    data = np.load(sys.argv[1])
    train = (data["train_images"], data["train_labels"])
    evals = {"val": (data["val_images"], data["val_labels"])}
    cfg = TrainConfig(
        augment="online", batch_size=int(data["batch"]), epochs=2, eval_batch_size=100
    )

    runs = {
        "none8": ("none", list(range(8))),
        "seeds8": ("seeds", list(range(8))),
        "seeds3": ("seeds", [0, 1, 2]),
        "data2": ("data", [0, 1]),
    }
    arrays, meta = {}, {"device_count": jax.device_count(), "platform": jax.default_backend(),
                        "runs": {}}
    done = {}
    for name, (parallel, seeds) in runs.items():
        res = done[name] = fit_lib.fit(cfg, train, evals, seeds=seeds, parallel=parallel)
        flat = jax.tree_util.tree_flatten_with_path(res.states)[0]
        for path, leaf in flat:
            arrays[name + "|" + jax.tree_util.keystr(path)] = np.asarray(leaf)
        devices = {len(leaf.sharding.device_set) for _, leaf in flat}
        meta["runs"][name] = {
            "parallel": res.parallel, "seeds": res.seeds, "history": res.history,
            "diverged": res.diverged, "epochs_run": res.epochs_run,
            "state_devices": sorted(devices),
            "final_val_predictions_shape": list(np.shape(res.final["val"]["predictions"])),
        }
    # A padded seeds run continued for one more epoch (the padding members need a history too).
    more = fit_lib.fit(cfg.replace(epochs=3), train, evals, seeds=[0, 1, 2], parallel="seeds",
                       start=done["seeds3"])
    meta["seeds3_continued"] = {"epochs_run": more.epochs_run, "history": more.history}
    np.savez(sys.argv[2], **arrays)
    with open(sys.argv[3], "w") as f:
        json.dump(meta, f)
    """
)


@pytest.fixture(scope="module")
def child_results(task_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharding")
    np.savez(
        tmp / "data.npz",
        train_images=task_data.train_images[:N_TRAIN],
        train_labels=task_data.train_labels[:N_TRAIN],
        val_images=task_data.val_images[:200],
        val_labels=task_data.val_labels[:200],
        batch=BATCH,
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tmp / "data.npz"),
            str(tmp / "out.npz"),
            str(tmp / "meta.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(tmp / "meta.json") as f:
        meta = json.load(f)
    with np.load(tmp / "out.npz") as out:
        arrays = {key: out[key] for key in out.files}
    states = {}
    for key, value in arrays.items():
        run, path = key.split("|", 1)
        states.setdefault(run, {})[path] = value
    return meta, states


def assert_same_member(got, k, want, j):
    """(meta, states) of two runs: member k of `got` trained like member j of `want`."""
    (got_meta, got_states), (want_meta, want_states) = got, want
    assert got_meta["seeds"][k] == want_meta["seeds"][j]
    numerics.assert_same_member(
        {path: leaf[k] for path, leaf in got_states.items()},
        numerics.member_history(got_meta["history"], k),
        {path: leaf[j] for path, leaf in want_states.items()},
        numerics.member_history(want_meta["history"], j),
    )
    assert got_meta["diverged"][k] == want_meta["diverged"][j] is False


def _run(child_results, name):
    meta, states = child_results
    return meta["runs"][name], states[name]


def test_child_saw_eight_devices(child_results):
    meta, _ = child_results
    assert meta["device_count"] == N_DEVICES
    assert meta["platform"] == "cpu"
    runs = meta["runs"]
    assert runs["none8"]["parallel"] == "none" and runs["none8"]["state_devices"] == [1]
    for name in ("seeds8", "seeds3"):
        assert runs[name]["parallel"] == "seeds"
        assert runs[name]["state_devices"] == [N_DEVICES]  # members spread over all 8 devices
    assert runs["data2"]["parallel"] == "data"
    assert runs["data2"]["state_devices"] == [N_DEVICES]  # replicated on all 8
    for run in runs.values():
        assert run["epochs_run"] == 2


def test_seeds_mode_equals_one_device(child_results):
    reference = _run(child_results, "none8")
    sharded = _run(child_results, "seeds8")
    assert sharded[0]["seeds"] == list(range(8))
    for k in range(8):
        assert_same_member(sharded, k, reference, k)


def test_seeds_mode_pads_and_returns_only_the_real_members(child_results):
    meta, states = _run(child_results, "seeds3")
    assert meta["seeds"] == [0, 1, 2]
    assert len(meta["diverged"]) == 3
    assert meta["final_val_predictions_shape"] == [3, 200]
    for name, rows in meta["history"].items():
        assert len(rows) == 3, name
    for path, leaf in states.items():
        assert leaf.shape[0] == 3, path
    reference = _run(child_results, "none8")
    for k in range(3):
        assert_same_member((meta, states), k, reference, k)


def test_a_padded_seeds_run_continues(child_results):
    meta, _ = child_results
    continued, start = meta["seeds3_continued"], meta["runs"]["seeds3"]
    assert continued["epochs_run"] == 3
    for name, rows in continued["history"].items():
        assert [len(row) for row in rows] == [3, 3, 3], name
        assert [row[:2] for row in rows] == start["history"][name], name


def test_data_parallel_equals_one_device(child_results):
    reference = _run(child_results, "none8")
    sharded = _run(child_results, "data2")
    for k in range(2):
        assert_same_member(sharded, k, reference, k)
