"""The whole study in one command: Question 1's three CNN sweeps, Question 2's autoencoder
sweeps, the inference speed of both models, then `<out>/REPORT.md`.

    python -m experiments.study [--seeds 3] [--out results] [--quick] [--quiet] [--pool avg|max]
    python -m experiments.study --report-only [--out results]   # rebuild REPORT.md, train nothing

Each question runs with its own defaults (Q1: 5 epochs, Adam 1e-3, batch 100, online
augmentation with rotation ±10° and noise σ 0.1; Q2: 10 epochs of pretraining then 10 of
fine-tuning, Adam 1e-3, base architecture, denoising σ 0.3); the flags here are the ones both
share. The data are loaded once. Completed configurations are skipped, so rerunning the same
command after an interruption resumes where it stopped and then writes the report.

`<out>/study.json` records the study's wall time (summed over the invocations that trained
something), the inference images/s of both models and the environment. A rerun that trains
nothing leaves it untouched, so the report it rebuilds is identical.
"""

if __name__ == "__main__":
    from experiments import interrupt

    interrupt.install()

import argparse
import dataclasses
import datetime as _dt
import os
import sys
import time
from pathlib import Path

from experiments import common, q1, q2
from fmnist_jax import io, report, results

Q1_SWEEPS = q1.ORDER  # planned together (`q1.run_all`): see there for the order
Q2_SWEEPS = q2.SWEEPS
INFERENCE_BATCH = 1000


def parser() -> argparse.ArgumentParser:
    p = common.parser("The whole study: Question 1's CNN sweeps, Question 2's autoencoder sweeps, "
                      "inference speed, then <out>/REPORT.md. Completed configurations are skipped "
                      "(rerun to resume).", epochs=None, lr=None)
    p.prog = "python -m experiments.study"
    q1.add_flags(p)  # --workers (Question 1's CNN configurations)
    p.add_argument("--report-only", action="store_true",
                   help="rebuild REPORT.md from the results under --out, training nothing")
    return p


def _question_defaults(question: str) -> dict:
    """The defaults of a question's own entry points (so they cannot drift apart)."""
    if question == "q1":
        p = common.parser("q1")
        q1.add_flags(p)
        return vars(p.parse_args([]))
    p = common.parser("q2", epochs=10, lr=1e-3)
    q2.add_flags(p)
    return vars(p.parse_args([]))


def question_args(args: argparse.Namespace, question: str) -> argparse.Namespace:
    """The question's defaults, overridden by every flag the study shares with it."""
    values = _question_defaults(question)
    values.update({k: v for k, v in vars(args).items() if k in values})
    return argparse.Namespace(**values)


# ----------------------------------------------------------------------------------------------
# What changed on disk (so a rerun that trains nothing leaves study.json alone)


