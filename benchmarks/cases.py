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
import statistics
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from benchmarks import bound
from benchmarks.timing import device_label, host_cpu_count, measure_interleaved, timed
from benchmarks.workload import Compiled, Workload, eval_program, train_epoch_program
from fmnist_jax.placement import resolve_member_map
from fmnist_jax.train import TrainConfig, init_state, program, train_step

CNN = TrainConfig(model="cnn", batch_size=100, augment="online")  # the engine's default path
AE = TrainConfig(model="autoencoder", batch_size=100, augment="none")  # as q2 pretrains
FLOPS = functools.cache(bound.matmul_flops)  # per image, {"train", "infer"}: see bound.py


@dataclass(frozen=True)
class Plan:
    """How much to measure: `quick` is a smoke run, the full one gives the reported numbers."""

    quick: bool
    n_train: int  # images per epoch: cnn_train, ae_train, scan vs loop
    n_small: int  # images per member-epoch: N seeds, device scaling
    reps: int
    reps_small: int
    members: tuple[int, ...]  # N for "N seeds vmapped"
    device_members: tuple[int, ...]  # N for the device-scaling workers
    data_parallel: bool

    @classmethod
    def make(cls, quick: bool) -> Plan:
        """What a quick (smoke) or a full run measures."""
        if quick:
            return cls(True, 500, 500, 1, 1, (1, 2), (1,), data_parallel=False)
        return cls(False, 27_000, 2_700, 5, 3, (1, 2, 4, 8), (1, 2, 4), data_parallel=True)


@dataclass
class Case:
    """One program to time and the row fields to report with it (baseline, note, ...)."""

    name: str
    program: Compiled
    fields: dict


def measure_cases(group: str, cases: list[Case], reps: int) -> list[dict]:
    """Time the cases in interleaved rounds, after one warm-up call each, and make their rows."""
    ms = measure_interleaved({c.name: c.program.run for c in cases}, reps=reps)
    rounds = "+".join(c.name for c in cases)  # rows with the same `rounds` were timed together
    return [
        {
            "name": c.name,
            "group": group,
            "device": device_label(c.program.n_devices),
            **ms[c.name].summary(c.program.images_per_call),
            "compile_s": c.program.compile_s,
            "n_members": c.program.n_members,
            "parallel": c.program.parallel,
            "batch_size": c.program.batch_size,
            "rounds": rounds,
            **c.fields,
        }
        for c in cases
    ]


def _subset(wl: Workload, n: int) -> tuple[np.ndarray, np.ndarray]:
    return wl.train_images[:n], wl.train_labels[:n]


# ---------------------------------------------------------------------------------------------
# Training and inference of both models


@functools.cache
def _pytorch() -> tuple[Any, str | None]:
    if jax.default_backend() != "cpu":
        why = f"the PyTorch baseline runs on the CPU; this run's backend is {jax.default_backend()}"
        return None, why
    try:
        from benchmarks import torch_baseline
    except ImportError as e:
        return None, f"PyTorch is not installed ({e}); pip install -e '.[bench]' adds it"
    torch_baseline.set_threads(host_cpu_count())
    return torch_baseline, None


def pytorch():
    """`benchmarks.torch_baseline`, or None where PyTorch is not installed (the `bench` extra)
    or the backend is not the CPU (the baseline is PyTorch on the CPU); imported on first use
    (the study, which times `infer_row`, never loads PyTorch) and set to as many threads as this
    process has CPUs, as XLA uses."""
    return _pytorch()[0]


def pytorch_problem() -> str | None:
    """Why there is no PyTorch baseline in this process (one line), or None."""
    return _pytorch()[1]


def matmul_peak(plan: Plan) -> dict:
    """This process's float32 matmul peak, GFLOP/s (`bound.matmul_peak`; PyTorch's too where
    installed): [2048, 2048] matrices, the best of 7 calls (a quick run: 512, 2)."""
    torch_baseline = pytorch()
    n, reps = (512, 2) if plan.quick else (2048, 7)
    extra = {} if torch_baseline is None else {"pytorch": torch_baseline.matmul(n)}
    return bound.matmul_peak(n, reps, host_cpu_count(), extra)


PYTORCH_NOTE = "the same model and step in PyTorch {version} (benchmarks/torch_baseline.py)"


