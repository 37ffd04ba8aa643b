"""What one invocation works with: its options, the data (loaded once), the seeds, a log, and
the runs it has trained so far (kept in memory so that later rows can build on them).

`make_context` checks, in this order, that the output folder can be written, loads the data
and checks the batch size against it: a refusal costs seconds and writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from experiments.cli import QUICK_TRAIN, QUICK_VAL, Options, UsageError
from experiments.monitor import EpochTrace
from fmnist_jax import compilation_cache, distributed
from fmnist_jax.data import TaskData, load_task
from fmnist_jax.fit import FitResult


@dataclass
class Context:
    """An invocation's options, data, seeds and log, and `runs`: the results it trained, by
    the fingerprint of their configuration without its length (see `experiments.sweep.train`);
    `trained` and `reused`: the result folders it wrote by training and by copying; `trace`:
    `--profile`'s (see `experiments.monitor.EpochTrace`)."""

    opts: Options
    data: TaskData
    seeds: list[int]
    log: Callable[[str], None]
    runs: dict[str, FitResult] = field(default_factory=dict)
    trained: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    trace: EpochTrace = field(default_factory=lambda: EpochTrace(None))

    @property
    def out(self) -> Path:
        """The results root (`--out`)."""
        return self.opts.out

    @property
    def progress(self) -> bool:
        """Whether to draw progress bars: on a terminal, unless `--quiet` (redrawn in place, a
        bar in a log file or a pipe would be a line of carriage returns per update)."""
        return not self.opts.quiet and sys.stderr.isatty()


def check_writable(out: Path) -> None:
    """Fail before any work if `out` cannot hold results; leave no trace when it can.

    Probes by really creating the folder and a file in it (permission bits alone say nothing
    when running as root, nor about read-only mounts), then removes whatever the probe created,
    so a run refused later (bad batch size, a different configuration in the way) writes nothing.

    Raises:
      UsageError: `out` is a file, or the folder cannot be created or written.
    """
    out = Path(out)
    try:
        is_file = out.exists() and not out.is_dir()
    except OSError as e:  # e.g. a name longer than the file system takes
        raise UsageError(
            f"--out {out} cannot be used ({e.strerror or e}); choose another with --out DIR"
        ) from None
    if is_file:
        raise UsageError(f"--out {out} is a file, not a folder; choose another with --out DIR")
    created = []
    try:
        for folder in reversed([p for p in (out, *out.parents) if not p.exists()]):
            folder.mkdir()
            created.append(folder)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise UsageError(
            f"the output folder {out} is not writable ({e.strerror or e}{where}); "
            "choose another with --out DIR"
        ) from None
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()


# TaskData's arrays are {split}_{kind}
_SPLITS, _KINDS = ("train", "val", "test"), ("images", "labels")


def load_data(opts: Options) -> TaskData:
    """The task's data as the options ask: `--limit`, then `--quick`'s first images.

    Raises:
      fmnist_jax.sources.DataError: the data is missing, damaged or not verified.
    """
    data = load_task(
        opts.data_dir,
        opts.source,
        split_seed=opts.split_seed,
        verify=not opts.allow_unverified_data,
        limit=opts.limit,
        classes=opts.classes,
    )
    if opts.quick:
        data = dataclasses.replace(
            data,
            train_images=data.train_images[:QUICK_TRAIN],
            train_labels=data.train_labels[:QUICK_TRAIN],
            val_images=data.val_images[:QUICK_VAL],
            val_labels=data.val_labels[:QUICK_VAL],
        )
        data.info.update(quick=True)
    data.info["counts"] = {s: len(getattr(data, f"{s}_labels")) for s in _SPLITS}
    data.info["digest"] = digest(data)
    return data


def digest(data: TaskData) -> str:
    """sha256 (first 16 hex digits) of the images and labels actually used, every split."""
    h = hashlib.sha256()
    for split in _SPLITS:
        for kind in _KINDS:
            h.update(np.ascontiguousarray(getattr(data, f"{split}_{kind}")).tobytes())
    return h.hexdigest()[:16]


def check_batch_size(opts: Options, data: TaskData) -> None:
    """A batch larger than the training split would give zero steps per epoch: refuse early.

    Raises:
      UsageError: `--batch-size` exceeds the training images.
    """
    n = len(data.train_labels)
    if opts.batch_size > n:
        how = " (--quick)" if opts.quick else f" (--limit {opts.limit})" if opts.limit else ""
        raise UsageError(
            f"--batch-size {opts.batch_size} is larger than the training split{how}, "
            f"which has {n} images; use a smaller batch, e.g. --batch-size {min(100, n)}"
        )


def make_context(opts: Options) -> Context:
    """Check the output folder, turn on the compilation cache, load the data, check the batch.

    Raises:
      UsageError, fmnist_jax.sources.DataError: see `check_writable`, `load_data` and
        `check_batch_size`.
    """
    if distributed.is_writer():  # the only process that writes (see fmnist_jax.distributed)
        check_writable(opts.out)
    compilation_cache.enable()
    log = (lambda msg: None) if opts.quiet else (lambda msg: print(msg, flush=True))
    data = load_data(opts)
    check_batch_size(opts, data)
    seeds, trace = list(range(opts.seeds)), EpochTrace(opts.profile)
    return Context(opts=opts, data=data, seeds=seeds, log=log, trace=trace)


