"""`fit`: train N members at once for a number of epochs, with history, divergence flags,
per-epoch evaluation, optional device sharding and resumable Orbax checkpoints."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from fmnist_jax import augment, checkpoint
from fmnist_jax.train import (
    Program, TrainConfig, TrainState, epoch_lr_scales, eval_step, init_state, pad_for_eval,
    phase_config, program, train_epoch,
)

PARALLEL_MODES = ("auto", "none", "seeds", "data")
MEMBER_MAPS = ("auto", "vmap", "map")
EVAL_NOISE_SEED = 1234  # fixed corruption of val/test images for the autoencoder's eval loss


class Interrupted(Exception):
    """Raised by a `should_stop` callback's owner to stop between epochs (the checkpoint is kept)."""


@dataclass
class FitResult:
    """What a run produced. Arrays carry a leading member axis [n_members, ...]."""

    cfg: TrainConfig
    seeds: list[int]
    states: TrainState
    history: dict[str, list]  # name -> [n_members][epochs]
    diverged: list[bool]
    final: dict[str, dict[str, np.ndarray]]  # eval set -> {"loss", "accuracy", "confusion", "predictions"}
    timing: dict[str, float] = field(default_factory=dict)
    parallel: str = "none"
    member_map: str = "vmap"
    epochs_run: int = 0


# ----------------------------------------------------------------------------------------------
# Placement


def resolve_parallel(parallel: str, n_members: int) -> str:
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {parallel!r}; choose one of {PARALLEL_MODES}")
    if parallel != "auto":
        return parallel
    # Several devices: give each its own members (no communication at all). One device: plain.
    return "seeds" if jax.device_count() > 1 and n_members > 1 else "none"


def padded_members(n_members: int, parallel: str) -> int:
    """Members actually trained: the seed axis is padded to a multiple of the device count."""
    if parallel != "seeds":
        return n_members
    d = jax.device_count()
    return int(math.ceil(n_members / d) * d)


@dataclass(frozen=True)
class Placement:
    mode: str
    mesh: Mesh | None

    def state(self, tree):
        if self.mode == "seeds":
            return jax.device_put(tree, NamedSharding(self.mesh, P("devices")))
        if self.mode == "data":
            return jax.device_put(tree, NamedSharding(self.mesh, P()))
        return jax.device_put(tree)

    def data(self, array):
        if self.mesh is None:
            return jax.device_put(array)
        return jax.device_put(array, NamedSharding(self.mesh, P()))

    @property
    def batch_sharding(self):
        # Under vmap the member axis is prepended; the batch axis (1) is split over devices.
        return NamedSharding(self.mesh, P(None, "devices")) if self.mode == "data" else None


def make_placement(mode: str) -> Placement:
    if mode == "none":
        return Placement(mode, None)
    # Auto axis type: XLA's partitioner propagates the shardings we place on the inputs.
    mesh = jax.make_mesh((jax.device_count(),), ("devices",), axis_types=(AxisType.Auto,))
    return Placement(mode, mesh)


# ----------------------------------------------------------------------------------------------
# Compiled programs over the members (cached per config, data size, placement and member map)


def resolve_member_map(member_map: str, mode: str) -> str:
    """How a run's members share its one compiled program: `vmap` (side by side: every op
    batched over the member axis) or `map` (`lax.map`: one member after another, unbatched ops).

    `auto` is `map` on the CPU when the run is not sharded (`mode` "none"), `vmap` otherwise.
    Why: on 2-core CPU hosts the vmapped CNN epoch ran at 0.86-0.90x the throughput of the same
    members one after another (1,890-1,940 vs 2,100-2,260 images/s for 3 members, interleaved
    rounds; the encoder classifier alike, the autoencoder about even): the batched convolution
    matmuls and BatchNorm passes are slower than three plain ones. Accelerators want the wide
    batched ops, and the sharded modes split the member or batch axis over devices.
    Both give the same numbers up to float32 summation order.
    """
    if member_map not in MEMBER_MAPS:
        raise ValueError(f"unknown member_map {member_map!r}; choose one of {MEMBER_MAPS}")
    if member_map == "map" and mode != "none":
        raise ValueError(f"member_map 'map' runs the members one after another on one device; "
                         f"parallel mode {mode!r} spreads them over devices: use member_map "
                         f"'vmap' or 'auto' with it, or parallel 'none'")
    if member_map != "auto":
        return member_map
    return "map" if mode == "none" and jax.default_backend() == "cpu" else "vmap"


