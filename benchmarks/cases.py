"""The measurements made in the main process. Each group returns rows (dicts, one per program).

Row fields: `name`, `group`, `images_per_s` (median over repetitions; for N members, the
images of all N per second), its min/max and relative `spread`, `device`, `compile_s` where a
program was compiled for it, `cpu_per_wall`, `images_per_cpu_s` and `other_processes_cores`
(see timing.py), and `baseline`: the row of the same run it is compared with (the table's ratio).

A row and its baseline are measured in one group, in interleaved rounds: the shared VMs these
numbers come from drift in speed by tens of percent over minutes, invisibly from inside.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
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

from benchmarks.timing import Measurement, device_label, measure, measure_interleaved, timed
from benchmarks.workload import (
    Compiled, Workload, eval_program, resolve_member_map, side_by_side, train_epoch_program,
)

CNN = TrainConfig(model="cnn", batch_size=100, augment="online")  # the engine's default path
AE = TrainConfig(model="autoencoder", batch_size=100, augment="none")  # as q2 pretrains


@dataclass(frozen=True)
class Plan:
    """How much to measure: `quick` is a smoke run, the full one gives the reported numbers."""

    quick: bool
    n_train: int  # images per epoch: cnn_train, ae_train, scan vs loop
    n_small: int  # images per member-epoch: N seeds, device scaling, the step split
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


@dataclass
class Case:
    """One program to time and the row fields to report with it."""

    name: str
    program: Compiled
    fields: dict[str, Any] = field(default_factory=dict)  # baseline, note, batch_size, ...


def make_row(name: str, group: str, m: Measurement, images_per_rep: int, *,
             n_devices: int = 1, **fields) -> dict[str, Any]:
    return {"name": name, "group": group, "device": device_label(n_devices),
            **m.summary(images_per_rep), **fields}


def measure_cases(group: str, cases: list[Case], plan: Plan, reps: int) -> list[dict]:
    """Time the cases in interleaved rounds and make their rows."""
    ms = measure_interleaved({c.name: c.program.run for c in cases}, reps=reps,
                             warmup=plan.warmup)
    rounds = "+".join(c.name for c in cases)  # rows with the same `rounds` were timed together
    return [make_row(c.name, group, ms[c.name], c.program.images_per_call,
                     n_devices=c.program.n_devices, compile_s=c.program.compile_s,
                     n_members=c.program.n_members, parallel=c.program.parallel, rounds=rounds,
                     **c.fields)
            for c in cases]


def _subset(wl: Workload, n: int) -> tuple[np.ndarray, np.ndarray]:
    return wl.train_images[:n], wl.train_labels[:n]


# ---------------------------------------------------------------------------------------------
# Training and inference of both models


def cnn_train(plan: Plan, wl: Workload) -> list[dict]:
    c = train_epoch_program(CNN, *_subset(wl, plan.n_train))
    return measure_cases("train", [Case("cnn_train", c, {
        "batch_size": CNN.batch_size,
        "note": "fit's path: one jitted lax.scan epoch over the members (1 here; lax.map on the "
                "CPU, vmap elsewhere), online augmentation, device-side shuffle; compile_s = lower "
                "+ compile of that epoch program"})],
        plan, plan.reps)


def ae_train(plan: Plan, wl: Workload) -> list[dict]:
    c = train_epoch_program(AE, *_subset(wl, plan.n_train))
    return measure_cases("train", [Case("ae_train", c, {
        "batch_size": AE.batch_size,
        "note": f"denoising autoencoder {AE.widths}, input noise sigma {AE.denoise_std}"})],
        plan, plan.reps)


INFER_NOTE = ("fit's evaluation: its jitted eval program over the members per padded, masked test batch, "
              "sums on the device (loss, accuracy, confusion / reconstruction error)")


def _infer(name: str, cfg: TrainConfig, plan: Plan, wl: Workload) -> list[dict]:
    c = eval_program(cfg, plan.n_train, wl.test_images, wl.test_labels)
    return measure_cases("infer", [Case(name, c, {
        "batch_size": cfg.eval_batch(1), "note": INFER_NOTE})], plan, plan.reps)


def cnn_infer(plan: Plan, wl: Workload) -> list[dict]:
    """One member, and the study's 3 members: fit's way (member map and batch automatic), and
    vmapped with the automatic batch and with a batch of 1000 (on the CPU the automatic batch
    keeps the images one op sees small: see TrainConfig.eval_batch and fit.resolve_member_map)."""
    rows = _infer("cnn_infer", CNN, plan, wl)
    if plan.quick:
        return rows
    n, base = 3, "cnn_infer_3members_vmap_batch1000"
    fixed = CNN.replace(eval_batch_size=1000)
    auto_map = resolve_member_map("auto", "none")

    def case(name, cfg, member_map, note):
        batch = cfg.eval_batch(side_by_side(n, member_map))
        return Case(name, eval_program(cfg, plan.n_train, wl.test_images, wl.test_labels,
                                       n_members=n, member_map=member_map),
                    {"batch_size": batch, "baseline": base, "note": f"{n} members, {note}, eval batch {batch}"})

    cases = [case(base, fixed, "vmap", "vmapped"),
             case("cnn_infer_3members_vmap", CNN, "vmap", "vmapped"),
             case("cnn_infer_3members", CNN, auto_map, f"fit's way ({auto_map})")]
    return rows + measure_cases("infer_members", cases, plan, plan.reps_small)


def ae_infer(plan: Plan, wl: Workload) -> list[dict]:
    return _infer("ae_infer", AE, plan, wl)


# ---------------------------------------------------------------------------------------------
# The epoch as one scan vs a Python loop of jitted steps


def _single_state(prog):
    return jax.jit(functools.partial(init_state, prog))(jax.random.PRNGKey(0))


def _scan_novmap_program(prog, images, labels) -> Compiled:
    """The scan epoch jitted directly on one unstacked state."""
    epoch_fn = jax.jit(functools.partial(train_epoch, prog), donate_argnums=0)
    d_images, d_labels = jnp.asarray(images), jnp.asarray(labels)
    box = {"state": _single_state(prog), "epoch": 0}
    compiled, compile_s = timed(
        lambda: epoch_fn.lower(box["state"], d_images, d_labels, 0).compile())

    def run():
        box["state"], metrics = compiled(box["state"], d_images, d_labels, box["epoch"])
        box["epoch"] += 1
        return box["state"], metrics

    return Compiled(run, compile_s, prog.steps_per_epoch * prog.cfg.batch_size, "none", 1)


def _loop_program(prog, images, labels) -> tuple[Compiled, float]:
    """The classic loop: host-side permutation, host numpy batches, one jitted step each.
    -> (program, host-side batching seconds per step)."""
    steps, batch = prog.steps_per_epoch, prog.cfg.batch_size
    step_fn = jax.jit(functools.partial(train_step, prog), donate_argnums=0)
    box = {"state": _single_state(prog), "rng": np.random.default_rng(0)}
    _, compile_s = timed(
        lambda: step_fn.lower(box["state"], images[:batch], labels[:batch]).compile())

    def host_batches():
        order = box["rng"].permutation(images.shape[0])[:steps * batch].reshape(steps, batch)
        for idx in order:
            yield images[idx], labels[idx]

    def run():
        metrics = None
        for batch_images, batch_labels in host_batches():
            box["state"], metrics = step_fn(box["state"], batch_images, batch_labels)
        return box["state"], metrics  # no per-step sync: dispatch runs ahead asynchronously

    host = measure(lambda: sum(1 for _ in host_batches()), reps=3, warmup=0)
    return Compiled(run, compile_s, steps * batch, "none", 1), host.median_s / steps


def scan_vs_loop(plan: Plan, wl: Workload) -> list[dict]:
    """fit's scan epoch vs a host loop of jitted steps: same config, data and number of steps as
    cnn_train (with diagnostics, also the scan on one unstacked state: what vmap(1) costs)."""
    images, labels = _subset(wl, plan.n_train)
    prog = program(CNN, int(images.shape[0]))
    loop, host_s = _loop_program(prog, images, labels)
    cases = [Case("cnn_train_scan", train_epoch_program(CNN, images, labels), {
        "batch_size": CNN.batch_size, "baseline": "cnn_train_scan",
        "note": "cnn_train's program again, timed in rounds with the loop"})]
    if plan.diagnostics:
        cases.append(Case("cnn_train_scan_novmap", _scan_novmap_program(prog, images, labels), {
            "batch_size": CNN.batch_size, "baseline": "cnn_train_scan",
            "note": "the scan epoch jitted directly on one unstacked state (no vmap)"}))
    cases.append(Case("cnn_train_loop", loop, {
        "batch_size": CNN.batch_size, "baseline": "cnn_train_scan",
        "host_batching_ms_per_step": 1e3 * host_s,
        "note": "Python loop over jitted train_step (donated state), batches gathered in numpy "
                "on the host and copied in per step; compile_s is one step's"}))
    return measure_cases("scan_vs_loop", cases, plan, plan.reps_small)


def loop_note(rows: dict[str, dict]) -> str | None:
    """Why the scan or the loop wins, in this run's numbers."""
    if not {"cnn_train_scan", "cnn_train_loop"} <= rows.keys():
        return None
    names = [k for k in ("cnn_train_scan", "cnn_train_scan_novmap", "cnn_train_loop") if k in rows]
    steps = {k: rows[k]["images_per_rep"] / CNN.batch_size for k in names}
    wall = {k: 1e3 * rows[k]["seconds_per_rep"] / steps[k] for k in names}
    cpu = {k: 1e3 * rows[k]["cpu_seconds_per_rep"] / steps[k] for k in names}
    ratio = rows["cnn_train_scan"]["images_per_s"] / rows["cnn_train_loop"]["images_per_s"]
    per_step = ", ".join(f"{k} {wall[k]:.2f} ms wall / {cpu[k]:.2f} ms CPU" for k in names)
    host = rows["cnn_train_loop"]["host_batching_ms_per_step"]
    text = (f"{'the scan' if ratio >= 1 else 'the loop'} wins ({ratio:.2f}x). Per step: "
            f"{per_step}; the loop's host-side batch gathering is {host:.3f} ms of it. ")
    extra_cpu = cpu["cnn_train_loop"] - cpu["cnn_train_scan"]
    if extra_cpu > 10 * host + 0.5:
        text += (f"The loop spends {extra_cpu:.1f} ms more CPU per step than the scan, far more "
                 "than its host work (gather, copy, dispatch), so the standalone compiled step is "
                 "itself costlier than the same step as a scan body")
        if rows["cnn_train_scan"]["device"].startswith("cpu"):
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
    cases = []
    for n in plan.members:
        note = (f"{n} members vmapped in one program on one device" if n > 1 else
                "1 member; N sequential single runs run this same program N times, so their "
                "total throughput is this row's (compile excluded, paid once)")
        c = train_epoch_program(CNN, images, labels, n_members=n, member_map="vmap")
        cases.append(Case(f"cnn_seeds_vmap_N{n}", c, {
            "batch_size": CNN.batch_size, "baseline": "cnn_seeds_vmap_N1", "note": note}))
        if n > 1:
            c = train_epoch_program(CNN, images, labels, n_members=n, member_map="map")
            cases.append(Case(f"cnn_seeds_map_N{n}", c, {
                "batch_size": CNN.batch_size, "baseline": "cnn_seeds_vmap_N1",
                "note": f"{n} members one after another (lax.map) in one program on one device"}))
    return measure_cases("seeds", cases, plan, plan.reps_small)


