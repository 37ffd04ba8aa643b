"""The measurements made in the main process. Each group returns rows (dicts, one per program).

Row fields: `name`, `group`, `images_per_s` (median over repetitions; for N members, the
images of all N per second), its min/max and relative `spread`, `device`, `compile_s` where a
program was compiled for it, `cpu_per_wall` and `other_processes_cores` (see timing.py), and
`baseline`: the row of the same run it is compared with (the table's ratio column).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax import augment as augment_lib
from fmnist_jax.models import resolve_conv_impl
from fmnist_jax.train import (
    TrainConfig, epoch_batches, init_state, program, train_epoch, train_step,
)

from benchmarks.timing import Measurement, device_label, measure, timed
from benchmarks.workload import Compiled, Workload, eval_program, train_epoch_program

CNN = TrainConfig(model="cnn", batch_size=100, augment="online")  # the engine's default path
AE = TrainConfig(model="autoencoder", batch_size=100, augment="none")  # as q2 pretrains


@dataclass(frozen=True)
class Plan:
    """How much to measure: `quick` is a smoke run, the full one gives the reported numbers."""

    quick: bool
    n_train: int  # images per epoch for cnn_train, ae_train, scan vs loop, the step split
    n_small: int  # images per member-epoch for the N-seeds and device-scaling rows
    reps: int
    reps_small: int
    warmup: int
    diagnostics: bool  # the step split and the un-vmapped scan: explain, not required
    members: tuple[int, ...]  # N for "N seeds vmapped"
    device_members: tuple[int, ...]  # N for the device-scaling workers
    data_parallel: bool

    @classmethod
    def make(cls, quick: bool) -> "Plan":
        if quick:
            return cls(True, n_train=500, n_small=500, reps=1, reps_small=1, warmup=1,
                       diagnostics=False, members=(1, 2), device_members=(1,), data_parallel=False)
        return cls(False, n_train=27_000, n_small=2_700, reps=5, reps_small=3, warmup=1,
                   diagnostics=True, members=(1, 2, 4, 8), device_members=(1, 2, 4),
                   data_parallel=True)


def make_row(name: str, group: str, m: Measurement, images_per_rep: int, *,
             baseline: str | None = None, n_devices: int = 1, **extra) -> dict[str, Any]:
    row = {"name": name, "group": group, "device": device_label(n_devices),
           **m.summary(images_per_rep)}
    if baseline is not None:
        row["baseline"] = baseline
    row.update(extra)
    return row


def program_row(name: str, group: str, c: Compiled, plan: Plan, reps: int, *,
                batch_size: int, **extra) -> dict[str, Any]:
    m = measure(c.run, reps=reps, warmup=plan.warmup)
    return make_row(name, group, m, c.images_per_call, n_devices=c.n_devices,
                    compile_s=c.compile_s, n_members=c.n_members, parallel=c.parallel,
                    batch_size=batch_size, **extra)


def _subset(wl: Workload, n: int) -> tuple[np.ndarray, np.ndarray]:
    return wl.train_images[:n], wl.train_labels[:n]


# ---------------------------------------------------------------------------------------------
# Training and inference of both models


def cnn_train(plan: Plan, wl: Workload) -> list[dict]:
    c = train_epoch_program(CNN, *_subset(wl, plan.n_train))
    return [program_row(
        "cnn_train", "train", c, plan, plan.reps, batch_size=CNN.batch_size,
        note="fit's path: one jitted, vmapped (1 member) lax.scan epoch, online augmentation, "
             "device-side shuffle; compile_s = lower + compile of that epoch program")]


def ae_train(plan: Plan, wl: Workload) -> list[dict]:
    c = train_epoch_program(AE, *_subset(wl, plan.n_train))
    return [program_row(
        "ae_train", "train", c, plan, plan.reps, batch_size=AE.batch_size,
        note=f"denoising autoencoder {AE.widths}, input noise sigma {AE.denoise_std}")]


def _infer(name: str, cfg: TrainConfig, plan: Plan, wl: Workload) -> list[dict]:
    c = eval_program(cfg, plan.n_train, wl.test_images, wl.test_labels)
    return [program_row(
        name, "infer", c, plan, plan.reps, batch_size=cfg.eval_batch_size,
        note="fit's evaluation: jitted eval_step per padded, masked test batch, sums on the "
             "device (loss, accuracy, confusion / reconstruction error)")]


def cnn_infer(plan: Plan, wl: Workload) -> list[dict]:
    return _infer("cnn_infer", CNN, plan, wl)


def ae_infer(plan: Plan, wl: Workload) -> list[dict]:
    return _infer("ae_infer", AE, plan, wl)


# ---------------------------------------------------------------------------------------------
# The epoch as one scan vs a Python loop of jitted steps


def _single_state(prog):
    return jax.jit(functools.partial(init_state, prog))(jax.random.PRNGKey(0))


def scan_vs_loop(plan: Plan, wl: Workload) -> list[dict]:
    """Same config, data and number of steps as cnn_train, as a host loop of jitted steps (and,
    with diagnostics, as the scan jitted on one unstacked state, to isolate what vmap(1) costs)."""
    images, labels = _subset(wl, plan.n_train)
    prog = program(CNN, int(images.shape[0]))
    steps, batch = prog.steps_per_epoch, CNN.batch_size
    rows = [_scan_novmap_row(plan, prog, images, labels)] if plan.diagnostics else []

    # The classic loop: host-side permutation, host numpy batches, one jitted step each.
    step_fn = jax.jit(functools.partial(train_step, prog), donate_argnums=0)
    loop = {"state": _single_state(prog), "rng": np.random.default_rng(0)}
    _, step_compile_s = timed(
        lambda: step_fn.lower(loop["state"], images[:batch], labels[:batch]).compile())

    def host_batches():
        order = loop["rng"].permutation(images.shape[0])[:steps * batch].reshape(steps, batch)
        for idx in order:
            yield images[idx], labels[idx]

    def run_loop():
        metrics = None
        for batch_images, batch_labels in host_batches():
            loop["state"], metrics = step_fn(loop["state"], batch_images, batch_labels)
        return loop["state"], metrics  # no per-step sync: dispatch runs ahead asynchronously

    loop_m = measure(run_loop, reps=plan.reps_small, warmup=plan.warmup)
    host_m = measure(lambda: sum(1 for _ in host_batches()), reps=plan.reps_small, warmup=0)
    rows.append(make_row(
        "cnn_train_loop", "scan_vs_loop", loop_m, steps * batch, baseline="cnn_train",
        compile_s=step_compile_s, batch_size=batch,
        host_batching_ms_per_step=1e3 * host_m.median_s / steps,
        note="Python loop over jitted train_step (donated state), batches gathered in numpy "
             "on the host and copied in per step; compile_s is one step's"))
    return rows


def _scan_novmap_row(plan: Plan, prog, images, labels) -> dict:
    epoch_fn = jax.jit(functools.partial(train_epoch, prog), donate_argnums=0)
    d_images, d_labels = jnp.asarray(images), jnp.asarray(labels)
    box = {"state": _single_state(prog), "epoch": 0}
    compiled, compile_s = timed(
        lambda: epoch_fn.lower(box["state"], d_images, d_labels, 0).compile())

    def run():
        box["state"], metrics = compiled(box["state"], d_images, d_labels, box["epoch"])
        box["epoch"] += 1
        return box["state"], metrics

    m = measure(run, reps=plan.reps_small, warmup=plan.warmup)
    batch = prog.cfg.batch_size
    return make_row("cnn_train_scan_novmap", "scan_vs_loop", m, prog.steps_per_epoch * batch,
                    baseline="cnn_train", compile_s=compile_s, batch_size=batch,
                    note="the scan epoch jitted directly on one unstacked state (no vmap)")


def loop_note(rows: dict[str, dict]) -> str | None:
    """Why the scan or the loop wins, in this run's numbers."""
    if not {"cnn_train", "cnn_train_loop"} <= rows.keys():
        return None
    names = [k for k in ("cnn_train", "cnn_train_scan_novmap", "cnn_train_loop") if k in rows]
    steps = {k: rows[k]["images_per_rep"] / CNN.batch_size for k in names}
    wall = {k: 1e3 * rows[k]["seconds_per_rep"] / steps[k] for k in names}
    cpu = {k: 1e3 * rows[k]["cpu_seconds_per_rep"] / steps[k] for k in names}
    ratio = rows["cnn_train"]["images_per_s"] / rows["cnn_train_loop"]["images_per_s"]
    per_step = ", ".join(f"{k} {wall[k]:.2f} ms wall / {cpu[k]:.2f} ms CPU" for k in names)
    host = rows["cnn_train_loop"]["host_batching_ms_per_step"]
    text = (f"{'the scan' if ratio >= 1 else 'the loop'} wins ({ratio:.2f}x). Per step: "
            f"{per_step}; the loop's host-side batch gathering is {host:.3f} ms of it. ")
    extra_cpu = cpu["cnn_train_loop"] - cpu["cnn_train"]
    if extra_cpu > 10 * host + 0.5:
        text += (f"The loop spends {extra_cpu:.1f} ms more CPU per step than the scan, far more "
                 "than its host work (gather, copy, dispatch), so the standalone compiled step is "
                 "itself costlier than the same step as a scan body")
        if rows["cnn_train"]["device"].startswith("cpu"):
            text += (" (on XLA:CPU we traced this to the concurrency-optimized scheduler, which "
                     "acts on top-level programs: with XLA_FLAGS=--xla_cpu_enable_concurrency_"
                     "optimized_scheduler=false the loop's step costs what the scan's does)")
        return text + "."
    return text + (
        "Per step the loop pays a Python dispatch, a host gather and a host->device copy, which "
        "asynchronous dispatch overlaps with compute; the scan pays none of it, in one dispatch "
        "per epoch with the data already on the device.")


