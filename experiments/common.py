"""What every experiment module shares: command-line flags and their validation, data loading,
and the sweep driver (skip complete runs, resume partial ones, reuse identical ones, write the
per-configuration results and the sweep's summary)."""

from __future__ import annotations

import argparse
import dataclasses
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


# ----------------------------------------------------------------------------------------------
# Flags


def _number(kind, name: str, *, low=None, high=None, low_open=False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a {kind.__name__}, got {text!r}")
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

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def progress(self) -> bool:
        return not self.args.quiet


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"the output folder {out} is not writable ({e.strerror or e}); "
                         "choose another with --out DIR") from None


def load_data(args) -> TaskData:
    data = load_task(args.data_dir, args.source, split_seed=args.split_seed,
                     verify=not args.allow_unverified_data)
    if args.quick:
        data = dataclasses.replace(
            data, train_images=data.train_images[:QUICK_TRAIN], train_labels=data.train_labels[:QUICK_TRAIN],
            val_images=data.val_images[:QUICK_VAL], val_labels=data.val_labels[:QUICK_VAL],
            info={**data.info, "quick": True,
                  "counts": {"train": QUICK_TRAIN, "val": QUICK_VAL, "test": len(data.test_labels)}})
    return data


def make_context(args) -> Context:
    check_writable(args.out)
    compilation_cache.enable()
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    data = load_data(args)
    return Context(args=args, data=data, out=args.out, seeds=list(range(args.seeds)), log=log)


def main_guard(run: Callable[[], Any]) -> None:
    """Run an entry point: usage and data errors become one clear line and an exit status."""
    try:
        run()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except MemoryError:
        print("error: out of memory; use a smaller --batch-size or fewer --seeds", file=sys.stderr)
        sys.exit(1)


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

    def payload(self, ctx: Context) -> dict:
        return {
            "train_config": results.config_to_dict(self.cfg),
            "extra": dict(self.extra),
            "seeds": ctx.seeds,
            "data": {k: ctx.data.info.get(k) for k in ("source", "split_seed", "val_fraction",
                                                       "counts", "standardised", "quick")},
        }


def run_config_json(ctx: Context, experiment: str, spec: Spec) -> dict:
    payload = spec.payload(ctx)
    return {
        "experiment": experiment, "name": spec.name, "label": spec.label,
        "fingerprint": results.config_fingerprint(payload), **payload,
        "data_info": ctx.data.info, "environment": results.environment(),
        "command": " ".join([os.path.basename(sys.executable), "-m", *sys.argv]),
    }


def _status(run_dir: Path, fingerprint: str, overwrite: bool) -> str:
    """'new', 'skip' (complete, same config), 'resume' (partial, same config); else refuse."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    try:
        existing = io.read_json(run_dir / "config.json").get("fingerprint")
    except (OSError, ValueError):
        existing = None
    if existing == fingerprint:
        return "skip" if results.is_complete(run_dir) else "resume"
    if overwrite:
        return "replace"
    raise UsageError(
        f"{run_dir} holds results of a different configuration; pass --overwrite to replace "
        "them, or --out DIR to write elsewhere")


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


def run_sweep(ctx: Context, experiment: str, specs: Sequence[Spec],
              execute: Callable[[Context, Spec, Path], None], *, title: str,
              extra_columns: Mapping[str, Callable[[dict], str]] | None = None,
              curve_metrics: Sequence[str] = ("val_accuracy", "val_loss")) -> list[dict]:
    """Run every spec not already complete, then write `<out>/<experiment>/summary.md`."""
    sweep_dir = ctx.out / experiment
    # Decide for every configuration before training anything, so a refusal loses no work.
    plan = []
    for spec in specs:
        run_dir = sweep_dir / spec.name
        config = run_config_json(ctx, experiment, spec)
        plan.append((spec, run_dir, config, _status(run_dir, config["fingerprint"], ctx.args.overwrite)))

    from experiments import interrupt
    interrupt.set_message(f"completed configurations are kept in {sweep_dir}; rerun the same "
                          "command to resume (a run in progress continues from its last epoch)")
    for spec, run_dir, config, status in plan:
        if status == "skip":
            ctx.log(f"[{experiment}] {spec.name}: complete, skipped")
            continue
        if status == "replace":
            results.remove_tree(run_dir)
        source = find_completed(ctx.out, config["fingerprint"], run_dir)
        if source is not None:
            results.copy_run(source, run_dir)
            io.write_json(run_dir / "config.json", {**io.read_json(source / "config.json"),
                                                    "experiment": experiment, "name": spec.name,
                                                    "label": spec.label, "reused_from": str(source)})
            ctx.log(f"[{experiment}] {spec.name}: identical to {source}, reused")
            continue
        ctx.log(f"[{experiment}] {spec.name}: {'resuming' if status == 'resume' else 'training'}")
        run_dir.mkdir(parents=True, exist_ok=True)
        results.clean_stale_temporaries(run_dir)
        io.write_json(run_dir / "config.json", config)
        execute(ctx, spec, run_dir)

    rows = [summary_row(sweep_dir / spec.name, spec) for spec in specs]
    write_summary(ctx, experiment, title, rows, extra_columns or {}, curve_metrics)
    return rows


def train_classifier(
    ctx: Context, spec: Spec, run_dir: Path, *, init_hook=None, extra_history: Mapping | None = None,
    extra_metrics: Mapping | None = None, extra_figures: Mapping | None = None,
    checkpoint_name: str = "checkpoint",
) -> FitResult:
    """Train a classifier configuration (all seeds at once) and write its results folder."""
    data = ctx.data
    ckpt = run_dir / checkpoint_name
    result = fit(
        spec.cfg, (data.train_images, data.train_labels),
        {"val": (data.val_images, data.val_labels), "test": (data.test_images, data.test_labels)},
        ctx.seeds, learning_rates=spec.learning_rates, init_hook=init_hook, checkpoint_dir=ckpt,
        parallel=ctx.args.parallel, progress=ctx.progress, desc=spec.name,
    )
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
    if not ctx.args.keep_checkpoints:
        results.remove_tree(ckpt)
    return result


def jax_first_member(tree):
    import jax

    return jax.tree_util.tree_map(lambda x: x[0], tree)


# ----------------------------------------------------------------------------------------------
# Summaries


def fmt(ms: Mapping | None, scale: float = 100.0, digits: int = 2) -> str:
    """'mean ± std' of a {"mean","std"} entry (percent by default)."""
    if not ms:
        return "–"
    return f"{ms['mean'] * scale:.{digits}f} ± {ms['std'] * scale:.{digits}f}"


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
        verdict_text(choice), "",
        *[f"![{f}]({f})" for f in figures], "",
    ])
    io.write_text(sweep_dir / "summary.md", text)
    io.write_json(sweep_dir / "choice.json", choice)
    ctx.log("\n" + verdict_text(choice).replace("**", ""))