def side_by_side(n_members: int, member_map: str) -> int:
    """Members whose images one op processes together: all of them under vmap, one under map."""
    return n_members if member_map == "vmap" else 1


def _over_members(fn, member_map: str):
    """fn(state, *shared) for every member of stacked states -> stacked outputs."""
    if member_map == "vmap":
        return lambda states, *shared: jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))(states, *shared)
    return lambda states, *shared: jax.lax.map(lambda state: fn(state, *shared), states)


@functools.lru_cache(maxsize=64)
def _member_programs(prog: Program, batch_sharding, member_map: str):
    """(epoch_fn, eval_fn) over stacked member states, jitted; `member_map` resolved."""
    train_members = _over_members(
        lambda state, images, labels, epoch, lr_scales: train_epoch(
            prog, state, images, labels, epoch, _unbatched(batch_sharding), lr_scales), member_map)
    eval_members = _over_members(functools.partial(eval_step, prog), member_map)

    def epoch_fn(states, images, labels, epoch, lr_scales):
        states, per_step = train_members(states, images, labels, epoch, lr_scales)
        # Epoch means per member (per_step leaves are [members, steps]).
        return states, {k: jnp.mean(v, axis=1) for k, v in per_step.items()}

    def eval_fn(states, images, labels, key):
        # One padded batch; every eval set shares this one compiled program.
        return eval_members(states, images, jnp.maximum(labels, 0), labels >= 0, key)

    return jax.jit(epoch_fn, donate_argnums=0), jax.jit(eval_fn)


def _unbatched(batch_sharding):
    """The sharding of one member's batch (vmap adds the member axis back)."""
    if batch_sharding is None:
        return None
    return NamedSharding(batch_sharding.mesh, P("devices"))


def init_states(prog: Program, seeds: Sequence[int], learning_rates: Sequence[float] | None = None):
    """Stacked states, member k from PRNGKey(seeds[k]) (and learning_rates[k] if given)."""
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    lrs = jnp.asarray(
        [prog.cfg.optimizer.learning_rate] * len(seeds) if learning_rates is None else learning_rates,
        jnp.float32,
    )
    if lrs.shape != (len(seeds),):
        raise ValueError(f"need one learning rate per seed: {len(seeds)} seeds, {lrs.shape[0]} rates")
    return _init_fn(prog)(keys, lrs)


@functools.lru_cache(maxsize=64)
def _init_fn(prog: Program):
    # Cached per program: a fresh jit of a fresh partial would recompile on every call.
    return jax.jit(jax.vmap(functools.partial(init_state, prog)))


def prepare_train_set(cfg: TrainConfig, images: np.ndarray, labels: np.ndarray, data_seed: int = 0):
    """The training arrays the engine sees: the originals, or for `expand` originals + rotated + noisy."""
    if cfg.model == "cnn" and cfg.augment == "expand":
        return augment.expand_dataset(jax.random.PRNGKey(data_seed), images, labels, cfg.aug)
    return images, labels


# ----------------------------------------------------------------------------------------------
# The loop


def _summarise_eval(out: Mapping[str, jax.Array], classifier: bool) -> dict[str, np.ndarray]:
    out = jax.device_get(out)
    count = np.asarray(out["count"], np.float64)  # exact ratios such as 170/300 in float64
    res = {"loss": np.asarray(out["loss_sum"], np.float64) / count}
    if classifier:
        res["accuracy"] = np.asarray(out["correct"], np.float64) / count
        res["confusion"] = out["confusion"]
        res["predictions"] = out["predictions"]
    else:
        res["noisy_loss"] = np.asarray(out["noisy_loss_sum"], np.float64) / count
    return res


