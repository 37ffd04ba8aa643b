"""Scaling over devices: seeds sharded over devices (parallel="seeds") and data parallelism
(parallel="data"), measured in subprocesses.

On the CPU the devices are host devices, and their number is fixed by
`XLA_FLAGS=--xla_force_host_platform_device_count=K` before JAX starts, hence one subprocess per
K. On an accelerator the flag changes nothing: one worker measures the devices there are.

Worker: `python -m benchmarks.scaling --out PATH [...]` writes {"env", "rows", "skipped"}.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports: see fmnist_jax.entry
    from fmnist_jax import entry

    entry.start()

import os
import re

import jax

from benchmarks import spawn_worker, worker_main
from benchmarks.cases import CNN, Case, Plan, measure_cases
from benchmarks.timing import environment, host_cpu_count
from benchmarks.workload import load_workload, train_epoch_program

BASELINE = "cnn_dev1_none_N1"
_FORCE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")
NOTES = {
    "none": "1 member, unsharded, in a process with {k} device(s): the reference of its rows",
    "seeds": "{n} members vmapped, the member axis sharded over {k} devices (padded to a multiple "
    "of {k}; only real members counted); no communication between devices",
    "data": "1 member; each batch of 100 split over {k} devices, parameters replicated, "
    "gradients all-reduced by XLA",
}


def row_name(devices: int, mode: str, members: int) -> str:
    """e.g. `cnn_dev2_seeds_N4`: the device count, parallel mode and members of a row."""
    return f"cnn_dev{devices}_{mode}_N{members}"


def _cases(devices: int, members: tuple[int, ...], data_parallel: bool):
    """(mode, N) pairs to measure on `devices` devices; the first is the worker's reference."""
    if devices == 1:
        return [("none", 1)]  # N > 1 on one device is the main process's `seeds` group
    # One member on one of the K devices (what fit's "auto" runs for one member) is measured
    # in rounds with the rest, so their ratios to it are free of the machine's drift; N = K
    # fills every device with exactly one member.
    seeds = sorted({n for n in members if n > 1} | {devices})
    return [("none", 1)] + [("seeds", n) for n in seeds] + ([("data", 1)] if data_parallel else [])


def worker(args) -> dict:
    """The device-scaling rows of this process's devices (run in a subprocess)."""
    wl = load_workload(random_data=args.random_data)
    plan = Plan.make(args.quick)
    images, labels = wl.train_images[: plan.n_small], wl.train_labels[: plan.n_small]
    k = jax.device_count()
    reference = row_name(k, "none", 1)
    cases, skipped = [], []
    for mode, n in _cases(k, plan.device_members, plan.data_parallel):
        name = row_name(k, mode, n)
        baseline = reference if name != reference else BASELINE
        try:
            c = train_epoch_program(CNN, images, labels, n_members=n, parallel=mode)
        except Exception as e:  # e.g. a batch that does not split over K devices
            skipped.append({"name": name, "why": f"{type(e).__name__}: {e}"[:500]})
            continue
        cases.append(Case(name, c, {"baseline": baseline, "note": NOTES[mode].format(k=k, n=n)}))
    rows = measure_cases("devices", cases, plan.reps_small)
    return {"env": environment(), "rows": rows, "skipped": skipped}


def device_counts(plan: Plan) -> list[int]:
    """K = 1, 2 and the CPU count if larger, on the CPU; elsewhere just the devices there are.

    --quick leaves out K = 1: its rows are the main process's `seeds` rows (same program, same
    epoch, one device), which then serve as the baseline.
    """
    if jax.default_backend() != "cpu":
        return [jax.device_count()]
    return sorted({2, host_cpu_count()} | ({1} if not plan.quick else set()))


def run_workers(plan: Plan, *, random_data: bool, timeout_s: float) -> tuple[list, list, list]:
    """One worker per K -> (rows, skipped, per-worker env)."""
    rows, skipped, envs, seen = [], [], [], set()
    for k in device_counts(plan):
        env = dict(os.environ)
        if jax.default_backend() == "cpu":
            flags = _FORCE_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
            env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={k}".strip()
        result, why = spawn_worker("benchmarks.scaling", plan.quick, random_data, timeout_s, env)
        result = result or {}
        got = result.get("env", {}).get("device_count")
        if why is None and got in seen:
            why = f"backend gave {got} devices again"
        if why is not None:
            skipped.append({"name": f"devices K={k}", "why": why})
            continue
        seen.add(got)
        rows += result["rows"]
        skipped += result["skipped"]
        keys = ("device_count", "device_kind", "backend", "xla_flags", "load_average")
        envs.append({"requested_devices": k, **{key: result["env"][key] for key in keys}})
    return rows, skipped, envs


def main(argv=None):
    """`python -m benchmarks.scaling --out PATH`: a worker's entry point."""
    worker_main(worker, __doc__, argv)


if __name__ == "__main__":
    main()
