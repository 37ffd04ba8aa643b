"""The command line: flags -> one frozen `Options`, and foreseeable failures -> one `error:` line
and an exit status (2: usage, 1: data / device / disk).

Every entry point builds its parser with `parser(...)`, reads it with `parse(...)` and runs its
work under `main_guard`; nothing below the entry point sees argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import logging
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, NoReturn

import jax
import orbax.checkpoint as ocp

from fmnist_jax import compilation_cache, distributed, io, placement
from fmnist_jax.checkpoint import CheckpointError
from fmnist_jax.data import CLASSES, FASHION_MNIST_NAMES, check_classes
from fmnist_jax.models import ARCHITECTURES, INITS, POOLS
from fmnist_jax.placement import PARALLEL_MODES
from fmnist_jax.sources import SOURCES, DataError

DEFAULT_OUT = Path("results")
QUICK_TRAIN, QUICK_VAL = 600, 300  # --quick: a few hundred images, one epoch, full test set
Q2_SWEEPS = ("epochs", "lr", "arch", "pretraining")  # run in this order (see experiments.q2)


class UsageError(Exception):
    """A mistake in the command line or the output folder: exit status 2, nothing trained."""


@dataclass(frozen=True, kw_only=True)
class Options:
    """Every flag of every entry point, parsed and checked. `epochs` and `lr` are None where the
    entry point has no such flag (the study): each question then uses its own default."""

    seeds: int = 3
    out: Path = DEFAULT_OUT
    quick: bool = False
    quiet: bool = False
    data_dir: Path | None = None
    source: str = "idx"
    allow_unverified_data: bool = False
    split_seed: int = 0
    overwrite: bool = False
    wait: bool = False
    parallel: str = "auto"
    keep_checkpoints: bool = False
    profile: Path | None = None
    pool: str = "avg"
    epochs: int | None = None
    batch_size: int = 100
    lr: float | None = None
    noise_std: float = 0.1
    rotation_degrees: float = 10.0
    limit: int | None = None
    # The variant (docs/variants.md): the original's by default
    classes: tuple[int, ...] = CLASSES
    init: str = "xavier_uniform"
    flip: bool = False
    # Question 2
    sweep: str = "all"
    stage: str = "both"
    encoder: Path | None = None
    arch: str = "base"
    pretrain_epochs: int = 10
    denoise_std: float = 0.3
    freeze_encoder: bool = False
    # The study
    report_only: bool = False

    def replace(self, **changes) -> Options:
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


def number(kind, name: str, *, low=None, high=None, low_open=False) -> Callable[[str], Any]:
    """An argparse `type` that parses `kind` (int or float) and checks finiteness and bounds,
    so a bad value is one usage line and exit status 2 before anything is loaded or written."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(
                f"{name} must be {'>' if low_open else '>='} {low}, got {text}"
            )
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{name} must be <= {high}, got {text}")
        return value

    return parse


def class_list(text: str) -> tuple[int, ...]:
    """An argparse `type` for `--classes`: comma-separated original labels, e.g. "0,2,4,6,8"
    (2 to 10 distinct labels in 0..9, kept in the given order)."""
    try:
        return check_classes(int(c) for c in text.split(","))
    except ValueError as e:
        detail = str(e) if "invalid literal" not in str(e) else f"got {text!r}"
        raise argparse.ArgumentTypeError(
            f"--classes takes 2 to 10 distinct labels 0..9 separated by commas (e.g. 0,2,4,6,8): "
            f"{detail}"
        ) from None


def variant_flags(p: argparse.ArgumentParser) -> None:
    """The assignment's variables besides --pool and the augmentation's parameters
    (docs/variants.md): which classes, which initialisation, flipping."""
    names = ", ".join(f"{i} {n}" for i, n in enumerate(FASHION_MNIST_NAMES))
    v = p.add_argument_group("variant (default: the original assignment's)")
    v.add_argument(
        "--classes",
        type=class_list,
        metavar="A,B,...",
        help=f"the task's classes, original labels in order (-> 0..k-1): {names}",
    )
    v.add_argument("--init", choices=INITS, help="weight initialisation of every layer")
    v.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="horizontal flips in the augmentation (online: p = 0.5; expand: a flipped copy)",
    )


