"""`fit`: train N members of one configuration together, epoch by epoch, with per-epoch
evaluation, history, divergence flags and resumable Orbax checkpoints.

A run starts from fresh states (one per seed), from given states (e.g. a pretrained encoder put
into fresh classifiers), or from another run's end (`start`: its final states, epoch, history
and flags), which it continues up to `cfg.epochs`. Continuing is exact: a 5-epoch run continued
to 10 epochs gives the 10-epoch run's numbers bit for bit (tested), as a resumed checkpoint does.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import checkpoint, placement
from fmnist_jax.train import (
    Program,
    TrainConfig,
    TrainState,
    epoch_size,
    eval_step,
    init_state,
    lr_scales,
    pad_for_eval,
    program,
    train_epoch,
)

EVAL_NOISE_SEED = 1234  # fixed corruption of val/test images for the autoencoder's eval loss
_TIMES = ("compile_s", "train_s", "eval_s", "wall_s")


@dataclass
class FitResult:
    """What a run produced. Arrays carry a leading member axis [n_members, ...].

    `timing` (seconds) counts this run from its very start, the runs it continued included;
    `own_wall_s` is this call's share.
    """

    cfg: TrainConfig
    seeds: list[int]
    states: TrainState
    history: dict[str, list]  # name -> [n_members][epochs]
    diverged: list[bool]
    final: dict[
        str, dict[str, np.ndarray]
    ]  # eval set -> {"loss", "accuracy", "confusion", "predictions"}
    timing: dict[str, float] = field(default_factory=dict)
    parallel: str = "none"
    member_map: str = "vmap"
    epochs_run: int = 0


def _over_members(fn, member_map: str):
    """fn(state, *shared) for every member of stacked states -> stacked outputs."""
    if member_map == "vmap":
        return lambda states, *shared: jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))(
            states, *shared
        )
    return lambda states, *shared: jax.lax.map(lambda state: fn(state, *shared), states)


@functools.lru_cache(maxsize=64)
def member_programs(prog: Program, batch_sharding, member_map: str):
    """The jitted (epoch_fn, eval_fn) of a run's stacked members, as `fit` runs them.

    epoch_fn(states, images, labels, epoch, lr_scales) -> (states, per-member epoch means of the
    step metrics, and the epoch's mean learning rate); it donates `states`.
    eval_fn(states, images [B, ...], labels [B] (-1: padding), key) -> sums.
    `member_map` is a resolved one ("vmap" or "map"), `batch_sharding` a placement's.
    """
    train_members = _over_members(
        lambda state, images, labels, epoch, scales: train_epoch(
            prog, state, images, labels, epoch, scales, batch_sharding
        ),
        member_map,
    )
    eval_members = _over_members(functools.partial(eval_step, prog), member_map)

    def epoch_fn(states, images, labels, epoch, scales):
        # The epoch's mean learning rate per member, read to the host with the epoch's metrics.
        learning_rate = states.learning_rate * jnp.mean(scales)
        states, per_step = train_members(states, images, labels, epoch, scales)
        # Epoch means per member (per_step leaves are [members, steps]).
        means = {k: jnp.mean(v, axis=1) for k, v in per_step.items()}
        return states, {**means, "learning_rate": learning_rate}

    def eval_fn(states, images, labels, key):
        # One padded batch; every eval set shares this one compiled program.
        return eval_members(states, images, jnp.maximum(labels, 0), labels >= 0, key)

    return jax.jit(epoch_fn, donate_argnums=0), jax.jit(eval_fn)


def init_states(prog: Program, seeds: Sequence[int], learning_rates: Sequence[float] | None = None):
    """Stacked fresh states, member k from PRNGKey(seeds[k]) (and learning_rates[k] if given).

    Raises:
      ValueError: the number of learning rates is not the number of seeds.
    """
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    lrs = jnp.asarray(
        [prog.cfg.optimizer.learning_rate] * len(seeds)
        if learning_rates is None
        else learning_rates,
        jnp.float32,
    )
    if lrs.shape != (len(seeds),):
        raise ValueError(
            f"need one learning rate per seed: {len(seeds)} seeds, {lrs.shape[0]} rates"
        )
    return _init_fn(prog)(keys, lrs)


@functools.lru_cache(maxsize=64)
def _init_fn(prog: Program):
    # Cached per program: a fresh jit of a fresh partial would recompile on every call.
    return jax.jit(jax.vmap(functools.partial(init_state, prog)))


def _summarise_eval(out: Mapping[str, jax.Array], classifier: bool) -> dict[str, np.ndarray]:
    out = placement.to_host(out)
    count = np.asarray(out["count"], np.float64)  # exact ratios such as 170/300 in float64
    res = {"loss": np.asarray(out["loss_sum"], np.float64) / count}
    if classifier:
        res["accuracy"] = np.asarray(out["correct"], np.float64) / count
        res["confusion"] = out["confusion"]
        res["predictions"] = out["predictions"]
    else:
        res["noisy_loss"] = np.asarray(out["noisy_loss_sum"], np.float64) / count
    return res


def _evaluate(eval_fn, states, eval_sets: Mapping, classifier: bool) -> dict[str, dict]:
    """Every eval set in padded batches; sums stay on the device and are read once per set."""
    key = jax.random.PRNGKey(EVAL_NOISE_SEED)
    out = {}
    for name, (images, labels, n) in eval_sets.items():
        sums, preds = None, []
        for b in range(images.shape[0]):
            res = eval_fn(states, images[b], labels[b], jax.random.fold_in(key, b))
            preds.append(res.pop("predictions", None))
            sums = res if sums is None else jax.tree_util.tree_map(jnp.add, sums, res)
        if preds[0] is not None:
            sums["predictions"] = jnp.concatenate(preds, axis=1)[:, :n]
        out[name] = _summarise_eval(sums, classifier)
    return out


def _pad_members(states, n_members: int):
    """Copies of the states (the epoch program donates its input) with the member axis padded
    to `n_members` by repeating the first member (padding members are discarded)."""

    def pad(x):
        x = jnp.asarray(x)
        extra = n_members - x.shape[0]
        return jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)]) if extra else jnp.copy(x)

    return jax.tree_util.tree_map(pad, states)


def fit(
    cfg: TrainConfig,
    train: tuple[np.ndarray, np.ndarray],
    eval_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    seeds: Sequence[int],
    *,
    learning_rates: Sequence[float] | None = None,
    init: TrainState | None = None,
    start: FitResult | None = None,
    checkpoint_dir: str | Path | None = None,
    parallel: str = "auto",
    member_map: str = "auto",
    progress: bool = False,
    desc: str = "",
    on_epoch: Callable[[dict[str, list]], None] | None = None,
) -> FitResult:
    """Train len(seeds) members of `cfg` together up to epoch `cfg.epochs`.

    Args:
      train: (images float32 [N, 28, 28, 1], labels int32 [N]), the originals (an `expand` run
        trains on their expanded set, 3N images per epoch: `train.epoch_size`).
      eval_sets: name -> (images, labels), evaluated after every epoch (e.g. "val", "test").
      learning_rates: one peak rate per seed instead of the config's (fresh states only).
      init: stacked states of the members to start from at epoch 0 instead of fresh ones.
      start: a finished run to continue: its final states, epoch, history and divergence flags
        (a shorter run of the same configuration, or one whose end this stage builds on).
      checkpoint_dir: if given, the states and history are saved after every epoch and a rerun
        resumes from the last completed epoch, ending with the same numbers (a checkpoint that
        cannot be restored, or was written on other devices or with another `parallel`, is set
        aside with a warning, and the run starts afresh).
      parallel: "none", "seeds" (members split over devices), "data" (each batch split over
        devices, params replicated) or "auto" (see `placement.resolve_parallel`).
      member_map: "vmap", "map" or "auto" (see `placement.resolve_member_map`).
      on_epoch: called after every epoch this call trains, once its values are in the history
        and its checkpoint is saved, with the history (name -> [n_members][epochs so far], the
        real members'; it must not change it): for logs and profiling, which change no number.

    Raises:
      ValueError: no seeds, both `init` and `start`, a batch larger than the training set, or
        a bad `parallel` / `member_map`.
    """
    t_start = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    if init is not None and start is not None:
        raise ValueError(
            "give fit either `init` (states to start from) or `start` (a run to continue)"
        )
    mode = placement.resolve_parallel(parallel, len(seeds))
    member_map = placement.resolve_member_map(member_map, mode)
    n_real, n_members = len(seeds), placement.padded_members(len(seeds), mode)

    train_images, train_labels = train
    prog = program(cfg, epoch_size(cfg, len(train_labels)))
    place = placement.make_placement(mode)
    epoch_fn, eval_fn = member_programs(prog, place.batch_sharding, member_map)

    history: dict[str, list] = {}
    diverged = np.zeros(n_members, bool)
    epochs_run, timing = 0, dict.fromkeys(_TIMES, 0.0)
    if start is not None:
        states, epochs_run = start.states, start.epochs_run
        history = {k: [list(row) for row in v] for k, v in start.history.items()}  # real members
        diverged[:n_real] = start.diverged
        timing.update({k: float(start.timing.get(k, 0.0)) for k in _TIMES})
    elif init is not None:
        states = init
    else:
        states = init_states(prog, seeds, learning_rates)
    states = place.state(_pad_members(states, n_members))
    # Where the members live, saved with every checkpoint: one continues only where it was written.
    devices = jax.devices()
    placed = {
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "parallel": mode,
        "member_map": member_map,
        "members": n_members,
    }
    resumed = checkpoint_dir is not None and checkpoint.resume(  # None: nothing to continue
        checkpoint_dir, states, epochs_run, ("epoch", "history", "diverged"), placed
    )
    if resumed:
        states, extra = resumed
        epochs_run = int(extra["epoch"])
        history = {k: [list(v) for v in vals] for k, vals in extra["history"].items()}
        diverged = np.asarray(extra["diverged"], bool)

    d_train = (
        place.data(jnp.asarray(train_images, jnp.float32)),
        place.data(jnp.asarray(train_labels, jnp.int32)),
    )
    d_eval = {}
    for name, (imgs, labs) in eval_sets.items():
        # Small sets (quick runs) get one batch of their own size instead of a mostly-padded one.
        batch = min(cfg.eval_batch(placement.side_by_side(n_members, member_map)), len(labs))
        pi, pl = pad_for_eval(np.asarray(imgs, np.float32), np.asarray(labs, np.int32), batch)
        d_eval[name] = (place.data(pi), place.data(pl), len(labs))

    final, compiled, own = {}, None, {"train_s": 0.0, "images": 0}
    bar = _progress(cfg.epochs, epochs_run, progress, desc)
    try:
        for epoch in range(epochs_run, cfg.epochs):
            t0 = time.perf_counter()
            scales = lr_scales(cfg, prog.steps_per_epoch, epoch)
            if compiled is None:
                # Compiled ahead of time so that compile time and steady-state time are separate.
                compiled = epoch_fn.lower(states, *d_train, epoch, scales).compile()
                timing["compile_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
            states, epoch_metrics = compiled(states, *d_train, epoch, scales)
            epoch_metrics = placement.to_host(epoch_metrics)  # one host read per epoch
            own["train_s"] += time.perf_counter() - t0
            own["images"] += prog.steps_per_epoch * cfg.batch_size
            t1 = time.perf_counter()
            final = _evaluate(eval_fn, states, d_eval, cfg.is_classifier)
            timing["eval_s"] += time.perf_counter() - t1

            values = {f"train_{k}": v for k, v in epoch_metrics.items()}
            values.update(
                {
                    f"{s}_{k}": r[k]
                    for s, r in final.items()
                    for k in ("loss", "accuracy", "noisy_loss")
                    if k in r
                }
            )
            for name, v in values.items():  # the real members' (padding members are dropped)
                # A quantity the history lacks (resumed from an older checkpoint): NaN before.
                rows = history.setdefault(name, [[math.nan] * epoch for _ in range(n_real)])
                for k in range(n_real):
                    rows[k].append(float(np.asarray(v, np.float64)[k]))
            # Train and validation only: test data never takes part in a decision.
            losses = np.stack(
                [
                    np.asarray(r["loss"])
                    for name, r in [("train", epoch_metrics), *final.items()]
                    if name != "test"
                ]
            )
            diverged |= ~np.all(np.isfinite(losses), axis=0)
            epochs_run = epoch + 1
            if checkpoint_dir is not None:
                checkpoint.save(
                    checkpoint_dir,
                    epochs_run,
                    states,
                    {
                        "epoch": epochs_run,
                        "history": history,
                        "diverged": diverged.tolist(),
                        "placement": placed,
                    },
                )
            if on_epoch is not None:
                on_epoch(history)
            bar.set_postfix(_postfix(history), refresh=False)  # shown by the update: this epoch's
            bar.update(1)
            if diverged[:n_real].all():
                break  # every member is NaN/inf: nothing left worth computing
        if not final:
            # Nothing left to train (a finished run resumed, or epochs == 0): evaluate what we have.
            final = _evaluate(eval_fn, states, d_eval, cfg.is_classifier)
    finally:
        bar.close()

    own_wall = time.perf_counter() - t_start
    timing["train_s"] += own["train_s"]
    timing["wall_s"] += own_wall
    timing["own_wall_s"] = own_wall
    if own["train_s"] > 0:
        # Throughput of this call's epochs, the real members only (padding excluded).
        timing["train_images_per_s"] = n_real * own["images"] / own["train_s"]
    return FitResult(
        cfg=cfg,
        seeds=seeds,
        states=placement.first_members(states, n_real),
        history={k: [list(row) for row in v] for k, v in history.items()},
        diverged=diverged[:n_real].tolist(),
        final={s: {k: np.asarray(v)[:n_real] for k, v in res.items()} for s, res in final.items()},
        timing=timing,
        parallel=mode,
        member_map=member_map,
        epochs_run=epochs_run,
    )


def _postfix(history):
    out = {}
    for key in ("train_loss", "val_accuracy", "val_loss"):
        if key in history:
            last = np.asarray([row[-1] for row in history[key]], np.float64)
            last = last[np.isfinite(last)]
            out[key] = f"{last.mean():.4f}" if last.size else "nan"
    return out


def _progress(total, initial, enabled, desc):
    if not enabled:  # needs no tqdm (an accelerator machine may have only JAX's own packages)
        return SimpleNamespace(
            update=lambda n: None, set_postfix=lambda *a, **k: None, close=lambda: None
        )
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc or None,
        unit="epoch",
        leave=False,
        dynamic_ncols=True,
    )
