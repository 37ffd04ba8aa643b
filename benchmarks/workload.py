"""What the benchmarks run: the task's arrays and the engine's own compiled programs.

Training goes through exactly the public pieces `fit` uses (`program`, `init_states`,
`make_placement`, `member_programs`, `lr_scales`), so `cnn_train` measures the engine's default
path, not a benchmark-only copy of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import timed
from fmnist_jax import data
from fmnist_jax.fit import init_states, member_programs
from fmnist_jax.placement import (
    make_placement,
    padded_members,
    resolve_member_map,
    resolve_parallel,
    side_by_side,
)
from fmnist_jax.train import TrainConfig, lr_scales, pad_for_eval, program

N_TRAIN, N_TEST = 27_000, 5_000  # the task's sizes, also for random stand-ins


@dataclass(frozen=True)
class Workload:
    """Train and test arrays (float32 [N, 28, 28, 1], int32 [N]) and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # "fashion-mnist" or "random"


def load_workload(random_data: bool = False) -> Workload:
    """The real 5-class task when it can be loaded (and not `random_data`), else random arrays
    of the same shapes."""
    if not random_data:
        try:
            t = data.load_task()
            return Workload(
                t.train_images, t.train_labels, t.test_images, t.test_labels, "fashion-mnist"
            )
        except data.DataError:
            pass
    rng = np.random.default_rng(0)
    return Workload(
        rng.random((N_TRAIN, 28, 28, 1), np.float32),
        rng.integers(0, 5, N_TRAIN, dtype=np.int32),
        rng.random((N_TEST, 28, 28, 1), np.float32),
        rng.integers(0, 5, N_TEST, dtype=np.int32),
        "random",
    )


@dataclass
class Compiled:
    """A compiled program ready to time: `run()` does one call (and keeps the donated state)."""

    run: Callable[[], Any]
    compile_s: float  # lower + compile, as `fit` counts it
    images_per_call: int  # images of the real members only (padding members excluded)
    parallel: str
    n_members: int
    batch_size: int  # images per member in one step or evaluation call
    n_devices: int = 1


def train_epoch_program(
    cfg: TrainConfig,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    n_members: int = 1,
    parallel: str = "none",
    member_map: str = "auto",
) -> Compiled:
    """One training epoch of `n_members` members, placed, mapped and compiled as `fit` does."""
    mode = resolve_parallel(parallel, n_members)
    trained = padded_members(n_members, mode)
    prog = program(cfg, int(images.shape[0]))
    place = make_placement(mode)
    epoch_fn = member_programs(prog, place.batch_sharding, resolve_member_map(member_map, mode))[0]
    states = place.state(init_states(prog, list(range(trained))))
    d_images = place.data(jnp.asarray(images, jnp.float32))
    d_labels = place.data(jnp.asarray(labels, jnp.int32))

    def scales(epoch):
        return lr_scales(cfg, prog.steps_per_epoch, epoch)

    compiled, compile_s = timed(
        lambda: epoch_fn.lower(states, d_images, d_labels, 0, scales(0)).compile()
    )
    box = {"states": states, "epoch": 0}

    def run():
        box["states"], metrics = compiled(
            box["states"], d_images, d_labels, box["epoch"], scales(box["epoch"])
        )
        box["epoch"] += 1
        return box["states"], metrics

    used = prog.steps_per_epoch * cfg.batch_size
    n_devices = 1 if place.mesh is None else place.mesh.size
    return Compiled(run, compile_s, n_members * used, mode, n_members, cfg.batch_size, n_devices)


def eval_program(
    cfg: TrainConfig,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    n_members: int = 1,
    member_map: str = "auto",
) -> Compiled:
    """Evaluation of `n_members` members as `fit` does it: fit's jitted eval program over the
    members on each padded, masked batch of `cfg.eval_batch`, sums kept on the device."""
    prog = program(cfg, cfg.batch_size)  # the training set's size plays no part in evaluation
    member_map = resolve_member_map(member_map, "none")
    eval_fn = member_programs(prog, None, member_map)[1]
    states = init_states(prog, list(range(n_members)))
    batch = cfg.eval_batch(side_by_side(n_members, member_map))
    padded_images, padded_labels = pad_for_eval(
        np.asarray(images, np.float32), np.asarray(labels, np.int32), batch
    )
    batches = [
        (jnp.asarray(x), jnp.asarray(y)) for x, y in zip(padded_images, padded_labels, strict=True)
    ]
    key = jax.random.PRNGKey(0)
    compiled, compile_s = timed(lambda: eval_fn.lower(states, *batches[0], key).compile())

    def run():
        sums = None
        for b, batch in enumerate(batches):
            out = compiled(states, *batch, jax.random.fold_in(key, b))
            out.pop("predictions", None)
            sums = out if sums is None else jax.tree_util.tree_map(jnp.add, sums, out)
        return sums

    return Compiled(run, compile_s, n_members * int(images.shape[0]), "none", n_members, batch)