def fit(
    cfg: TrainConfig,
    train: tuple[np.ndarray, np.ndarray],
    eval_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    seeds: Sequence[int],
    *,
    learning_rates: Sequence[float] | None = None,
    init_hook: Callable[[TrainState], TrainState] | None = None,
    checkpoint_dir: str | Path | None = None,
    parallel: str = "auto",
    member_map: str = "auto",
    data_seed: int = 0,
    progress: bool = False,
    desc: str = "",
    should_stop: Callable[[], bool] | None = None,
    on_epoch: Callable[[FitResult], None] | None = None,
) -> FitResult:
    """Train len(seeds) members of `cfg` together for cfg.epochs epochs.

    Args:
      train: (images float32 [N, 28, 28, 1], labels int32 [N]); expanded here if cfg.augment == "expand".
      eval_sets: name -> (images, labels), evaluated after every epoch (e.g. "val", "test").
      init_hook: maps freshly initialised stacked states to the starting ones (e.g. load a
        pretrained encoder). Applied before any checkpoint is restored over them.
      checkpoint_dir: if given, the stacked state and history are saved after every epoch and a
        rerun resumes from the last completed epoch, ending with the same numbers.
      parallel: "none", "seeds" (members split over devices), "data" (each batch split over
        devices, params replicated) or "auto".
      member_map: "vmap", "map" or "auto" (see `resolve_member_map`): how the members share
        the program; the numbers agree up to float32 summation order.
      should_stop: polled between epochs; when it returns True, `Interrupted` is raised after
        the epoch's checkpoint is written.
      on_epoch: called after every trained epoch (before its checkpoint is written) with the
        run so far: the FitResult a run of that many epochs would return, where the learning
        rate up to that epoch does not depend on `cfg.epochs` (see `train.starts_with`): e.g.
        to write the results of shorter runs from one long run.
    """
    t_start = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    mode = resolve_parallel(parallel, len(seeds))
    member_map = resolve_member_map(member_map, mode)
    n_members = padded_members(len(seeds), mode)
    # Padding members (only in "seeds" mode) get fresh seeds; they are trained and discarded.
    all_seeds = seeds + [max(seeds) + 1 + i for i in range(n_members - len(seeds))]
    all_lrs = None
    if learning_rates is not None:
        all_lrs = list(learning_rates) + [learning_rates[0]] * (n_members - len(seeds))

    train_images, train_labels = prepare_train_set(cfg, *train, data_seed=data_seed)
    prog = program(cfg, int(train_images.shape[0]))
    place = make_placement(mode)
    epoch_fn, eval_fn = _member_programs(prog, place.batch_sharding, member_map)

    states = init_states(prog, all_seeds, all_lrs)
    if init_hook is not None:
        # Copy: the epoch program donates the states, which must not delete the hook's arrays.
        states = jax.tree_util.tree_map(jnp.copy, init_hook(states))
    states = place.state(states)
    d_train_images = place.data(jnp.asarray(train_images, jnp.float32))
    d_train_labels = place.data(jnp.asarray(train_labels, jnp.int32))
    d_eval, n_eval = {}, {}
    for name, (imgs, labs) in eval_sets.items():
        n_eval[name] = len(labs)
        # Small sets (quick runs) get one batch of their own size instead of a mostly-padded one.
        batch = min(cfg.eval_batch(side_by_side(n_members, member_map)), len(labs))
        pi, pl = pad_for_eval(np.asarray(imgs, np.float32), np.asarray(labs, np.int32), batch)
        d_eval[name] = (place.data(pi), place.data(pl))
    eval_key = jax.random.PRNGKey(EVAL_NOISE_SEED)

    history: dict[str, list] = {}
    diverged = np.zeros(n_members, bool)
    start_epoch = 0
    if checkpoint_dir is not None and checkpoint.latest_step(checkpoint_dir) is not None:
        states, extra = checkpoint.restore(checkpoint_dir, states)
        start_epoch = int(extra["epoch"])
        history = {k: [list(v) for v in vals] for k, vals in extra["history"].items()}
        diverged = np.asarray(extra["diverged"], bool)

    timing = {"compile_s": 0.0, "train_s": 0.0, "eval_s": 0.0}
    final: dict[str, dict] = {}
    epochs_run = start_epoch
    images_trained = 0  # per member, in this call's epochs

    # What each epoch trains on: one phase, or with a decay augmentation (`train.phase_config`)
    # a second one for the decay epochs, its set, program and compiled epoch built when reached.
    phases: dict[TrainConfig, list] = {cfg: [prog, epoch_fn, d_train_images, d_train_labels, None]}

    def phase(epoch: int) -> list:
        phase_cfg = phase_config(cfg, epoch)
        if phase_cfg not in phases:
            images, labels = prepare_train_set(phase_cfg, *train, data_seed=data_seed)
            phase_prog = program(phase_cfg, int(images.shape[0]))
            phases[phase_cfg] = [
                phase_prog, _member_programs(phase_prog, place.batch_sharding, member_map)[0],
                place.data(jnp.asarray(images, jnp.float32)), place.data(jnp.asarray(labels, jnp.int32)),
                None]
        return phases[phase_cfg]

    def record(name: str, values):
        values = np.asarray(values, np.float64)
        rows = history.setdefault(name, [[] for _ in range(n_members)])
        for k in range(n_members):
            rows[k].append(float(values[k]))

    def run_eval():
        out = {}
        for name, (pi, pl) in d_eval.items():
            sums, preds = None, []
            for b in range(pi.shape[0]):  # a few batches: sums stay on the device, read once
                res = eval_fn(states, pi[b], pl[b], jax.random.fold_in(eval_key, b))
                preds.append(res.pop("predictions", None))
                sums = res if sums is None else jax.tree_util.tree_map(jnp.add, sums, res)
            if preds[0] is not None:
                sums["predictions"] = jnp.concatenate(preds, axis=1)[:, :n_eval[name]]
            out[name] = _summarise_eval(sums, cfg.is_classifier)
        return out

    def result_so_far(copy_states: bool = False) -> FitResult:
        """The real members' (padding dropped) result after `epochs_run` epochs. With
        `copy_states`, the states are copies that the next epoch (which donates its input
        states) cannot delete; history and metrics are always copies."""
        keep = len(seeds)
        t = {**timing, "wall_s": time.perf_counter() - t_start}
        if t["train_s"] > 0 and images_trained > 0:
            # Throughput of the real models only (padding members excluded).
            t["train_images_per_s"] = keep * images_trained / t["train_s"]
        return FitResult(
            cfg=cfg, seeds=seeds,
            states=jax.tree_util.tree_map(lambda x: jnp.copy(x[:keep]) if copy_states else x[:keep],
                                          states),
            history={k: [list(row) for row in v[:keep]] for k, v in history.items()},
            diverged=diverged[:keep].tolist(),
            final={s: {k: np.asarray(v)[:keep] for k, v in res.items()} for s, res in final.items()},
            timing=t, parallel=mode, member_map=member_map, epochs_run=epochs_run)

    bar = _progress(cfg.epochs, start_epoch, progress, desc)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            current = phase(epoch)
            epoch_prog, epoch_program, images, labels, compiled = current
            lr_scales = epoch_lr_scales(epoch_prog, epoch)
            if compiled is None:
                # Compile ahead of time so compile time and steady-state time are separate numbers.
                compiled = current[4] = epoch_program.lower(states, images, labels, epoch, lr_scales).compile()
                timing["compile_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
            states, epoch_metrics = compiled(states, images, labels, epoch, lr_scales)
            epoch_metrics = jax.device_get(epoch_metrics)  # one host read per epoch
            timing["train_s"] += time.perf_counter() - t0
            images_trained += epoch_prog.steps_per_epoch * cfg.batch_size
            t1 = time.perf_counter()
            evals = run_eval()
            timing["eval_s"] += time.perf_counter() - t1

            for name, values in epoch_metrics.items():
                record(f"train_{name}", values)
            for set_name, res in evals.items():
                for name in ("loss", "accuracy", "noisy_loss"):
                    if name in res:
                        record(f"{set_name}_{name}", res[name])
            losses = np.stack([np.asarray(epoch_metrics["loss"])] +
                              [np.asarray(r["loss"]) for r in evals.values()])
            diverged |= ~np.all(np.isfinite(losses), axis=0)
            final = evals
            epochs_run = epoch + 1
            if on_epoch is not None:
                on_epoch(result_so_far(copy_states=True))
            if checkpoint_dir is not None:
                checkpoint.save(checkpoint_dir, epochs_run, states, {
                    "epoch": epochs_run, "history": history, "diverged": diverged.tolist(),
                })
            bar.update(1)
            bar.set_postfix(_postfix(history), refresh=False)
            if diverged.all():
                break  # every member is NaN/inf: nothing left worth computing
            if should_stop is not None and should_stop():
                raise Interrupted(f"stopped after epoch {epochs_run}")
        if not final:
            # Nothing left to train (resumed a finished run, or epochs == 0): evaluate what we have.
            final = run_eval()
    finally:
        bar.close()

    return result_so_far()


def _postfix(history):
    out = {}
    for key in ("train_loss", "val_accuracy", "val_loss"):
        if key in history:
            last = np.asarray([row[-1] for row in history[key]], np.float64)
            last = last[np.isfinite(last)]
            out[key] = f"{last.mean():.4f}" if last.size else "nan"
    return out


def _progress(total, initial, enabled, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc or None,
                unit="epoch", leave=False, dynamic_ncols=True)