def with_pytorch(name: str, case: Case, build) -> list[Case]:
    """`case` and, where PyTorch is installed, its PyTorch twin `pytorch_{name}` (built by
    `build(torch_baseline)`) as its baseline, so that the row's ratio is ours / PyTorch."""
    torch_baseline = pytorch()
    if torch_baseline is None:
        return [case]
    twin = f"pytorch_{name}"
    fields = {**case.fields, "note": PYTORCH_NOTE.format(version=torch_baseline.VERSION)}
    case.fields["baseline"] = twin
    return [case, Case(twin, build(torch_baseline), fields)]


def _fields(note: str, cfg: TrainConfig, kind: str) -> dict:
    """A row's note, the threads it ran on and its matmul FLOPs per image (`kind`: train or
    infer), from which run.py computes its share of the FLOP bound."""
    return {"note": note, "threads": host_cpu_count(), "flops_per_image": FLOPS(cfg)[kind]}


def train_rows(name: str, cfg: TrainConfig, plan: Plan, wl: Workload, note: str) -> list[dict]:
    """Row `name`: `cfg`'s training epoch as fit runs it, in rounds with its PyTorch twin."""
    images, labels = _subset(wl, plan.n_train)
    fields = _fields(note, cfg, "train")
    case = Case(name, train_epoch_program(cfg, images, labels), fields)
    pair = with_pytorch(name, case, lambda tb: tb.train_epoch_program(cfg, images, labels))
    return measure_cases("train", pair, plan.reps)


def cnn_train(plan: Plan, wl: Workload) -> list[dict]:
    """`cnn_train`: one CNN member through fit's epoch program (online augmentation), and its
    PyTorch twin."""
    note = (
        "fit's path: one jitted lax.scan epoch over the members (1 here; lax.map on the CPU, "
        "vmap elsewhere), online augmentation, device-side shuffle; compile_s = lower + "
        "compile of that epoch program"
    )
    return train_rows("cnn_train", CNN, plan, wl, note)


def ae_train(plan: Plan, wl: Workload) -> list[dict]:
    """`ae_train`: one denoising autoencoder member through fit's epoch program, and its
    PyTorch twin."""
    note = f"denoising autoencoder {AE.widths}, input noise sigma {AE.denoise_std}"
    return train_rows("ae_train", AE, plan, wl, note)


INFER_NOTE = (
    "fit's evaluation: its jitted eval program over the members per padded, masked test batch, "
    "sums on the device (loss, accuracy, confusion / reconstruction error)"
)


def infer_row(name: str, cfg: TrainConfig, images, labels, *, reps: int) -> dict:
    """The inference speed of `cfg`'s model: one member (fresh parameters: the speed does not
    depend on them) evaluating `images` (float32 [N, 28, 28, 1]) and `labels` (int [N]) as `fit`
    does, in batches of `cfg.eval_batch()`, timed `reps` times after a warm-up pass. -> a row
    (`images_per_s` and the rest: see the module's docstring). The benchmarks' `cnn_infer` and
    `ae_infer`, and the study's inference speed (experiments.study)."""
    c = eval_program(cfg, images, labels)
    return measure_cases("infer", [Case(name, c, {"note": INFER_NOTE})], reps)[0]


def _infer(name: str, cfg: TrainConfig, plan: Plan, wl: Workload) -> list[dict]:
    """`infer_row`'s measurement, in rounds with its PyTorch twin (the same padded batches)."""
    images, labels = wl.test_images, wl.test_labels
    c = eval_program(cfg, images, labels)
    case = Case(name, c, _fields(INFER_NOTE, cfg, "infer"))
    pair = with_pytorch(name, case, lambda tb: tb.eval_program(cfg, images, labels, c.batch_size))
    return measure_cases("infer", pair, plan.reps)