# ---------------------------------------------------------------------------------------------
# Where a training step's time goes: augmentation, forward, backward + update


def _part_programs(prog, images, labels) -> dict[str, Compiled]:
    """Epochs doing one part of the step only: the online augmentation, the forward pass."""
    cfg = prog.cfg
    state = _single_state(prog)
    d_images, d_labels = jnp.asarray(images), jnp.asarray(labels)

    def batches(state, images):
        return epoch_batches(prog, state, 0, images.shape[0])

    def augment_only(state, images, labels):
        del labels

        def body(total, xs):
            i, idx = xs
            out = augment_lib.augment_batch(jax.random.fold_in(state.key, i), images[idx], cfg.aug)
            return total + jnp.sum(out), None
        idx = batches(state, images)
        return jax.lax.scan(body, jnp.float32(0), (jnp.arange(idx.shape[0]), idx))[0]

    def forward_only(state, images, labels):
        def body(total, idx):
            logits, _ = prog.model.apply(
                {"params": state.params, "batch_stats": state.batch_stats}, images[idx],
                train=True, rngs={"dropout": state.key}, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()
            return total + loss, None
        return jax.lax.scan(body, jnp.float32(0), batches(state, images))[0]

    out = {}
    for name, fn in (("augment", augment_only), ("forward", forward_only)):
        compiled, compile_s = timed(lambda: jax.jit(fn).lower(state, d_images, d_labels).compile())
        out[name] = Compiled(functools.partial(compiled, state, d_images, d_labels), compile_s,
                             prog.steps_per_epoch * cfg.batch_size, "none", 1)
    return out


def step_split(plan: Plan, wl: Workload) -> list[dict]:
    """fit's CNN epoch beside: no augmentation, the other conv implementation, the augmentation
    alone and the forward pass alone (n_small-image epochs)."""
    images, labels = _subset(wl, plan.n_small)
    prog = program(CNN, int(images.shape[0]))
    auto = resolve_conv_impl("auto")
    other = "xla" if auto == "matmul" else "matmul"
    parts = _part_programs(prog, images, labels)
    fields = {"batch_size": CNN.batch_size, "baseline": "cnn_split_train"}
    cases = [
        Case("cnn_split_train", train_epoch_program(CNN, images, labels),
             {**fields, "note": "cnn_train's program on this group's shorter epoch"}),
        Case("cnn_train_noaug", train_epoch_program(CNN.replace(augment="none"), images, labels),
             {**fields, "note": "augment='none'"}),
        Case(f"cnn_train_conv_{other}",
             train_epoch_program(CNN.replace(conv_impl=other), images, labels),
             {**fields, "note": f"conv_impl='{other}', not the engine's choice here ('{auto}')"}),
        Case("cnn_split_augment", parts["augment"],
             {**fields, "note": "online augmentation alone (rotate + noise), scanned"}),
        Case("cnn_split_forward", parts["forward"],
             {**fields, "note": "forward pass in train mode + loss alone, scanned"}),
    ]
    return measure_cases("split", cases, plan, plan.reps_small)


def split_shares(rows: dict[str, dict]) -> dict[str, float]:
    """Fractions of the training step's time: augment, forward, the rest (backward + update)."""
    need = {"cnn_split_train", "cnn_split_augment", "cnn_split_forward"}
    if not need <= rows.keys():
        return {}
    # Each part's time per image over the whole step's: the inverse of its throughput ratio.
    shares = {
        "step_share_augment": 1.0 / rows["cnn_split_augment"]["ratio"],
        "step_share_forward": 1.0 / rows["cnn_split_forward"]["ratio"],
    }
    shares["step_share_backward_and_update"] = 1.0 - sum(shares.values())
    if "cnn_train_noaug" in rows:
        shares["step_share_augment_by_difference"] = 1.0 - 1.0 / rows["cnn_train_noaug"]["ratio"]
    return shares
