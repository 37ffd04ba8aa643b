"""What every experiment module shares: command-line flags and their validation, data loading,
and the sweep driver (skip complete runs, resume partial ones, reuse identical ones, write the
per-configuration results and the sweep's summary)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fmnist_jax import compilation_cache, curves, io, plots, results
from fmnist_jax.augment import AugmentConfig
from fmnist_jax.data import SOURCES, DataError, TaskData, load_task
from fmnist_jax.fit import PARALLEL_MODES, FitResult, fit
from fmnist_jax.models import POOLS, count_params
from fmnist_jax.train import OPTIMIZERS, TrainConfig

DEFAULT_OUT = Path("results")
QUICK_TRAIN, QUICK_VAL = 600, 300  # --quick: a few hundred images, one epoch, full test set


class UsageError(Exception):
    """A mistake in the command line or the output folder: exit status 2, nothing trained."""


class WorkerFailed(Exception):
    """A worker process (experiments.workers) failed; it printed why. Exit with its status."""

    def __init__(self, message: str, exit_status: int = 1):
        super().__init__(message)
        self.exit_status = exit_status


# ----------------------------------------------------------------------------------------------
# Flags


def _number(kind, name: str, *, low=None, high=None, low_open=False):
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
                f"{name} must be {'>' if low_open else '>='} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{name} must be <= {high}, got {text}")
        return value
    return parse


def parser(description: str, *, epochs: int | None = 5, lr: float | None = 1e-3) -> argparse.ArgumentParser:
    """The flags every experiment takes (DESIGN §5)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("common")
    g.add_argument("--seeds", type=_number(int, "--seeds", low=1), default=3,
                   help="models trained together (seeds 0..N-1), reported as mean ± std")
    g.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root")
    g.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK_TRAIN} train / {QUICK_VAL} val images, 1 epoch (full test set)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--data-dir", type=Path, default=None, help="folder with the four IDX files")
    g.add_argument("--source", choices=SOURCES, default="idx", help="where the data comes from")
    g.add_argument("--allow-unverified-data", action="store_true",
                   help="accept IDX files whose sha256 differs from Fashion-MNIST's")
    g.add_argument("--split-seed", type=_number(int, "--split-seed", low=0), default=0)
    g.add_argument("--overwrite", action="store_true",
                   help="replace existing results of a different configuration instead of refusing")
    g.add_argument("--parallel", choices=PARALLEL_MODES, default="auto",
                   help="how members use several devices")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each run's final Orbax checkpoint (the resume checkpoint is removed otherwise)")
    t = p.add_argument_group("training overrides")
    t.add_argument("--pool", choices=POOLS, default="avg", help="CNN pooling (the report's table used max)")
    if epochs is not None:
        t.add_argument("--epochs", type=_number(int, "--epochs", low=1), default=epochs)
    t.add_argument("--batch-size", type=_number(int, "--batch-size", low=1), default=100)
    if lr is not None:
        t.add_argument("--lr", type=_number(float, "--lr", low=0, low_open=True), default=lr,
                       help="learning rate of the fixed (not swept) runs")
    t.add_argument("--noise-std", type=_number(float, "--noise-std", low=0, high=1), default=0.1,
                   help="sigma of the Gaussian-noise augmentation")
    t.add_argument("--rotation-degrees", type=_number(float, "--rotation-degrees", low=0, high=180),
                   default=10.0, help="rotation augmentation range ±degrees")
    d = p.add_argument_group("debugging and tests")
    d.add_argument("--limit", type=_number(int, "--limit", low=1), default=None, metavar="N",
                   help="use only the first N training images and max(N//5, 50) validation and test "
                        "images (file order): a tiny but complete run for tests and debugging (unlike "
                        "--quick it keeps --epochs; the two combine); not comparable with full runs")
    return p


def augment_config(args) -> AugmentConfig:
    return AugmentConfig(max_degrees=args.rotation_degrees, noise_std=args.noise_std)


# ----------------------------------------------------------------------------------------------
# Context: output folder, data, seeds


@dataclass
class Context:
    args: argparse.Namespace
    data: TaskData
    out: Path
    seeds: list[int]
    log: Callable[[str], None]
    # Called after every trained epoch with (spec, the run so far), e.g. a worker's progress line.
    on_epoch: Callable[[Any, FitResult], None] | None = None

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def progress(self) -> bool:
        return not self.args.quiet