def folder(name: str) -> Callable[[str], Path]:
    """An argparse `type` for a path; an empty one (the current folder) is refused."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{name} needs a folder, got an empty string")
        return Path(text)

    return parse


def parser(
    description: str, *, epochs: int | None = None, lr: float | None = None, question2: bool = False
) -> argparse.ArgumentParser:
    """The flags every experiment takes (docs/design.md#results-layout); `--epochs`/`--lr` only
    when given their defaults, Question 2's own flags with `question2`."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    # Options' defaults are the flags' (epochs and lr: the entry point's, when it has the flag).
    fields = dataclasses.fields(Options)
    p.set_defaults(**{f.name: f.default for f in fields if f.name not in ("epochs", "lr")})
    g = p.add_argument_group("common")
    g.add_argument(
        "--seeds",
        type=number(int, "--seeds", low=1),
        help="models trained together (seeds 0..N-1), reported as mean ± std",
    )
    g.add_argument("--out", type=folder("--out"), help="results root")
    g.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_TRAIN} train / {QUICK_VAL} val images, 1 epoch (full test set)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument(
        "--data-dir",
        type=folder("--data-dir"),
        help="folder with the four IDX files (or Kaggle's two CSV files)",
    )
    g.add_argument("--source", choices=SOURCES, help="where the data comes from")
    g.add_argument(
        "--allow-unverified-data",
        action="store_true",
        help="accept IDX files whose sha256 differs from Fashion-MNIST's",
    )
    g.add_argument(
        "--split-seed",
        type=number(int, "--split-seed", low=0),
        help="seed of the stratified train/validation split",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing results of a different configuration instead of refusing",
    )
    g.add_argument(
        "--wait",
        action="store_true",
        help="if another command is writing into --out, wait until it ends instead of stopping",
    )
    g.add_argument("--parallel", choices=PARALLEL_MODES, help="how members use several devices")
    g.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each run's final Orbax checkpoint (the resume checkpoint is removed otherwise)",
    )
    g.add_argument(
        "--profile",
        type=folder("--profile"),
        metavar="DIR",
        help="write a jax.profiler trace of one epoch after compilation into DIR (TensorBoard's "
        "profiler, or Perfetto: DIR/plugins/profile/*/perfetto_trace.json.gz); no number changes",
    )
    t = p.add_argument_group("training overrides")
    t.add_argument("--pool", choices=POOLS, help="CNN pooling (the report's table used max)")
    if epochs is not None:
        t.add_argument(
            "--epochs",
            type=number(int, "--epochs", low=1),
            default=epochs,
            help="epochs of the fixed (not swept) runs",
        )
    t.add_argument(
        "--batch-size", type=number(int, "--batch-size", low=1), help="training batch size"
    )
    if lr is not None:
        t.add_argument(
            "--lr",
            type=number(float, "--lr", low=0, low_open=True),
            default=lr,
            help="learning rate of the fixed (not swept) runs",
        )
    t.add_argument(
        "--noise-std",
        type=number(float, "--noise-std", low=0, high=1),
        help="sigma of the Gaussian-noise augmentation (0: none)",
    )
    t.add_argument(
        "--rotation-degrees",
        type=number(float, "--rotation-degrees", low=0, high=180),
        help="rotation augmentation range ±degrees (0: none)",
    )
    variant_flags(p)
    if question2:
        q = p.add_argument_group("question 2")
        q.add_argument("--sweep", choices=(*Q2_SWEEPS, "all"), help="which sweep to run")
        q.add_argument(
            "--stage",
            choices=("pretrain", "finetune", "both"),
            help="pretrain only (writes an encoder checkpoint), fine-tune only (needs "
            "--encoder), or both",
        )
        q.add_argument(
            "--encoder",
            type=folder("--encoder"),
            help="fine-tune from this encoder checkpoint folder",
        )
        q.add_argument(
            "--arch", choices=tuple(ARCHITECTURES), help="autoencoder widths of the fixed runs"
        )
        q.add_argument(
            "--pretrain-epochs",
            type=number(int, "--pretrain-epochs", low=1),
            help="epochs of the fixed runs' pretraining",
        )
        q.add_argument(
            "--denoise-std",
            type=number(float, "--denoise-std", low=0, high=1),
            help="sigma of the corrupting noise in pretraining (noisy input, clean target)",
        )
        q.add_argument(
            "--freeze-encoder",
            action="store_true",
            help="train only the head on top of the pretrained encoder (a linear probe)",
        )
    d = p.add_argument_group("debugging and tests")
    d.add_argument(
        "--limit",
        type=number(int, "--limit", low=1),
        metavar="N",
        help="use only the first N training images and max(N//5, 50) validation and test "
        "images (file order): a tiny but complete run for tests and debugging (unlike "
        "--quick it keeps --epochs; the two combine); not comparable with full runs",
    )
    return p