# ---------------------------------------------------------------------------------------------
# N seeds in one vmapped program vs N sequential runs


def seeds(plan: Plan, wl: Workload) -> list[dict]:
    images, labels = _subset(wl, plan.n_small)
    rows = []
    for n in plan.members:
        c = train_epoch_program(CNN, images, labels, n_members=n)
        note = (f"{n} members vmapped in one program on one device" if n > 1 else
                "1 member; N sequential single runs run this same program N times, so their "
                "total throughput is this row's (compile excluded, paid once)")
        rows.append(program_row(f"cnn_seeds_vmap_N{n}", "seeds", c, plan, plan.reps_small,
                                batch_size=CNN.batch_size, baseline="cnn_seeds_vmap_N1", note=note))
    return rows


# ---------------------------------------------------------------------------------------------
# Where a training step's time goes: augmentation, forward, backward + update


def _split_programs(prog):
    """Jitted (state, images, labels) -> scalar epochs doing only one part of the step."""
    cfg = prog.cfg

    def batches(state, images):
        return epoch_batches(prog, state, 0, images.shape[0])

    @jax.jit
    def augment_only(state, images, labels):
        del labels
        def body(total, xs):
            i, idx = xs
            out = augment_lib.augment_batch(jax.random.fold_in(state.key, i), images[idx], cfg.aug)
            return total + jnp.sum(out), None
        idx = batches(state, images)
        return jax.lax.scan(body, jnp.float32(0), (jnp.arange(idx.shape[0]), idx))[0]

    @jax.jit
    def forward_only(state, images, labels):
        def body(total, idx):
            logits, _ = prog.model.apply(
                {"params": state.params, "batch_stats": state.batch_stats}, images[idx],
                train=True, rngs={"dropout": state.key}, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()
            return total + loss, None
        return jax.lax.scan(body, jnp.float32(0), batches(state, images))[0]

    return augment_only, forward_only


def step_split(plan: Plan, wl: Workload) -> list[dict]:
    """Train without augmentation, with the other conv implementation, augmentation alone and the
    forward pass alone, all on cnn_train's epoch."""
    images, labels = _subset(wl, plan.n_train)
    rows = []
    c = train_epoch_program(CNN.replace(augment="none"), images, labels)
    rows.append(program_row("cnn_train_noaug", "split", c, plan, plan.reps_small,
                            batch_size=CNN.batch_size, baseline="cnn_train",
                            note="cnn_train with augment='none'"))
    other = "xla" if resolve_conv_impl("auto") == "matmul" else "matmul"
    # Possibly ~10x slower (XLA's conv on CPU): a short epoch, timed once.
    c = train_epoch_program(CNN.replace(conv_impl=other), *_subset(wl, plan.n_small))
    rows.append(program_row(f"cnn_train_conv_{other}", "split", c, plan, 1,
                            batch_size=CNN.batch_size, baseline="cnn_train",
                            note=f"cnn_train with conv_impl='{other}' instead of the engine's "
                                 f"choice for this backend ('{resolve_conv_impl('auto')}'), "
                                 f"{plan.n_small}-image epoch"))
    prog = program(CNN, int(images.shape[0]))
    state = _single_state(prog)
    d_images, d_labels = jnp.asarray(images), jnp.asarray(labels)
    augment_only, forward_only = _split_programs(prog)
    used = prog.steps_per_epoch * CNN.batch_size
    for name, fn, note in (
        ("cnn_split_augment", augment_only, "online augmentation alone (rotate + noise), scanned"),
        ("cnn_split_forward", forward_only, "forward pass in train mode + loss alone, scanned"),
    ):
        compiled, compile_s = timed(lambda: fn.lower(state, d_images, d_labels).compile())
        m = measure(lambda: compiled(state, d_images, d_labels), reps=plan.reps_small,
                    warmup=plan.warmup)
        rows.append(make_row(name, "split", m, used, baseline="cnn_train", compile_s=compile_s,
                             batch_size=CNN.batch_size, note=note))
    return rows


def split_shares(rows: dict[str, dict]) -> dict[str, float]:
    """Fractions of cnn_train's step time: augment, forward, and the rest (backward + update)."""
    need = {"cnn_train", "cnn_split_augment", "cnn_split_forward"}
    if not need <= rows.keys():
        return {}
    t = {k: 1.0 / rows[k]["images_per_s"] for k in need}
    shares = {
        "step_share_augment": t["cnn_split_augment"] / t["cnn_train"],
        "step_share_forward": t["cnn_split_forward"] / t["cnn_train"],
    }
    shares["step_share_backward_and_update"] = 1.0 - sum(shares.values())
    if "cnn_train_noaug" in rows:
        shares["step_share_augment_by_difference"] = (
            1.0 - rows["cnn_train"]["images_per_s"] / rows["cnn_train_noaug"]["images_per_s"])
    return shares