def check_writable(out: Path) -> None:
    """Fail before any work if `out` cannot hold results; leave no trace when it can.

    Probes by really creating the folder and a file in it (permission bits alone say nothing
    when running as root, nor about read-only mounts), then removes whatever the probe created,
    so a run refused later (bad batch size, a different configuration in the way) writes nothing.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another with --out DIR")
    created = []
    try:
        missing = [parent for parent in (out, *out.parents) if not parent.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"the output folder {out} is not writable ({e.strerror or e}"
                         f"{': ' + str(e.filename) if e.filename else ''}); "
                         "choose another with --out DIR") from None
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass


def load_data(args) -> TaskData:
    limit = getattr(args, "limit", None)
    data = load_task(args.data_dir, args.source, split_seed=args.split_seed,
                     verify=not args.allow_unverified_data, limit=limit)
    if args.quick:
        data = dataclasses.replace(
            data, train_images=data.train_images[:QUICK_TRAIN], train_labels=data.train_labels[:QUICK_TRAIN],
            val_images=data.val_images[:QUICK_VAL], val_labels=data.val_labels[:QUICK_VAL])
        data.info.update(quick=True)
    data.info["counts"] = {"train": len(data.train_labels), "val": len(data.val_labels),
                           "test": len(data.test_labels)}
    return data


def check_batch_size(args, data: TaskData) -> None:
    """A batch larger than the training split would give zero steps per epoch: refuse early."""
    n = len(data.train_labels)
    if args.batch_size > n:
        how = " (--quick)" if args.quick else f" (--limit {args.limit})" if getattr(args, "limit", None) else ""
        raise UsageError(f"--batch-size {args.batch_size} is larger than the training split{how}, "
                         f"which has {n} images; use a smaller batch, e.g. --batch-size {min(100, n)}")


def make_context(args) -> Context:
    check_writable(args.out)
    compilation_cache.enable()
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    data = load_data(args)
    check_batch_size(args, data)
    return Context(args=args, data=data, out=args.out, seeds=list(range(args.seeds)), log=log)


OOM_HINT = ("Use a smaller --batch-size, or fewer --seeds (all seeds train in one program, so "
            "memory grows with --seeds); on several devices --parallel seeds spreads the seeds over "
            "them. Completed configurations are kept: rerun with the same --out to continue (a "
            "changed --batch-size or --seeds is a different configuration: use a new --out, or "
            "--overwrite to replace the old results).")


def is_out_of_memory(e: BaseException) -> bool:
    """A device allocation failure (XLA's RESOURCE_EXHAUSTED), whatever JAX version raised it."""
    if isinstance(e, MemoryError):
        return True
    names = {cls.__name__ for cls in type(e).__mro__}
    if not names & {"JaxRuntimeError", "XlaRuntimeError"}:
        return False
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def main_guard(run: Callable[[], Any]) -> None:
    """Run an entry point: foreseeable failures become one clear message and an exit status.

    2: usage (bad flags, output folder, batch size, a different configuration in the way);
    1: data (missing, corrupt, unverified), device out of memory, disk full or not writable.
    Anything else is a bug and keeps its traceback.
    """
    try:
        run()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except WorkerFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_status)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - only the kinds below are handled, the rest re-raised
        if is_out_of_memory(e):
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            print(f"error: the device ran out of memory ({first}).\n{OOM_HINT}", file=sys.stderr)
            sys.exit(1)
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            where = f" writing {e.filename}" if e.filename else ""
            print(f"error: {e.strerror or e}{where}. Free space or fix permissions (or choose "
                  "another --out), then rerun the same command: completed configurations are "
                  "kept and files are written atomically, so nothing half-written is left.",
                  file=sys.stderr)
            sys.exit(1)
        raise


# ----------------------------------------------------------------------------------------------
# Runs and sweeps


@dataclass(frozen=True)
class Spec:
    """One configuration of a sweep."""

    name: str  # folder name
    label: str  # row label in tables
    cfg: TrainConfig
    extra: Mapping[str, Any] = field(default_factory=dict)  # anything else that changes the numbers
    learning_rates: tuple[float, ...] | None = None
    # Shorter configurations of the same sweep whose results this run writes on its way (see
    # plan_snapshots); not part of the configuration itself.
    snapshots: tuple["SnapshotTarget", ...] = field(default=(), compare=False)

    def payload(self, ctx: Context) -> dict:
        return {
            "train_config": results.config_to_dict(self.cfg),
            "extra": dict(self.extra),
            "seeds": ctx.seeds,
            "data": {k: ctx.data.info.get(k) for k in ("source", "split_seed", "val_fraction",
                                                       "counts", "standardised", "quick")},
        }


