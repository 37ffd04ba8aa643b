"""`cnn_train` on one CPU thread, ours and PyTorch's, with that thread's matmul peak: measured in
a subprocess pinned to one CPU.

XLA sizes its thread pools, OpenBLAS its threads and PyTorch its OpenMP team from the CPUs the
process may run on, so the worker pins itself (`os.sched_setaffinity`) before it imports any of
them, and each then runs on one thread. Rows `cnn_train_1thread` and `pytorch_cnn_train_1thread`
(timed in the same rounds, as in the main process).

Worker: `python -m benchmarks.one_thread --out PATH [--quick] [--random-data]` writes
{"env", "rows", "matmul_peak_gflops"}.
"""

from __future__ import annotations

import os

from benchmarks import spawn_worker, worker_main

NAME = "cnn_train_1thread"


def worker(args) -> dict:
    """Pin this process to one CPU, then measure (the imports follow the pinning on purpose)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from benchmarks import cases
    from benchmarks.timing import environment
    from benchmarks.workload import load_workload

    plan = cases.Plan.make(args.quick)
    peak = cases.matmul_peak(plan)
    wl = load_workload(random_data=args.random_data)
    note = "cnn_train's program on one CPU (a subprocess pinned to it)"
    rows = cases.train_rows(NAME, cases.CNN, plan, wl, note)
    return {"env": environment(), "rows": rows, "matmul_peak_gflops": peak}


def run_worker(quick: bool, random_data: bool, timeout_s: float) -> tuple[dict | None, str | None]:
    """Run the worker -> (its result, None), or (None, why it failed or did not run)."""
    import jax  # here, not at the top: the worker imports it only once pinned

    if jax.default_backend() != "cpu" or not hasattr(os, "sched_setaffinity"):
        return None, "one thread is a CPU measurement on an OS that can pin a process (Linux)"
    return spawn_worker("benchmarks.one_thread", quick, random_data, timeout_s)


def main(argv=None):
    """`python -m benchmarks.one_thread --out PATH`: the worker's entry point."""
    worker_main(worker, __doc__, argv)


if __name__ == "__main__":
    main()
