"""A sweep: its configurations (`Spec`), the plan for each (`Planned`: train, resume, skip, copy
or replace), training one row, and writing its results folder and the sweep's summary.

Nothing is trained twice. A configuration whose fingerprint matches a completed folder anywhere
under `--out` is copied from it. Within one invocation (`Context.runs`), a configuration this
process already trained is written from memory, and a longer run of a constant-rate
configuration continues the longest shorter one: the epochs sweep trains 3 epochs, then 2 more
for its 5-epoch row, and so on (bit for bit the numbers of separate runs: tested). A `Spec` with
a `start` continues that run's end (Question 1's tuned row continues the `expand` row).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from experiments import interrupt, monitor
from experiments.cli import UsageError
from experiments.context import NUMERICS_ENV, Context, command_line, numerics_env
from fmnist_jax import curves, distributed, io, plots, results, sweep_report, variant
from fmnist_jax.data import CLASSES
from fmnist_jax.fit import FitResult, fit
from fmnist_jax.models import count_params
from fmnist_jax.train import TrainConfig, TrainState, n_trained_params


@dataclass(frozen=True)
class Spec:
    """One configuration of a sweep: a results folder `name`, its table `label`, what its
    numbers depend on besides the data and seeds, and its `role` in the report ("original":
    the original report's recipe of its question, "tuned": the recipe tuned beyond it), which
    the sweep records in its choice.json."""

    name: str
    label: str
    cfg: TrainConfig
    start: Spec | None = None  # a run whose end this one continues
    pretrain: TrainConfig | None = None  # Question 2: the pretraining its encoder comes from
    encoder: Path | None = None  # Question 2: a given encoder checkpoint instead
    role: str | None = None

    def payload(self, ctx: Context) -> dict:
        """What determines this configuration's numbers (its fingerprint is their hash)."""
        keys = ("source", "split_seed", "val_fraction", "counts", "quick", "digest")
        data = {k: ctx.data.info.get(k) for k in keys}
        if ctx.data.info["classes"] != list(CLASSES):  # the original's predate the variants
            data["classes"] = ctx.data.info["classes"]
        out = {
            "results_version": results.RESULTS_VERSION,
            "train_config": results.config_to_dict(self.cfg),
            "seeds": ctx.seeds,
            "data": data,
        }
        if self.start is not None:
            out["start"] = self.start.payload(ctx)
        if self.pretrain is not None:
            out["pretrain_config"] = results.config_to_dict(self.pretrain)
        if self.encoder is not None:
            out["encoder_checkpoint"] = str(self.encoder)
        if numerics := numerics_env():  # absent when none is set: older fingerprints hold
            out["numerics_env"] = numerics
        return out


@dataclass(frozen=True)
class Sweep:
    """A sweep's folder name, title, configurations, and how one row is run (`execute(ctx,
    spec, run_dir)`, which writes the folder; `train_row` if None). Rows that answer no choice
    (a tuned recipe, the value of pretraining) carry a `note` instead, and may name a
    `reference` row. `question` ("q1", "q2") and `position` (its order among that question's
    sweeps) place it in the report; all of these are recorded in its choice.json. With
    --overwrite, rows in its folder that it does not define are removed, unless
    `keeps_other_rows`."""

    experiment: str
    title: str
    specs: tuple[Spec, ...]
    execute: Callable[[Context, Spec, Path], None] | None = field(default=None, compare=False)
    note: str | None = None
    reference: str | None = None  # with a note: the row the others are compared with
    question: str | None = None
    position: int = 0
    keeps_other_rows: bool = False  # rows beside its own are other commands' (q2_finetune)

    def recorded(self) -> dict:
        """What its choice.json records of it (see `fmnist_jax.sweep_report.write_summary`)."""
        out = {
            "title": self.title,
            "question": self.question,
            "position": self.position,
            "rows": [s.name for s in self.specs],
            "roles": {s.name: s.role for s in self.specs if s.role} or None,
            "note": self.note,
            "reference": self.reference,
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Planned:
    """What to do with one configuration: `status` is "new", "resume" (a partial run of the same
    configuration), "skip" (complete) or "replace" (another configuration, --overwrite)."""

    spec: Spec
    run_dir: Path
    config: dict  # its config.json
    status: str


# ----------------------------------------------------------------------------------------------
# Planning


def config_json(ctx: Context, experiment: str, spec: Spec) -> dict:
    """A row's config.json: its payload and fingerprint, the data, versions and command."""
    payload = spec.payload(ctx)
    return {
        "experiment": experiment,
        "name": spec.name,
        "label": spec.label,
        "fingerprint": results.config_fingerprint(payload),
        **payload,
        "data_info": ctx.data.info,
        "environment": results.environment(),
        "command": command_line(),
    }


def _status(run_dir: Path, config: dict, overwrite: bool) -> str:
    """What to do with `run_dir` for the configuration whose config.json is `config`."""
    if not run_dir.exists() or not any(f for f in run_dir.iterdir() if not results.is_temporary(f)):
        return "new"  # empty, or only what a process killed mid-write left (removed before use)
    try:
        saved, unreadable = io.read_json_object(run_dir / "config.json"), None
    except (OSError, ValueError) as e:  # missing, damaged, not a JSON object
        saved, unreadable = {}, e
    if saved.get("fingerprint") == config["fingerprint"]:
        return "skip" if results.is_complete(run_dir) else "resume"
    if overwrite:
        return "replace"
    what = "complete results" if results.is_complete(run_dir) else "a partial run"
    of = (
        f"whose config.json cannot be read ({unreadable}), so it cannot be matched to this "
        "configuration"
        if unreadable
        else _difference(saved, config)
    )
    raise UsageError(
        f"{run_dir} holds {what} {of}; refused before training this sweep. Pass --overwrite to "
        f"replace {'them' if what == 'complete results' else 'it'}, or --out DIR to write elsewhere"
    )


def check_variant(out: Path, configs: Sequence[dict]) -> None:
    """Refuse to write one variant's results (`fmnist_jax.variant`) into a results folder that
    holds another's, even with --overwrite: the report reads everything under `out` as one
    study, so variants never share one.

    Raises:
      UsageError: a config.json under `out` records another variant.
    """
    ours = variant.of_configs(configs)
    for path in sorted(out.glob("*/*/config.json")) if ours else ():
        try:
            theirs = variant.of_config(io.read_json_object(path))
        except (OSError, ValueError):  # not ours to judge here: `_status` reports it
            continue
        if theirs and (differ := variant.conflicts(ours, theirs)):

            def show(v):
                return ", ".join(f"{k} {v[k]}" for k in differ)

            raise UsageError(
                f"{out} holds results of another variant ({path.parent.relative_to(out)}: "
                f"{show(theirs)}; this command: {show(ours)}); variants never share a results "
                "folder (its report would mix them): pass another --out DIR"
            )


def _check_numerics_env(run_dir: Path, config: dict) -> None:
    """Refuse results made under other values of the variables that change numbers
    (`experiments.context.NUMERICS_ENV`), naming them: the fix is in the environment (often
    inherited from another tool), not in the flags.

    Raises:
      UsageError: `run_dir` holds a run made with other values.
    """
    try:
        theirs = io.read_json_object(run_dir / "config.json").get("numerics_env") or {}
    except (OSError, ValueError):
        return  # nothing there, or not readable: `_status` decides
    ours = config.get("numerics_env", {})
    names = [k for k in NUMERICS_ENV if theirs.get(k) != ours.get(k)]
    if not names:
        return
    fix = [f"-u {k}" for k in names if k not in theirs]  # env takes its options first
    fix += [f"{k}={shlex.quote(theirs[k])}" for k in names if k in theirs]

    def values(env):
        return ", ".join(f"{k}={env[k]}" if k in env else f"{k} unset" for k in names)

    raise UsageError(
        f"{run_dir} was run with {values(theirs)}, this command with {values(ours)}, which "
        "changes the numbers (the two would be mixed); run it as that run was made "
        f"(`env {' '.join(fix)} <this command>`), or write elsewhere with --out DIR "
        "(--overwrite replaces it)"
    )


def _difference(saved: dict, config: dict) -> str:
    """How a folder's config.json differs from this configuration's, in words: the results
    version (other code of this project), else the fields of what the fingerprint hashes."""
    keys = ("train_config", "seeds", "data", "start", "pretrain_config", "encoder_checkpoint")
    if not any(key in saved for key in keys):
        return "of a different configuration (its fingerprint differs)"
    version, ours = saved.get("results_version", 1), config["results_version"]  # 1: unrecorded
    if version != ours:
        older = "older" if isinstance(version, int) and version < ours else "other"
        return (
            f"written by {older} code of this project (results version {version}; this code's "
            f"is {ours}), whose numbers are not this code's"
        )

    def flat(tree, prefix=""):
        if not isinstance(tree, dict):
            return {prefix[:-1]: tree}
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    old, new = flat({k: saved.get(k) for k in keys}), flat({k: config.get(k) for k in keys})
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    words = [f"{k} {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} here" for k in changed]
    more = f" and {len(words) - 3} more" if len(words) > 3 else ""
    return (
        f"of a different configuration ({'; '.join(words[:3]) or 'its fingerprint differs'}{more})"
    )


def plan(ctx: Context, sweep: Sweep) -> list[Planned]:
    """What to do with each configuration, decided before anything trains.

    Raises:
      UsageError: a folder holds another configuration's results (and no --overwrite), or
        `--out` holds another variant's (see `check_variant`).
    """
    configs = [config_json(ctx, sweep.experiment, spec) for spec in sweep.specs]
    check_variant(ctx.out, configs)
    out = []
    for spec, config in zip(sweep.specs, configs, strict=True):
        run_dir = ctx.out / sweep.experiment / spec.name
        if not ctx.opts.overwrite:
            _check_numerics_env(run_dir, config)
        status = _status(run_dir, config, ctx.opts.overwrite)
        out.append(Planned(spec, run_dir, config, status))
    return out


def find_completed(out: Path, fingerprint: str, exclude: Path) -> Path | None:
    """A complete results folder under `out` (other than `exclude`) with this fingerprint."""
    for config in sorted(out.glob("*/*/config.json")):
        run_dir = config.parent
        if run_dir.resolve() == exclude.resolve():
            continue
        try:
            found = io.read_json_object(config).get("fingerprint")
        except (OSError, ValueError):
            continue
        if found == fingerprint and results.is_complete(run_dir):
            return run_dir
    return None


def copy_run(source: Path, run_dir: Path, config: dict) -> None:
    """Copy a completed identical run: its files and folders (an `encoder/` checkpoint), then its
    config.json, then metrics.json last (its presence marks completion), each atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.iterdir()):
        if f.name.startswith((".", "checkpoint")) or f.name in ("metrics.json", "config.json"):
            continue
        if f.is_dir():
            results.remove_tree(run_dir / f.name)
            if distributed.is_writer():
                shutil.copytree(f, run_dir / f.name)
        else:
            io.write_bytes(run_dir / f.name, f.read_bytes())
    io.write_json(run_dir / "config.json", config)
    io.write_bytes(run_dir / "metrics.json", (source / "metrics.json").read_bytes())


# ----------------------------------------------------------------------------------------------
# Training


def _stem(ctx: Context, spec: Spec) -> str:
    """The fingerprint of `spec` without its length: runs that differ only in epochs share it."""
    return results.config_fingerprint(
        spec.payload(ctx) | {"train_config": results.config_to_dict(spec.cfg.replace(epochs=0))}
    )


def _continues(done: FitResult, cfg: TrainConfig) -> bool:
    """Whether `cfg` is `done` trained for longer at a constant rate (so continuing `done` is
    exactly training `cfg` from the start)."""
    return (
        cfg.optimizer.schedule == "constant"
        and done.epochs_run == done.cfg.epochs < cfg.epochs
        and cfg.replace(epochs=done.cfg.epochs) == done.cfg
    )


def train(
    ctx: Context,
    spec: Spec,
    checkpoint_dir: Path,
    *,
    init: TrainState | None = None,
    tensorboard: Path | None = None,
) -> FitResult:
    """Fit `spec` on the context's data and seeds, building on what this process trained: the
    same configuration again is returned as it is, a shorter one at a constant rate is continued,
    and a `spec.start` is obtained the same way (trained if need be, checkpointing beside
    `checkpoint_dir`) and continued. A rerun resumes from `checkpoint_dir`.

    `init`: stacked states to start from (e.g. a pretrained encoder in fresh classifiers).
    `tensorboard`: the folder of the run's event files (`experiments.monitor.RunLog`), written
    as it trains; `--profile` traces an epoch here (`experiments.monitor.EpochTrace`).
    """
    log = monitor.RunLog(tensorboard, ctx.seeds, monitor.flat_hparams(spec.cfg, spec.pretrain))
    try:
        result = _train(ctx, spec, checkpoint_dir, init, log)
        log.write(result.history)  # epochs no fit trained here: a finished run resumed, a reuse
    finally:
        log.close()
        ctx.trace.stop()  # a run that stopped before its traced epoch ended
    return result


def _train(
    ctx: Context, spec: Spec, checkpoint_dir: Path, init: TrainState | None, log: monitor.RunLog
) -> FitResult:
    """`train` without its event files and trace."""
    stem = _stem(ctx, spec)
    done = ctx.runs.get(stem)
    if done is not None and done.cfg == spec.cfg:
        ctx.log(f"  {spec.name}: the same run as one trained earlier in this invocation")
        return done
    start = None
    if spec.start is not None:
        start = train(
            ctx, spec.start, checkpoint_dir.with_name(f"{checkpoint_dir.name}_{spec.start.name}")
        )
        init = None
    elif done is not None and _continues(done, spec.cfg):
        start, init = done, None
    if start is not None:
        ctx.log(f"  {spec.name}: continues the {start.epochs_run}-epoch run")
    trace = ctx.trace.hook(spec.name, spec.cfg.epochs)

    def on_epoch(history):
        log.write(history)
        trace(history)

    data = ctx.data
    result = fit(
        spec.cfg,
        (data.train_images, data.train_labels),
        {"val": (data.val_images, data.val_labels), "test": (data.test_images, data.test_labels)},
        ctx.seeds,
        init=init,
        start=start,
        checkpoint_dir=checkpoint_dir,
        parallel=ctx.opts.parallel,
        progress=ctx.progress,
        desc=spec.name,
        on_epoch=on_epoch,
    )
    if done is None or result.epochs_run >= done.epochs_run:
        ctx.runs[stem] = result
    return result


def remove_checkpoints(ctx: Context, run_dir: Path) -> None:
    """Remove a finished row's resume checkpoints (unless --keep-checkpoints)."""
    if not ctx.opts.keep_checkpoints:
        for folder in run_dir.glob("checkpoint*"):
            results.remove_tree(folder)


def train_row(ctx: Context, spec: Spec, run_dir: Path) -> None:
    """Train a classifier row (see `train`) and write its results folder."""
    result = train(ctx, spec, run_dir / "checkpoint", tensorboard=run_dir / monitor.TENSORBOARD)
    write_row(ctx, spec, run_dir, result)
    remove_checkpoints(ctx, run_dir)


def write_row(
    ctx: Context,
    spec: Spec,
    run_dir: Path,
    result: FitResult,
    *,
    extra_metrics: dict | None = None,
    extra_history: dict | None = None,
    figures: dict | None = None,
) -> None:
    """A classifier row's results folder from its run (config.json is already there):
    history.json, {val,test}_predictions.npy [seeds, n_images], labels.npz, the figures,
    metrics.json last."""
    data = ctx.data
    test, val = result.final["test"], result.final["val"]
    metrics = results.classifier_metrics(
        data.test_labels,
        test["predictions"],
        val["accuracy"],
        data.class_names,
        test_loss=test["loss"],
        val_loss=val["loss"],
        diverged=result.diverged,
    )
    params = jax.tree_util.tree_map(lambda x: x[0], result.states.params)
    metrics.update(
        {
            "seeds": ctx.seeds,
            "epochs_run": result.epochs_run,
            "optimizer_steps": np.asarray(result.states.step).tolist(),
            "n_params": count_params(params),
            "n_trained_params": n_trained_params(spec.cfg, params),
            "val_loss_roughness": curves.roughness(result.history["val_loss"]),
            "fit_diagnosis": curves.diagnose(
                result.history, decayed=spec.cfg.optimizer.schedule == "wsd"
            ),
            "timing": result.timing,
            "parallel": result.parallel,
            "member_map": result.member_map,
            **(extra_metrics or {}),
        }
    )
    history = {"epoch": list(range(1, result.epochs_run + 1)), **result.history}
    confusion = np.asarray(test["confusion"]).sum(axis=0)
    draw = {
        "learning_curves.png": lambda p: plots.learning_curves(
            result.history, p, title=f"{spec.label}: learning curves"
        ),
        "confusion_matrix.png": lambda p: plots.confusion_matrix(
            confusion, data.class_names, p, title=f"{spec.label}: test confusion (sum over seeds)"
        ),
        **(figures or {}),
    }
    results.write_run(
        run_dir,
        history={**history, **(extra_history or {})},
        metrics=metrics,
        figures=draw,
        predictions={"val": val["predictions"], "test": test["predictions"]},
        labels={"val": data.val_labels, "test": data.test_labels},
    )


# ----------------------------------------------------------------------------------------------
# Running a sweep


def run_planned(ctx: Context, sweep: Sweep, item: Planned) -> None:
    """Do what the plan says for one configuration, leaving its folder complete (and named in
    `ctx.trained` or `ctx.reused` if this wrote it)."""
    where = f"[{sweep.experiment}] {item.spec.name}"
    if item.status == "skip":
        remove_checkpoints(ctx, item.run_dir)  # a process stopped between results and cleanup
        ctx.log(f"{where}: complete, skipped")
        return
    if item.status == "replace":
        results.remove_tree(item.run_dir)
    source = find_completed(ctx.out, item.config["fingerprint"], item.run_dir)
    if source is not None:
        ours = {"experiment": sweep.experiment, "name": item.spec.name, "label": item.spec.label}
        config = {**io.read_json(source / "config.json"), **ours, "reused_from": str(source)}
        copy_run(source, item.run_dir, config)
        ctx.log(f"{where}: identical to {source}, reused")
        ctx.reused.append(item.run_dir)
        return
    if item.status == "resume" and (item.run_dir / "metrics.json").is_file():  # damaged since
        print(
            f"warning: {item.run_dir / 'metrics.json'} cannot be read as complete results; this "
            "configuration is run again (from its last checkpoint, if kept)",
            file=sys.stderr,
            flush=True,
        )
    ctx.log(f"{where}: {'resuming' if item.status == 'resume' else 'training'}")
    item.run_dir.mkdir(parents=True, exist_ok=True)
    results.clean_stale_temporaries(item.run_dir)
    io.write_json(item.run_dir / "config.json", item.config)
    (sweep.execute or train_row)(ctx, item.spec, item.run_dir)
    ctx.trained.append(item.run_dir)


def run_sweep(ctx: Context, sweep: Sweep) -> tuple[list[str], list[str]]:
    """Run every configuration not already complete, then write the sweep's summary.md,
    choice.json and overlay figures. -> (trained, reused): the result folders (relative to
    `--out`) it trained (Question 2: with the pretrainings) and copied from identical runs.

    Raises:
      UsageError: a folder holds another configuration's results (before anything trains).
    """
    before = len(ctx.trained), len(ctx.reused)
    sweep_dir = ctx.out / sweep.experiment
    results.clean_stale_temporaries(sweep_dir)  # a killed summary write
    planned = plan(ctx, sweep)
    if ctx.opts.overwrite and not sweep.keeps_other_rows:
        remove_other_rows(ctx, sweep)
    interrupt.set_message(
        f"completed configurations are kept in {ctx.out}; rerun the same "
        "command to resume (a run in progress continues from its last epoch)"
    )
    for item in planned:
        run_planned(ctx, sweep, item)
    verdict, warnings = sweep_report.write_summary(sweep_dir, sweep.recorded())
    for line in warnings:
        ctx.log(line)
    # The verdict is the sweep's answer: printed even with --quiet (which only hides progress).
    print("\n" + verdict, flush=True)
    trained, reused = ctx.trained[before[0] :], ctx.reused[before[1] :]
    return [str(p.relative_to(ctx.out)) for p in trained], [
        str(p.relative_to(ctx.out)) for p in reused
    ]


def remove_other_rows(ctx: Context, sweep: Sweep) -> None:
    """--overwrite: remove the row folders of this sweep's experiment that it no longer defines
    (e.g. older code's rows), so that no comparison of results trees finds them. Only folders
    whose config.json names this experiment are touched."""
    sweep_dir, names = ctx.out / sweep.experiment, {s.name for s in sweep.specs}
    for folder in sorted(sweep_dir.iterdir()) if sweep_dir.is_dir() else ():
        try:
            saved = io.read_json_object(folder / "config.json")
        except (OSError, ValueError):
            continue
        if folder.name not in names and saved.get("experiment") == sweep.experiment:
            ctx.log(f"[{sweep.experiment}] {folder.name}: not a row of this sweep, removed")
            results.remove_tree(folder)


def check_all(ctx: Context, sweeps: Sequence[Sweep]) -> None:
    """Plan every sweep before any trains, so that a refusal (UsageError) loses no work."""
    for sweep in sweeps:
        plan(ctx, sweep)