@dataclass(frozen=True)
class SnapshotTarget:
    """A configuration written from epoch `epochs` of a longer run instead of trained alone."""

    epochs: int
    spec: Spec
    run_dir: Path
    config: dict


def run_config_json(ctx: Context, experiment: str, spec: Spec) -> dict:
    payload = spec.payload(ctx)
    return {
        "experiment": experiment, "name": spec.name, "label": spec.label,
        "fingerprint": results.config_fingerprint(payload), **payload,
        "data_info": ctx.data.info, "environment": results.environment(),
        "command": command_line(),
    }


def command_line() -> str:
    """How this process was started, as `python -m package.module args...`."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    entry = ["-m", spec.name] if spec is not None and spec.name else sys.argv[:1]
    return " ".join([os.path.basename(sys.executable), *entry, *sys.argv[1:]])


def _is_temporary(path: Path) -> bool:
    """A temporary name of fmnist_jax.io's atomic writes (`.<name>.<random>.tmp`)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _status(run_dir: Path, fingerprint: str, overwrite: bool) -> str:
    """'new', 'skip' (complete, same config), 'resume' (partial, same config), 'replace'
    (different config, --overwrite); a different config without --overwrite is refused."""
    if not run_dir.exists() or not any(f for f in run_dir.iterdir() if not _is_temporary(f)):
        return "new"  # empty, or only what a process killed mid-write left (removed before use)
    try:
        existing = io.read_json(run_dir / "config.json").get("fingerprint")
    except (OSError, ValueError):
        existing = None
    if existing == fingerprint:
        return "skip" if results.is_complete(run_dir) else "resume"
    if overwrite:
        return "replace"
    what = "complete results" if results.is_complete(run_dir) else "a partial run"
    raise UsageError(
        f"{run_dir} holds {what} of a different configuration (changed flags, seeds or data); "
        "refused before training this sweep. Pass --overwrite to replace them, or --out DIR to "
        "write elsewhere")


