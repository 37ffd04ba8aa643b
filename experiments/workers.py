"""Train a plan's configurations in several processes at once, each on its own CPU cores.

On a small CPU one process training one small CNN splits its ops over the cores, and its
serial parts (compilation, evaluation, writing results) leave cores idle; several processes,
each pinned to its own core and training its own configurations, need no split and overlap
those parts. Whether that is faster depends on the machine: on the 2-core VM this was built
on, `benchmarks.run --only workers` (both measured in the same rounds) gave 0.91-1.27x per
round, median 0.96x and 1.00x in two runs, within its noise; Question 1 took 25.6 min with two
workers and 29.0 / 31.9 min in one process on other days. The numbers do not change: a worker splits each op's work as
its parent does (see `pin`), so a configuration's results are the same bits whichever process
trained it (tested).

Only the configurations a plan must train go to workers, one process per configuration (with
the shorter runs it writes on its way), as many at a time as there are core sets, longest
first; the parent then runs the plan as usual, which finds them complete and only copies
identical rows and writes the summaries. A worker that fails stops the others (each keeps its
last epoch's checkpoint) and the parent exits with an error; rerunning resumes.

    python -m experiments.workers JOBFILE   # started by `train`, not by hand
"""

if __name__ == "__main__":
    from experiments import interrupt

    interrupt.install()

import argparse
import ctypes
import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

CPUS_ENV = "FMNIST_WORKER_CPUS"
PARENT_ENV = "FMNIST_WORKER_PARENT"
SINGLE_THREAD_FLAG = "--xla_cpu_multi_thread_eigen=false"
POLL_S = 0.5


def parse_workers(text: str) -> str | int:
    """argparse type of --workers: 'auto' or an integer >= 1."""
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers must be 'auto' or an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--workers must be 'auto' or an integer >= 1, got {text}")
    return value


def add_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers", type=parse_workers, default="auto", metavar="auto|N",
        help="train configurations in N processes at once, each on its own CPU cores (the same "
             "numbers bit for bit); auto: one per core on a CPU-only machine with 2 or more "
             "cores, 1 with --quick or --limit, on GPU/TPU and with several devices")


def cpu_sets(requested: str | int, n_jobs: int, *, cpus: Sequence[int], backend: str,
             n_devices: int, small: bool) -> list[tuple[int, ...]]:
    """The cores of each worker; one entry or none means: train in this process.

    `auto` uses workers only where they pay: a CPU-only machine with one device and at least
    two cores, a full run (not `small`: with --quick or --limit each worker's start-up and
    compilation would cost more than it saves), and at least two configurations to train.
    A number is honoured on the CPU (capped at the configurations to train); with more
    workers than cores they share the cores (unpinned, single-threaded). On a GPU/TPU several
    processes would compete for one device's memory: refused with a clear message.
    """
    from experiments.common import UsageError

    cpus = sorted(cpus)
    if requested == "auto":
        if backend != "cpu" or n_devices > 1 or small or len(cpus) < 2:
            return []
        n = min(len(cpus), n_jobs)
    else:
        if requested > 1 and backend != "cpu":
            raise UsageError(f"--workers {requested} starts several processes on the CPU; on "
                             f"{backend} they would compete for one device's memory: use "
                             "--workers 1 (or auto)")
        n = min(int(requested), n_jobs)
    if n < 2:
        return []
    if n > len(cpus):
        return [()] * n  # unpinned
    per, extra = divmod(len(cpus), n)
    sets, start = [], 0
    for i in range(n):
        size = per + (i < extra)
        sets.append(tuple(cpus[start:start + size]))
        start += size
    return sets


def resolve(requested: str | int, n_jobs: int, *, small: bool) -> list[tuple[int, ...]]:
    """`cpu_sets` for this machine: the cores this process may use, JAX's backend and devices."""
    import jax

    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
    else:  # no pinning on this OS: workers share the cores
        cpus = list(range(os.cpu_count() or 1))
    return cpu_sets(requested, n_jobs, cpus=cpus, backend=jax.default_backend(),
                    n_devices=jax.device_count(), small=small)


def cost(spec) -> float:
    """Epochs times their training set's size relative to the originals (`expand` triples it),
    the decay epochs of a run with a `decay_augment` counted on their own set."""
    cfg = spec.cfg

    def size(augment: str) -> int:
        return 3 if augment == "expand" else 1

    decay = cfg.optimizer.decay_epochs if cfg.decay_augment is not None else 0
    return (cfg.epochs - decay) * size(cfg.augment) + decay * size(cfg.decay_augment)


@dataclasses.dataclass(frozen=True)
class Job:
    """One configuration for a worker: what `common._run_entry` needs, picklable."""

    experiment: str
    execute: Callable
    spec: Any  # common.Spec, with the snapshots it writes
    run_dir: Path
    config: dict
    status: str