def cnn_infer(plan: Plan, wl: Workload) -> list[dict]:
    """One member (and its PyTorch twin), and the study's 3 members: fit's way (member map and
    batch automatic), and vmapped with the automatic batch and with a batch of 1000 (on the CPU
    the automatic batch keeps the images one op sees small: see TrainConfig.eval_batch and
    fit.resolve_member_map)."""
    rows = _infer("cnn_infer", CNN, plan, wl)
    if plan.quick:
        return rows
    n, base, auto_map = 3, "cnn_infer_3members_vmap_batch1000", resolve_member_map("auto", "none")
    cases = []
    for name, cfg, member_map, how in (
        (base, CNN.replace(eval_batch_size=1000), "vmap", "vmapped"),
        ("cnn_infer_3members_vmap", CNN, "vmap", "vmapped"),
        ("cnn_infer_3members", CNN, auto_map, f"fit's way ({auto_map})"),
    ):
        c = eval_program(cfg, wl.test_images, wl.test_labels, n_members=n, member_map=member_map)
        note = f"{n} members, {how}, eval batch {c.batch_size}"
        cases.append(Case(name, c, {"baseline": base, "note": note}))
    return rows + measure_cases("infer_members", cases, plan.reps_small)


def ae_infer(plan: Plan, wl: Workload) -> list[dict]:
    """`ae_infer`: the autoencoder's evaluation over the test images, as fit runs it, and its
    PyTorch twin."""
    return _infer("ae_infer", AE, plan, wl)


# ---------------------------------------------------------------------------------------------
# The epoch as one scan vs a Python loop of jitted steps


def _loop_program(prog, images, labels) -> tuple[Compiled, float]:
    """The classic loop: host-side permutation, host numpy batches, one jitted step each.
    -> (program, host-side batching seconds per step)."""
    steps, batch = prog.steps_per_epoch, prog.cfg.batch_size
    step_fn = jax.jit(functools.partial(train_step, prog), donate_argnums=0)
    state = jax.jit(functools.partial(init_state, prog))(jax.random.PRNGKey(0))
    box = {"state": state, "rng": np.random.default_rng(0)}
    _, compile_s = timed(lambda: step_fn.lower(state, images[:batch], labels[:batch]).compile())

    def host_batches():
        order = box["rng"].permutation(images.shape[0])[: steps * batch].reshape(steps, batch)
        for idx in order:
            yield images[idx], labels[idx]

    def run():
        metrics = None
        for batch_images, batch_labels in host_batches():
            box["state"], metrics = step_fn(box["state"], batch_images, batch_labels)
        return box["state"], metrics  # no per-step sync: dispatch runs ahead asynchronously

    host = measure_interleaved({"host": lambda: sum(1 for _ in host_batches())}, reps=3, warmup=0)
    host_s = statistics.median(host["host"].wall_s) / steps
    return Compiled(run, compile_s, steps * batch, "none", 1, batch), host_s


def scan_vs_loop(plan: Plan, wl: Workload) -> list[dict]:
    """fit's scan epoch vs a host loop of jitted steps: same config, data and number of steps as
    cnn_train."""
    images, labels = _subset(wl, plan.n_train)
    loop, host_s = _loop_program(program(CNN, int(images.shape[0])), images, labels)
    scan_note = "cnn_train's program again, timed in rounds with the loop"
    loop_note = (
        "Python loop over jitted train_step (donated state), batches gathered in numpy on the "
        "host and copied in per step; compile_s is one step's"
    )
    cases = [
        Case("cnn_train_scan", train_epoch_program(CNN, images, labels), {"note": scan_note}),
        Case(
            "cnn_train_loop", loop, {"host_batching_ms_per_step": 1e3 * host_s, "note": loop_note}
        ),
    ]
    for c in cases:
        c.fields["baseline"] = "cnn_train_scan"
    return measure_cases("scan_vs_loop", cases, plan.reps_small)


# ---------------------------------------------------------------------------------------------
# N seeds in one vmapped program vs N sequential runs


def seeds(plan: Plan, wl: Workload) -> list[dict]:
    """N CNN members in one program (vmapped, and one after another) against one member."""
    images, labels = _subset(wl, plan.n_small)
    cases = []
    for n in plan.members:
        for member_map in ("vmap", "map") if n > 1 else ("vmap",):
            note = (
                "1 member; N sequential single runs run this same program N times, so their "
                "total throughput is this row's (compile excluded, paid once)"
                if n == 1
                else f"{n} members vmapped in one program on one device"
                if member_map == "vmap"
                else f"{n} members one after another (lax.map) in one program on one device"
            )
            c = train_epoch_program(CNN, images, labels, n_members=n, member_map=member_map)
            fields = {"baseline": "cnn_seeds_vmap_N1", "note": note}
            cases.append(Case(f"cnn_seeds_{member_map}_N{n}", c, fields))
    return measure_cases("seeds", cases, plan.reps_small)