def parse(p: argparse.ArgumentParser, argv=None) -> Options:
    """The parsed flags as `Options` (argparse exits with status 2 on a bad flag).

    Raises:
      UsageError: see `options`.
    """
    return options(p.parse_args(argv))


def options(args: argparse.Namespace) -> Options:
    """The `Options` among parsed flags (others, such as `experiments.run`'s, are left out).

    Raises:
      UsageError: a folder a library would read as syntax (see `path_problem`), or a folder
        Orbax must write or read has a name this locale cannot decode.
    """
    given = vars(args)
    opts = Options(
        **{f.name: given[f.name] for f in dataclasses.fields(Options) if f.name in given}
    )
    tfds_dir = (opts.data_dir or os.environ.get("TFDS_DATA_DIR")) if opts.source == "tfds" else None
    for flag, path, reader in (
        ("--out", opts.out, "orbax"),
        ("--encoder", opts.encoder, "orbax"),
        ("--data-dir" if opts.data_dir else "TFDS_DATA_DIR", tfds_dir, "tfds"),
    ):
        if path is not None and (problem := path_problem(Path(path), reader)) is not None:
            fix = f"pass another with {flag} DIR" if flag.startswith("--") else f"set {flag}"
            raise UsageError(f"{flag} {path}: {problem}; rename the folder or {fix}")
    for flag, path in (("--out", opts.out), ("--encoder", opts.encoder)):
        try:  # tensorstore takes names as UTF-8: a byte the locale could not decode breaks it
            str(path and path.absolute()).encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"{flag} {path}: this locale ({sys.getfilesystemencoding()}) cannot decode the "
                "folder's name, which the checkpoint library needs as text; run with a UTF-8 "
                "locale (e.g. LC_ALL=C.UTF-8) or PYTHONUTF8=1, or use an ASCII name"
            ) from None
    return opts


def path_problem(path: Path, reader: str) -> str | None:
    """Why the library that reads `path` would take part of it as syntax ("orbax": checkpoints
    under --out and --encoder, given the resolved path by `fmnist_jax.checkpoint`; "tfds": its
    data folder, given as written), None when it would not.

    Probed character by character (tests/test_field_faults_paths.py): Orbax finds a checkpoint's
    parts by glob patterns built on its folder's path, so a `[...]` there is a character class
    that does not match the folder itself, and `**` is refused (by etils' glob, also for TFDS);
    tensorstore, which writes the parts, takes `\\` as a separator and names as UTF-8.
    Everything else works (space # % : ; & + $ ' * ? ~ @ ü ...), and any name works for the data
    files, the figures and the compilation cache.
    """
    try:
        full = path.resolve() if reader == "orbax" else path
    except (OSError, RuntimeError):  # a symbolic-link loop: reported where the folder is used
        return None
    text = str(full)
    found = ["'**' (a glob pattern)"] if "**" in text else []
    if reader == "orbax":
        try:  # a byte this locale could not decode is held as a surrogate
            text.encode("utf-8")
        except UnicodeEncodeError:
            return (
                f"this locale ({sys.getfilesystemencoding()}) cannot decode the folder's name, "
                "which the checkpoint library needs as text; run with a UTF-8 locale (e.g. "
                "LC_ALL=C.UTF-8) or PYTHONUTF8=1, or use an ASCII name"
            )
        found += ["a backslash (a folder separator to tensorstore)"] if "\\" in text else []
        found += [
            f"{c!r} (its [...] is a glob pattern)" for c in full.parts if not fnmatchcase(c, c)
        ]
    if not found:
        return None
    library = "the checkpoint library (Orbax)" if reader == "orbax" else "TensorFlow Datasets"
    return (
        f"{'its full path ' + text if reader == 'orbax' else 'it'} holds {' and '.join(found)}, "
        f"which {library} reads as syntax (so it would not find its files there again)"
    )


OOM_HINT = (
    "Use a smaller --batch-size, or fewer --seeds (all seeds train in one program, so "
    "memory grows with --seeds); on several devices --parallel seeds spreads the seeds over "
    "them. Completed configurations are kept: rerun with the same --out to continue (a "
    "changed --batch-size or --seeds is a different configuration: use a new --out, or "
    "--overwrite to replace the old results)."
)
_DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
}