def reuse_run(source: Path, run_dir: Path, config: dict) -> None:
    """Copy a completed identical run: every file, then its config.json, then metrics.json last
    (its presence marks completion), each atomically, so an interrupted copy is resumed as new."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.iterdir()):
        if f.is_file() and f.name not in ("metrics.json", "config.json") and not f.name.startswith("."):
            io.write_bytes(run_dir / f.name, f.read_bytes())
    io.write_json(run_dir / "config.json", config)
    io.write_bytes(run_dir / "metrics.json", (source / "metrics.json").read_bytes())


def find_completed(out: Path, fingerprint: str, exclude: Path) -> Path | None:
    for config in sorted(out.glob("*/*/config.json")):
        run_dir = config.parent
        if run_dir.resolve() == exclude.resolve():
            continue
        try:
            if io.read_json(config).get("fingerprint") == fingerprint and results.is_complete(run_dir):
                return run_dir
        except (OSError, ValueError):
            continue
    return None


def plan_sweep(ctx: Context, experiment: str, specs: Sequence[Spec]) -> list[tuple]:
    """(spec, run_dir, config, status) for every configuration, deciding nothing is in the way:
    raises UsageError (before any training) when a folder holds another configuration's results.
    Entry points that run several sweeps can call it for all of them first."""
    plan = []
    for spec in specs:
        run_dir = ctx.out / experiment / spec.name
        config = run_config_json(ctx, experiment, spec)
        plan.append((spec, run_dir, config, _status(run_dir, config["fingerprint"], ctx.args.overwrite)))
    return plan


def _stable_key(spec: Spec) -> tuple:
    """What must be equal for one run to start another (`train.starts_with`): the configuration
    without its length and decay, and everything else that changes the numbers."""
    from fmnist_jax.train import as_constant
    return (as_constant(spec.cfg).replace(epochs=0), tuple(sorted(spec.extra.items())),
            spec.learning_rates)


def plan_snapshots(ctx: Context, plan: list[tuple]) -> list[tuple]:
    """Let the longest of configurations that share their first epochs write the shorter ones.

    With a constant learning rate a k-epoch run is exactly the first k epochs of a longer run
    with the same seeds, also of one whose schedule decays only after epoch k (`wsd`;
    `train.starts_with`, tested bit for bit), so a sweep over 3/5/8/10 epochs trains 10 epochs,
    not 26. Only configurations still to be trained from scratch, with no identical completed
    run elsewhere to reuse, become snapshots; the host is moved before the first of them. A
    snapshot the host did not reach (it was resumed past that epoch, or every seed diverged
    first) is trained on its own afterwards. -> the plan, reordered, with hosts' specs carrying
    their snapshots.
    """
    from fmnist_jax.train import starts_with, stable_epochs

    todo = [i for i, (spec, _, _, status) in enumerate(plan)
            if status != "skip" and stable_epochs(spec.cfg) > 0]
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        groups.setdefault(_stable_key(plan[i][0]), []).append(i)
    plan = list(plan)
    host_of: dict[int, int] = {}
    for members in groups.values():
        # Longest first: each becomes a host unless an earlier host already writes it.
        for host in sorted(members, key=lambda i: -plan[i][0].cfg.epochs):
            if host in host_of:
                continue
            spec, run_dir, config, status = plan[host]
            targets = []
            for i in members:
                g_spec, g_dir, g_config, g_status = plan[i]
                if (i != host and i not in host_of and g_status == "new"
                        and g_spec.cfg.epochs < spec.cfg.epochs and starts_with(spec.cfg, g_spec.cfg)
                        # One target per epoch: an identical row of another sweep is copied.
                        and all(t.epochs != g_spec.cfg.epochs for t in targets)
                        and find_completed(ctx.out, g_config["fingerprint"], g_dir) is None):
                    targets.append(SnapshotTarget(g_spec.cfg.epochs, g_spec, g_dir, g_config))
                    host_of[i] = host
            if targets:
                plan[host] = (dataclasses.replace(spec, snapshots=tuple(targets)), run_dir, config, status)
    order, placed = [], set()
    for i in range(len(plan)):
        for j in ([host_of[i]] if i in host_of else []) + [i]:
            if j not in placed:
                order.append(plan[j])
                placed.add(j)
    return order


@dataclass(frozen=True)
class Sweep:
    """One sweep: its configurations, how each is run, and how its summary.md is laid out."""

    experiment: str
    specs: Sequence[Spec]
    execute: Callable[[Context, Spec, Path], None]
    title: str
    extra_columns: Mapping[str, Callable[[dict], str]] = field(default_factory=dict)
    curve_metrics: Sequence[str] = ("val_accuracy", "val_loss")


def run_sweep(ctx: Context, experiment: str, specs: Sequence[Spec],
              execute: Callable[[Context, Spec, Path], None], *, title: str,
              extra_columns: Mapping[str, Callable[[dict], str]] | None = None,
              curve_metrics: Sequence[str] = ("val_accuracy", "val_loss"),
              snapshots: bool = False) -> list[dict]:
    """Run every spec not already complete, then write `<out>/<experiment>/summary.md`.

    `snapshots`: configurations that are the first epochs of a longer one are written from it
    (see `plan_snapshots`; `execute` must pass `spec.snapshots` on, as `train_classifier` does).
    """
    sweep = Sweep(experiment, specs, execute, title, extra_columns or {}, curve_metrics)
    return run_sweeps(ctx, [sweep], snapshots=snapshots)[experiment]


def run_sweeps(ctx: Context, sweeps: Sequence[Sweep], *, snapshots: bool = False,
               after_sweep: Callable[[str], None] | None = None,
               workers: str | int = 1) -> dict[str, list[dict]]:
    """`run_sweep` for several sweeps planned together: every folder is checked before anything
    is trained, and with `snapshots` a run may write the shorter configurations of any of them
    (e.g. one sweep's row that is the first epochs of another sweep's). Each sweep's summary.md
    is written (and `after_sweep(experiment)` called) once its last configuration is done.
    `workers` ('auto' or N, see `experiments.workers.cpu_sets`): train the configurations in
    that many processes at once first; then every summary is written.
    -> experiment -> its summary rows."""
    for sweep in sweeps:
        results.clean_stale_temporaries(ctx.out / sweep.experiment)  # a killed summary write
    # Decide for every configuration before training anything, so a refusal loses no work.
    plan, sweep_of = _plan(ctx, sweeps, snapshots)

    from experiments import interrupt
    interrupt.set_message(f"completed configurations are kept in {ctx.out}; rerun the same "
                          "command to resume (a run in progress continues from its last epoch)")
    if workers != 1:
        from experiments import workers as workers_lib
        jobs = [workers_lib.Job(sweep_of[run_dir].experiment, sweep_of[run_dir].execute, spec,
                                run_dir, config, status)
                for spec, run_dir, config, status in to_train(ctx, plan)]
        sets = workers_lib.resolve(workers, len(jobs),
                                   small=ctx.quick or bool(getattr(ctx.args, "limit", None)))
        if len(sets) > 1:
            workers_lib.train(ctx, jobs, sets)
            plan, sweep_of = _plan(ctx, sweeps, snapshots)  # what they trained is complete now

    left = {sweep.experiment: sum(sweep_of[e[1]] is sweep for e in plan) for sweep in sweeps}
    rows: dict[str, list[dict]] = {}
    for spec, run_dir, config, status in plan:
        sweep = sweep_of[run_dir]
        _run_entry(ctx, sweep, spec, run_dir, config, status)
        left[sweep.experiment] -= 1
        if left[sweep.experiment] == 0:
            sweep_dir = ctx.out / sweep.experiment
            rows[sweep.experiment] = [summary_row(sweep_dir / s.name, s) for s in sweep.specs]
            write_summary(ctx, sweep.experiment, sweep.title, rows[sweep.experiment],
                          sweep.extra_columns, sweep.curve_metrics)
            if after_sweep is not None:
                after_sweep(sweep.experiment)
    return rows


def _plan(ctx: Context, sweeps: Sequence[Sweep], snapshots: bool) -> tuple[list[tuple], dict]:
    """-> (the plan of every sweep's configurations, run_dir -> its sweep)."""
    plan, sweep_of = [], {}
    for sweep in sweeps:
        for entry in plan_sweep(ctx, sweep.experiment, sweep.specs):
            plan.append(entry)
            sweep_of[entry[1]] = sweep
    if snapshots:
        plan = plan_snapshots(ctx, plan)
    return plan, sweep_of


def to_train(ctx: Context, plan: Sequence[tuple]) -> list[tuple]:
    """The entries of a plan that train (each writing its snapshots on the way): not complete,
    not written by a longer run, not a copy of an identical run (complete elsewhere, or trained
    or written earlier in this plan)."""
    targets = {t.run_dir for spec, *_ in plan for t in spec.snapshots}
    seen = {config["fingerprint"] for _, run_dir, config, _ in plan if run_dir in targets}
    out = []
    for entry in plan:
        spec, run_dir, config, status = entry
        fingerprint = config["fingerprint"]
        if status == "skip" or run_dir in targets or fingerprint in seen:
            seen.add(fingerprint)
            continue
        seen.add(fingerprint)
        if find_completed(ctx.out, fingerprint, run_dir) is None:
            out.append(entry)
    return out


def _run_entry(ctx: Context, sweep: Sweep, spec: Spec, run_dir: Path, config: dict, status: str) -> None:
    experiment = sweep.experiment
    if status == "new" and results.is_complete(run_dir):
        written = io.read_json(run_dir / "config.json").get("snapshot_of")
        ctx.log(f"[{experiment}] {spec.name}: written from epoch {spec.cfg.epochs} of {written}")
        return
    if status == "skip":
        if not ctx.args.keep_checkpoints:
            # A process stopped between writing the results and removing its checkpoint.
            results.remove_tree(run_dir / "checkpoint")
        ctx.log(f"[{experiment}] {spec.name}: complete, skipped")
        return
    if status == "replace":
        results.remove_tree(run_dir)
    source = find_completed(ctx.out, config["fingerprint"], run_dir)
    if source is not None:
        reuse_run(source, run_dir, {**io.read_json(source / "config.json"), "experiment": experiment,
                                    "name": spec.name, "label": spec.label, "reused_from": str(source)})
        ctx.log(f"[{experiment}] {spec.name}: identical to {source}, reused")
        return
    ctx.log(f"[{experiment}] {spec.name}: {'resuming' if status == 'resume' else 'training'}")
    run_dir.mkdir(parents=True, exist_ok=True)
    results.clean_stale_temporaries(run_dir)
    io.write_json(run_dir / "config.json", config)
    sweep.execute(ctx, spec, run_dir)


def train_classifier(
    ctx: Context, spec: Spec, run_dir: Path, *, init_hook=None, extra_history: Mapping | None = None,
    extra_metrics: Mapping | None = None, extra_figures: Mapping | None = None,
    checkpoint_name: str = "checkpoint",
) -> FitResult:
    """Train a classifier configuration (all seeds at once) and write its results folder, and
    those of `spec.snapshots` on the way (their extras are not supported: none of
    `extra_*`/`init_hook` may be given with snapshots)."""
    data = ctx.data
    ckpt = run_dir / checkpoint_name
    if spec.snapshots and (init_hook or extra_history or extra_metrics or extra_figures):
        raise ValueError("snapshots are only written for plain classifier runs")
    wanted = {t.epochs: t for t in spec.snapshots}

    def on_epoch(partial: FitResult) -> None:
        if ctx.on_epoch is not None:
            ctx.on_epoch(spec, partial)
        target = wanted.get(partial.epochs_run)
        if target is None:
            return
        target.run_dir.mkdir(parents=True, exist_ok=True)
        results.clean_stale_temporaries(target.run_dir)
        io.write_json(target.run_dir / "config.json", {
            **target.config, "snapshot_of": str(run_dir), "snapshot_epoch": target.epochs})
        write_classifier_run(ctx, target.spec, target.run_dir, partial)

    result = fit(
        spec.cfg, (data.train_images, data.train_labels),
        {"val": (data.val_images, data.val_labels), "test": (data.test_images, data.test_labels)},
        ctx.seeds, learning_rates=spec.learning_rates, init_hook=init_hook, checkpoint_dir=ckpt,
        parallel=ctx.args.parallel, progress=ctx.progress, desc=spec.name,
        on_epoch=on_epoch if wanted or ctx.on_epoch is not None else None,
    )
    write_classifier_run(ctx, spec, run_dir, result, extra_history=extra_history,
                         extra_metrics=extra_metrics, extra_figures=extra_figures)
    if not ctx.args.keep_checkpoints:
        results.remove_tree(ckpt)
    return result


def write_classifier_run(ctx: Context, spec: Spec, run_dir: Path, result: FitResult, *,
                         extra_history: Mapping | None = None, extra_metrics: Mapping | None = None,
                         extra_figures: Mapping | None = None) -> None:
    """The results folder of a classifier run (its config.json already written), metrics last."""
    data = ctx.data
    test, val = result.final["test"], result.final["val"]
    payload = results.classifier_metrics(
        test["confusion"], val["accuracy"], data.class_names, test_loss=test["loss"],
        val_loss=val["loss"], diverged=result.diverged)
    n_params = count_params(jax_first_member(result.states.params))
    payload.update({
        "seeds": ctx.seeds,
        "epochs_run": result.epochs_run,
        "n_params": n_params,
        "val_loss_roughness": curves.roughness(result.history["val_loss"]),
        "fit_diagnosis": curves.diagnose(result.history),
        "timing": result.timing,
        "parallel": result.parallel,
        "member_map": result.member_map,
        **(extra_metrics or {}),
    })
    history = {"epoch": list(range(1, result.epochs_run + 1)), **result.history, **(extra_history or {})}
    cm_sum = np.asarray(test["confusion"]).sum(axis=0)
    figures = {
        "learning_curves.png": lambda p: plots.learning_curves(
            result.history, p, title=f"{spec.label}: learning curves"),
        "confusion_matrix.png": lambda p: plots.confusion_matrix(
            cm_sum, data.class_names, p, title=f"{spec.label}: test confusion (sum over seeds)"),
        **(extra_figures or {}),
    }
    results.write_run(run_dir, config=io.read_json(run_dir / "config.json"), history=history,
                      test_predictions=test["predictions"], metrics_payload=payload, figures=figures)


def jax_first_member(tree):
    import jax

    return jax.tree_util.tree_map(lambda x: x[0], tree)


# ----------------------------------------------------------------------------------------------
# Summaries


def fmt(ms: Mapping | None, scale: float = 100.0, digits: int = 2) -> str:
    """'mean ± std' of a {"mean","std"} entry (percent by default)."""
    if not ms:
        return "–"
    # JSON keeps NaN (a diverged seed) as the string "nan"; float() reads it back.
    return f"{float(ms['mean']) * scale:.{digits}f} ± {float(ms['std']) * scale:.{digits}f}"


def summary_row(run_dir: Path, spec: Spec) -> dict:
    m = io.read_json(run_dir / "metrics.json")
    return {"name": spec.name, "label": spec.label, "dir": run_dir, "metrics": m,
            "history": io.read_json(run_dir / "history.json")}


def choose(rows: Sequence[dict], key: str = "val_accuracy") -> dict:
    """The configuration with the best mean validation accuracy, compared with the runner-up:
    the difference counts as real when it exceeds the combined seed spread sqrt(s1² + s2²)."""
    ok = [r for r in rows if not r["metrics"].get("n_diverged")] or list(rows)
    ranked = sorted(ok, key=lambda r: -r["metrics"][key]["mean"])
    best = ranked[0]
    out = {"choice": best["name"], "label": best["label"], "val": best["metrics"][key],
           "test": best["metrics"]["test_accuracy"]}
    if len(ranked) > 1:
        second = ranked[1]
        diff = best["metrics"][key]["mean"] - second["metrics"][key]["mean"]
        spread = math.hypot(best["metrics"][key]["std"], second["metrics"][key]["std"])
        out.update(runner_up=second["name"], runner_up_label=second["label"], difference=diff,
                   spread=spread, significant=bool(diff > spread))
    return out


def verdict_text(choice: Mapping) -> str:
    text = (f"Choice on validation: **{choice['label']}** (val {fmt(choice['val'])}%, "
            f"test {fmt(choice['test'])}%).")
    if "runner_up" in choice:
        rel = "larger" if choice["significant"] else "not larger"
        text += (f" Runner-up: {choice['runner_up_label']}; the validation difference "
                 f"{choice['difference'] * 100:.2f} points is {rel} than the seed-to-seed spread "
                 f"({choice['spread'] * 100:.2f} points).")
    return text


def summary_table(rows: Sequence[dict], class_names: Sequence[str],
                  extra_columns: Mapping[str, Callable[[dict], str]]) -> str:
    head = ["configuration", "test acc %", "val acc %", *[f"{c} %" for c in class_names],
            *extra_columns, "train time s", "diverged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        pc = m.get("per_class_test_accuracy", {})
        cells = [r["label"], fmt(m.get("test_accuracy")), fmt(m.get("val_accuracy")),
                 *[fmt(pc.get(c), digits=1) for c in class_names],
                 *[f(m) for f in extra_columns.values()],
                 f"{m.get('timing', {}).get('wall_s', float('nan')):.0f}",
                 f"{m.get('n_diverged', 0)}/{len(m.get('diverged', []))}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(ctx: Context, experiment: str, title: str, rows: Sequence[dict],
                  extra_columns: Mapping[str, Callable[[dict], str]],
                  curve_metrics: Sequence[str]) -> None:
    sweep_dir = ctx.out / experiment
    choice = choose(rows)
    figures = []
    for metric in curve_metrics:
        name = f"sweep_{metric}.png"
        plots.overlay_curves({r["label"]: r["history"] for r in rows}, sweep_dir / name,
                             title=f"{title}: {metric.replace('_', ' ')}", metric=metric)
        figures.append(name)
    text = "\n".join([
        f"# {title}", "",
        f"Seeds: {len(ctx.seeds)} per configuration; mean ± std over seeds. Chosen on the "
        "validation split; test reported.", "",
        summary_table(rows, ctx.data.class_names, extra_columns), "",
        *divergence_lines(rows),
        verdict_text(choice), "",
        *[f"![{f}]({f})" for f in figures], "",
    ])
    io.write_text(sweep_dir / "summary.md", text)
    io.write_json(sweep_dir / "choice.json", choice)
    for line in divergence_lines(rows)[:-1]:
        ctx.log(line.replace("**", ""))
    # The verdict is the sweep's answer: printed even with --quiet (which only hides progress).
    print("\n" + verdict_text(choice).replace("**", ""), flush=True)


def divergence_lines(rows: Sequence[dict]) -> list[str]:
    """A warning paragraph naming every configuration with a diverged (NaN/inf) seed."""
    bad = [r for r in rows if r["metrics"].get("n_diverged")]
    if not bad:
        return []
    names = "; ".join(f"{r['label']} ({r['metrics']['n_diverged']}/{len(r['metrics'].get('diverged', []))} seeds)"
                      for r in bad)
    return [f"**Diverged** (loss became NaN/inf; those seeds stopped early and their numbers are "
            f"meaningless; configurations with a diverged seed are not chosen unless all are): {names}.", ""]
