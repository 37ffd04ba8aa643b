"""One process on every core vs one pinned worker process per core (`--workers`, see
experiments/workers.py), training the study's CNN epoch program (3 members, online
augmentation) in both.

Each round starts one process on all cores, then P = cores worker processes at once, each
pinned to its core the way `experiments.workers` pins it (after JAX has created its client,
XLA's Eigen kernels single-threaded). Every process compiles and warms up, then waits for a
common start signal, so compilation is not timed and the workers really run side by side; a
round's images/s is every process's images over the wall time from the signal to the last
finish. Rows: `cnn_train_1process` (the baseline) and `cnn_train_{P}workers`, timed in the
same rounds, so their ratio is the median of per-round ratios.

Worker: `python -m benchmarks.processes --out PATH --go PATH [--quick] [--random-data]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments import workers
from benchmarks.timing import Measurement, host_cpu_count

MEMBERS = 3  # the study's seeds
BASELINE = "cnn_train_1process"
GO_TIMEOUT_S = 600


def _settings(quick: bool) -> tuple[int, int, int]:
    """(images per member-epoch, timed epochs per process, rounds)."""
    return (300, 1, 1) if quick else (2_700, 2, 3)


def worker(args) -> dict:
    workers.pin_from_environment()
    import jax

    from benchmarks.cases import CNN
    from benchmarks.workload import load_workload, train_epoch_program

    n, epochs, _ = _settings(args.quick)
    wl = load_workload(random_data=args.random_data)
    c = train_epoch_program(CNN, wl.train_images[:n], wl.train_labels[:n], n_members=MEMBERS)
    jax.block_until_ready(c.run())  # warm-up
    Path(str(args.out) + ".ready").write_text("")
    waited = time.monotonic()
    while not args.go.exists():
        if time.monotonic() - waited > GO_TIMEOUT_S:  # the parent is gone
            raise SystemExit(f"no start signal in {GO_TIMEOUT_S} s")
        time.sleep(0.005)
    start, cpu0 = time.monotonic(), time.process_time()
    for _ in range(epochs):
        jax.block_until_ready(c.run())
    return {"start": start, "end": time.monotonic(), "cpu_s": time.process_time() - cpu0,
            "images": epochs * c.images_per_call, "compile_s": c.compile_s}


def _round(sets: list[tuple[int, ...]], *, quick: bool, random_data: bool, timeout_s: float):
    """Start len(sets) processes (pinned to `sets`, or unpinned for ()), release them together
    -> (images, wall seconds, CPU seconds) of the round."""
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        outs = [Path(tmp) / f"p{k}.json" for k in range(len(sets))]
        procs = []
        for out, cpus in zip(outs, sets):
            cmd = [sys.executable, "-m", "benchmarks.processes", "--out", str(out), "--go", str(go)]
            cmd += ["--quick"] * quick + ["--random-data"] * random_data
            env = workers.worker_environment(cpus) if len(sets) > 1 else dict(os.environ)
            with open(str(out) + ".err", "w") as err:  # a file: a full pipe would block the child
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err))

        def failure(k: int, what: str) -> RuntimeError:
            tail = Path(str(outs[k]) + ".err").read_text()[-800:]
            return RuntimeError(f"benchmark process {k + 1} of {len(sets)} {what}: {tail}")

        deadline = time.monotonic() + timeout_s
        try:
            while not all(Path(str(o) + ".ready").exists() for o in outs):
                for k, p in enumerate(procs):
                    if p.poll() not in (None, 0):
                        raise failure(k, f"failed (rc {p.returncode})")
                if time.monotonic() > deadline:
                    raise failure(0, f"was not ready in {timeout_s} s")
                time.sleep(0.01)
            go.write_text("")
            for k, p in enumerate(procs):
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
                if p.returncode != 0:
                    raise failure(k, f"failed (rc {p.returncode})")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        got = [json.loads(o.read_text()) for o in outs]
    wall = max(g["end"] for g in got) - min(g["start"] for g in got)
    return sum(g["images"] for g in got), wall, sum(g["cpu_s"] for g in got)


def measure(plan, *, random_data: bool, timeout_s: float) -> tuple[list[dict], list[dict]]:
    """-> (rows, skipped)."""
    import jax

    from benchmarks.cases import make_row

    cores = host_cpu_count()
    if jax.default_backend() != "cpu" or cores < 2:
        why = ("worker processes are for CPU-only machines" if jax.default_backend() != "cpu"
               else "one core: nothing to share out")
        return [], [{"name": "workers", "why": why}]
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(cores))
    sets = workers.cpu_sets(cores, cores, cpus=cpus, backend="cpu", n_devices=1, small=False)
    name = f"cnn_train_{len(sets)}workers"
    _, _, rounds = _settings(plan.quick)
    timed = {BASELINE: ([], [], 0), name: ([], [], 0)}
    for _ in range(rounds):
        for row, layout in ((BASELINE, [()]), (name, sets)):
            images, wall, cpu = _round(layout, quick=plan.quick, random_data=random_data,
                                       timeout_s=timeout_s)
            walls, cpus_s, _ = timed[row]
            walls.append(wall)
            cpus_s.append(cpu)
            timed[row] = (walls, cpus_s, images)
    notes = {
        BASELINE: f"one process on all {cores} cores: {MEMBERS} members, online augmentation, "
                  "the study's epoch program",
        name: f"{len(sets)} processes at once, each pinned to its own core (as --workers pins "
              "them), each training the same program; images/s of all of them together",
    }
    rows = []
    for row, (walls, cpus_s, images) in timed.items():
        m = Measurement(wall_s=walls, cpu_s=cpus_s, other_cores=[])
        rows.append(make_row(row, "workers", m, images, n_members=MEMBERS, rounds=f"{BASELINE}+{name}",
                             processes=1 if row == BASELINE else len(sets), note=notes[row],
                             **({"baseline": BASELINE} if row != BASELINE else {})))
    return rows, []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--go", required=True, type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--random-data", action="store_true")
    args = parser.parse_args(argv)
    result = worker(args)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