# Environment variables that change the numbers a run computes: JAX's precision (x64, matmul
# precision; TensorFloat-32 on NVIDIA GPUs), its random streams (the PRNG, how threefry splits,
# a seed offset), its differentiation and compilation (softmax's JVP, no jit, XLA's optimization
# settings and flags). Part of every fingerprint when set (`numerics_env`).
NUMERICS_ENV = (
    "JAX_ENABLE_X64",
    "JAX_DEFAULT_MATMUL_PRECISION",
    "NVIDIA_TF32_OVERRIDE",
    "JAX_DEFAULT_PRNG_IMPL",
    "JAX_THREEFRY_PARTITIONABLE",
    "JAX_RANDOM_SEED_OFFSET",
    "JAX_SOFTMAX_CUSTOM_JVP",
    "JAX_DISABLE_JIT",
    "JAX_DISABLE_MOST_OPTIMIZATIONS",
    "JAX_OPTIMIZATION_LEVEL",
    "JAX_EXEC_TIME_OPTIMIZATION_EFFORT",
    "XLA_FLAGS",
)
# XLA flags that change no member's numbers: the CPU device count (where members are placed, see
# docs/design.md#scale) and where XLA dumps what it compiles.
_PLACEMENT_FLAGS = ("--xla_force_host_platform_device_count", "--xla_dump_")
# Environment variables that change what a run reads or computes: recorded with its command.
RECORDED_ENV = ("FMNIST_DATA_DIR", "JAX_PLATFORMS", *NUMERICS_ENV)


def numerics_env() -> dict[str, str]:
    """The variables of `NUMERICS_ENV` set in this process, by name, XLA_FLAGS without the flags
    that change no number; {} when none is (every fingerprint made without them stays as it
    was). Results made under other values are another configuration (docs/design.md#reuse)."""
    env = {name: os.environ.get(name, "") for name in NUMERICS_ENV}
    flags = env["XLA_FLAGS"].split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if not f.startswith(_PLACEMENT_FLAGS))
    return {name: value for name, value in env.items() if value}


LOCK_FILE = ".lock"  # in --out: locked by the command writing there, which it names


@contextlib.contextmanager
def sole_writer(opts: Options) -> Iterator[None]:
    """Hold `--out` for this command alone while the block runs: a results folder has one writer
    at a time (docs/design.md#results-layout); with several processes, only the one that writes.

    The lock is the OS's, `flock` on `<out>/.lock`, so the kernel releases it when the process
    ends, however it ends (a `kill -9` leaves no stale lock), and the file names the holder: its
    pid, host, start and command. (`fcntl.flock` itself rather than the `filelock` package: it
    makes the same call underneath, and what it adds, timeouts, re-entrancy, fallbacks, this
    needs not.) Reading other folders (`--encoder`) takes no lock.

    Raises:
      UsageError: another command holds it and `--wait` was not given (the message names it).
    """
    if not distributed.is_writer():
        yield
        return
    opts.out.mkdir(parents=True, exist_ok=True)
    with open(opts.out / LOCK_FILE, "a+", encoding="utf-8") as f:  # a+: keeps the holder's name
        locked = True
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a command that has not yet written its name"
            if not opts.wait:
                raise UsageError(
                    f"--out {opts.out} is being written by another command ({holder}); let it "
                    "finish (or pass --wait to wait for it), or write elsewhere with --out DIR"
                ) from None
            print(f"waiting: --out {opts.out} is being written by {holder}", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:  # ENOLCK, EOPNOTSUPP: no locks here (NFS mounted without them)
            locked = False
            print(
                f"warning: --out {opts.out} cannot be locked ({e.strerror or e}: a network file "
                "system without lock support?); nothing stops a second command from writing "
                "into it at the same time",
                file=sys.stderr,
            )
        if not locked:
            yield
            return
        f.truncate(0)
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        command = command_line().replace("\n", "\\n")
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # still locked: nobody reads a name that is no longer true


def command_line() -> str:
    """How this process was started, as a shell command that reruns it as is from anywhere:
    `cd <its folder> && [env VAR=value ...] <this Python> -m package.module args...`, every word
    quoted (a bare `python` may be another interpreter, or none, in the next shell; relative
    paths need the folder; the variables of `RECORDED_ENV` that are set change the data or the
    numbers)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    entry = ["-m", spec.name] if spec is not None and spec.name else sys.argv[:1]
    env = [f"{k}={os.environ[k]}" for k in RECORDED_ENV if os.environ.get(k)]
    words = [os.getcwd(), *(["env", *env] if env else []), sys.executable, *entry, *sys.argv[1:]]
    # Words the locale could not decode (held as surrogates) as the UTF-8 they most likely were.
    cwd, *words = (os.fsencode(w).decode("utf-8", "surrogateescape") for w in words)
    return f"cd {shlex.quote(cwd)} && {shlex.join(words)}"