def snapshot(out: Path) -> dict[str, float]:
    files = [*out.glob("*/*/metrics.json")]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def changed(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """Result folders (`<experiment>/<config>`) whose metrics.json appeared or changed."""
    return sorted(str(Path(k).parent) for k, v in after.items() if before.get(k) != v)


def split_written(out: Path, folders: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(trained, snapshots, reused): a snapshot was written from a longer run of the same
    configuration as it passed its epochs; a reused folder is a copy of an identical completed run."""
    trained, snapshots, reused = [], [], []
    for folder in folders:
        try:
            config = io.read_json(out / folder / "config.json")
        except (OSError, ValueError):
            config = {}
        (reused if config.get("reused_from") else snapshots if config.get("snapshot_of")
         else trained).append(folder)
    return trained, snapshots, reused


# ----------------------------------------------------------------------------------------------
# Inference speed


def measure_inference(ctx: common.Context, pool: str) -> dict:
    """Images/s of one model's forward pass (eval mode) over the test images, batch 1000,
    after a warm-up pass; parameters are freshly initialised (speed does not depend on them)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fmnist_jax.models import ARCHITECTURES, CNN, EncoderClassifier

    images = np.asarray(ctx.data.test_images, np.float32)
    n = len(images) // INFERENCE_BATCH * INFERENCE_BATCH or len(images)
    batch = min(INFERENCE_BATCH, n)
    batches = [jnp.asarray(images[i:i + batch]) for i in range(0, n, batch)]
    repeats = 1 if ctx.quick else 3
    models = {"cnn": CNN(pool=pool)}
    models.update({f"encoder_classifier_{a}": EncoderClassifier(widths=w) for a, w in ARCHITECTURES.items()})
    out = {}
    for name, model in models.items():
        variables = model.init(jax.random.PRNGKey(0), batches[0][:1])
        forward = jax.jit(lambda v, x, model=model: model.apply(v, x))
        for b in batches:  # warm-up: compile, and one full pass
            forward(variables, b).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(repeats):
            for b in batches:
                last = forward(variables, b)
            last.block_until_ready()
        seconds = time.perf_counter() - t0
        out[name] = {"images_per_s": repeats * n / seconds, "images": n, "batch": batch,
                     "repeats": repeats, "seconds": seconds}
        if name == "cnn":
            out[name]["pool"] = pool
    return out


# ----------------------------------------------------------------------------------------------
# study.json


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class StudyRecord:
    """`<out>/study.json`: kept as it is unless this invocation trains something."""

    def __init__(self, out: Path, args: argparse.Namespace):
        self.path = out / report.STUDY_JSON
        try:
            self.previous = io.read_json(self.path)
        except (OSError, ValueError):
            self.previous = None
        self.args = args
        self.t0 = time.perf_counter()
        self.invocation = {"started": _now(), "wall_s": 0.0, "trained": [], "snapshots": [], "reused": []}

    def write(self, written: list[str], *, complete: bool, inference: dict | None = None) -> None:
        prev = self.previous or {}
        trained, snapshots, reused = split_written(self.path.parent, written)
        self.invocation.update(wall_s=time.perf_counter() - self.t0, trained=trained,
                               snapshots=snapshots, reused=reused,
                               finished=_now() if complete else None)
        invocations = [*prev.get("invocations", []), self.invocation]
        record = {
            "complete": complete,
            "total_wall_s": sum(float(i.get("wall_s", 0.0)) for i in invocations),
            "invocations": invocations,
            "seeds": self.args.seeds, "quick": bool(self.args.quick), "pool": self.args.pool,
            "command": " ".join([os.path.basename(sys.executable), "-m", "experiments.study", *sys.argv[1:]]),
            "environment": results.environment(),
            "inference": inference if inference is not None else prev.get("inference"),
        }
        io.write_json(self.path, record)

    @property
    def needs_writing(self) -> bool:
        prev = self.previous
        return not prev or not prev.get("complete") or not prev.get("inference")


def run_study(args: argparse.Namespace) -> Path:
    record = StudyRecord(args.out, args)
    ctx = common.make_context(args)
    base_log = ctx.log
    ctx1 = dataclasses.replace(ctx, args=question_args(args, "q1"))
    ctx2 = dataclasses.replace(ctx, args=question_args(args, "q2"))

    before = snapshot(args.out)
    written: list[str] = []

    def checkpoint_record():
        nonlocal written
        written = changed(before, snapshot(args.out))
        if written:  # keep the time spent so far should the study be interrupted
            record.write(written, complete=False)

    base_log(f"\n== {', '.join(Q1_SWEEPS)} ==")
    q1.run_all(Q1_SWEEPS, ctx1, after_sweep=lambda experiment: checkpoint_record())
    base_log("\n== q2_pretrain (shared) ==")
    q2.pretrain_shared(ctx2, Q2_SWEEPS)  # e.g. the 2- and 10-epoch encoders from the 20-epoch run
    checkpoint_record()
    for sweep in Q2_SWEEPS:
        base_log(f"\n== {q2.EXPERIMENT[sweep]} ==")
        q2.run(ctx2, [sweep])
        checkpoint_record()

    if written or record.needs_writing:
        base_log("\nmeasuring inference speed ...")
        record.write(written, complete=True, inference=measure_inference(ctx, args.pool))
    else:
        base_log("\nnothing trained: study.json kept as it was")
    path = report.write_report(args.out)
    wall = time.perf_counter() - record.t0
    n_trained, n_snapshots, n_reused = map(len, split_written(args.out, written))
    print(f"study: {n_trained} run(s) trained, {n_snapshots} written from a longer run, "
          f"{n_reused} reused from identical runs, the rest complete and skipped; {wall:.0f} s; "
          f"report: {path}", flush=True)
    return path


def main(argv=None) -> None:
    def go():
        args = parser().parse_args(argv)
        if args.report_only:
            if not args.out.is_dir():
                raise common.UsageError(f"no results in {args.out}; run the study first, or pass --out DIR")
            try:
                path = report.write_report(args.out)
            except FileNotFoundError as e:
                raise common.UsageError(str(e)) from None
            print(f"report: {path}")
            return
        run_study(args)

    common.main_guard(go)


if __name__ == "__main__":
    main()