def worker_command(job_file: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.workers", str(job_file)]


def worker_environment(cpus: tuple[int, ...]) -> dict[str, str]:
    """A worker's environment: this package importable, the cores to pin to (`CPUS_ENV`, read
    by `pin_from_environment`) and, on one core, XLA's Eigen kernels single-threaded."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # so `-m experiments.workers` imports
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env[PARENT_ENV] = str(os.getpid())
    if cpus and hasattr(os, "sched_setaffinity"):
        env[CPUS_ENV] = ",".join(map(str, cpus))
    else:
        env.pop(CPUS_ENV, None)
    if len(cpus) <= 1:  # one core (or shared cores): XLA's Eigen kernels single-threaded
        env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS"), SINGLE_THREAD_FLAG) if f)
    return env


def train(ctx, jobs: Sequence[Job], sets: Sequence[tuple[int, ...]]) -> None:
    """Train `jobs`, len(sets) at a time, each in its own worker process on the next free core
    set, longest first (so the last to start are the short ones and the cores finish
    together), and wait for all of them.

    Raises common.WorkerFailed (after stopping the other workers) when one exits with an error;
    no further job is started then.
    """
    from experiments.common import WorkerFailed

    pending = sorted(range(len(jobs)), key=lambda i: (-cost(jobs[i].spec), i))
    where = ", ".join(f"CPU {','.join(map(str, s))}" if s else "shared CPUs" for s in sets)
    ctx.log(f"training {len(jobs)} configurations, {len(sets)} at a time in worker processes "
            f"({where}), longest first; their lines start with [worker k]")
    free = list(range(len(sets)))  # worker slots whose cores are idle
    running: dict[subprocess.Popen, tuple[int, int]] = {}  # -> (job, slot)
    failed = None
    with tempfile.TemporaryDirectory(prefix="fmnist-workers-") as tmp:
        try:
            while (pending or running) and failed is None:
                while pending and free:
                    i, slot = pending.pop(0), free.pop(0)
                    job_file = Path(tmp) / f"job{i}.pkl"
                    job_file.write_bytes(pickle.dumps({
                        "args": ctx.args, "jobs": [jobs[i]], "name": f"worker {slot + 1}"}))
                    proc = subprocess.Popen(worker_command(job_file),
                                            env=worker_environment(sets[slot]))
                    running[proc] = (i, slot)
                time.sleep(POLL_S)
                for proc in [p for p in running if p.poll() is not None]:
                    i, slot = running.pop(proc)
                    if proc.returncode != 0:
                        failed = (jobs[i], proc.returncode)
                        break
                    free.append(slot)
        finally:
            _stop([p for p in running if p.poll() is None])
    if failed is not None:
        job, rc = failed
        raise WorkerFailed(
            f"the worker training {job.experiment}/{job.spec.name} failed (exit status {rc}; its "
            f"message is above) and the others were stopped. Completed configurations are kept "
            f"in {ctx.out} and a run in progress keeps its last epoch: rerun the same command "
            "to resume (--workers 1 trains in this process)", exit_status=rc if rc in (1, 2) else 1)


def _stop(procs: Sequence[subprocess.Popen], grace_s: float = 30.0) -> None:
    """SIGTERM (a worker's watcher ends it at once, its checkpoint intact), then SIGKILL."""
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ----------------------------------------------------------------------------------------------
# The worker process


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent process ends, however it ends."""
    parent = os.environ.get(PARENT_ENV)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != int(parent):  # the parent ended before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def pin(cpus: set[int]) -> None:
    """Pin every thread of this process, and so every thread it starts later, to `cpus`.

    Called after JAX has created its CPU client: XLA sizes its thread pools, and so how it
    splits each op's work, by the cores the process may use when the client is created.
    Pinning afterwards keeps the parent's split (a worker on one core of a 2-core machine
    splits work as a 2-core process does), so the numbers are the parent's bit for bit;
    pinning first would change the split and the last bits of every sum.
    """
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # the thread has ended
            pass


def pin_from_environment() -> None:
    """In a worker: create JAX's CPU client (its pools sized for the parent's cores), then pin
    to the cores in `CPUS_ENV`, if any."""
    cpus = os.environ.get(CPUS_ENV)
    if cpus:
        import jax

        jax.devices()
        pin({int(c) for c in cpus.split(",")})


def run_jobs(job_file: Path) -> None:
    from experiments import common

    pin_from_environment()
    payload = pickle.loads(Path(job_file).read_bytes())
    args, name = payload["args"], payload["name"]
    quiet = bool(args.quiet)
    ctx = common.make_context(argparse.Namespace(**{**vars(args), "quiet": True}))

    def log(msg: str) -> None:
        if not quiet:
            print(f"[{name}] {msg.lstrip()}", flush=True)

    def epoch_line(spec, result) -> None:
        val = float(result.final["val"]["accuracy"].mean())
        log(f"{spec.name}: epoch {result.epochs_run}/{spec.cfg.epochs}, val accuracy {val:.2%}")

    ctx = dataclasses.replace(ctx, log=log, on_epoch=epoch_line)
    for job in payload["jobs"]:
        sweep = common.Sweep(job.experiment, (), job.execute, "")
        common._run_entry(ctx, sweep, job.spec, job.run_dir, job.config, job.status)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m experiments.workers JOBFILE (started by experiments.workers.train)",
              file=sys.stderr)
        sys.exit(2)
    _die_with_parent()
    from experiments import common

    common.main_guard(lambda: run_jobs(Path(argv[0])))


if __name__ == "__main__":
    main()