def is_out_of_memory(e: BaseException) -> bool:
    """A device allocation failure (XLA's RESOURCE_EXHAUSTED), or the host's (MemoryError)."""
    text = str(e)
    return (
        isinstance(e, MemoryError)
        or isinstance(e, jax.errors.JaxRuntimeError)
        and ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower())
    )


def main_guard(run: Callable[[], Any]) -> None:
    """Run an entry point: join the processes the environment names (`fmnist_jax.distributed`),
    then run; foreseeable failures become one clear message and an exit status.

    2: usage (bad flags, output folder, batch size, a different configuration in the way, bad
    process settings); 1: data (missing, corrupt, unverified), a checkpoint that cannot be
    written or restored, a JAX backend that cannot start, device out of memory, disk full or
    not writable. Anything else is a bug and keeps its traceback. Output the terminal's
    encoding cannot hold is spelt in ASCII instead of failing.
    """
    io.tolerant_output()
    quiet_orbax_leftovers()
    handle_cache_errors()
    try:
        distributed.initialize()
    except ValueError as e:
        _fail(str(e), 2)
    try:
        run()
    except UsageError as e:
        _fail(str(e), 2)
    except (DataError, CheckpointError) as e:
        _fail(str(e), 1)
    except Exception as e:  # noqa: BLE001 - only the kinds below are handled, the rest re-raised
        if is_out_of_memory(e):
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            _fail(f"the device ran out of memory ({first}).\n{OOM_HINT}", 1)
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            where = f" writing {e.filename}" if e.filename else ""
            _fail(
                f"{e.strerror or e}{where}. Free space or fix permissions (or choose another "
                "--out), then rerun the same command: completed configurations are kept and "
                "files are written atomically, so nothing half-written is left.",
                1,
            )
        if (problem := placement.backend_problem()) is not None:  # where JAX first touched it
            _fail(problem, 1)
        raise


def _fail(message: str, status: int) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


@functools.cache  # once per process
def quiet_orbax_leftovers() -> None:
    """Drop the noise orbax-checkpoint 0.12 leaves after a checkpoint operation failed (the
    failure itself is reported once, by the caller): the reads a failed restore had in flight
    end after their event loop closed, each an unraisable "Event loop is closed" traceback
    (dozens, at exit or later), or, when one of them failed first, asyncio logs "Future
    exception was never retrieved" with tensorstore's error (depends on timing: seen in 1 of
    8 failed restores); a failed write logs a traceback from each of its threads, and may
    leave a "_GatheringFuture exception was never retrieved" from orbax.
    Anything else passes. No upstream issue was found for it (github.com/google/orbax issues
    searched for "Event loop is closed"): recheck on upgrading, since other versions are left
    alone."""
    if not ocp.__version__.startswith("0.12."):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("absl").addFilter(
        lambda record: "_SignalingThread.run() raised an exception" not in record.getMessage()
    )
    logging.getLogger("asyncio").addFilter(lambda record: not _orbax_future_left(record))


def _orbax_future_left(record: logging.LogRecord) -> bool:
    """Whether `record` is asyncio's "(_Gathering)Future exception was never retrieved" for an
    error raised inside orbax or tensorstore (a failed checkpoint operation's leftover)."""
    text = record.getMessage()
    if "exception was never retrieved" not in text:
        return False
    if record.exc_info:
        text += "".join(traceback.format_exception(*record.exc_info))
    return "tensorstore" in text or "orbax" in text


@functools.cache  # once per process
def handle_cache_errors() -> None:
    """Route JAX's warnings that an entry of its compilation cache could not be read or written
    (several lines each, once per program, see `fmnist_jax.compilation_cache`) through
    `compilation_cache.after_warning`, which removes what they left damaged, turns the cache off
    at the first write error and gives one line instead. Every such warning is seen (also under
    `-W error` or `ignore`, which would leave its damage behind); other warnings pass as before."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        said = compilation_cache.after_warning(str(message))
        if said is None:
            previous(message, category, filename, lineno, file, line)
        else:
            print(said, file=sys.stderr, flush=True)

    warnings.showwarning = show
    warnings.filterwarnings("always", message=compilation_cache.CACHE_ERROR.pattern)
