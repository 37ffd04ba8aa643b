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
    from fmnist_jax import entry

    entry.start()

import datetime as _dt
import time
from pathlib import Path

from experiments import cli, q1, q2
from experiments import sweep as sweep_lib
from experiments.cli import Options, UsageError
from experiments.context import Context, command_line, make_context, sole_writer
from fmnist_jax import io, report, results

INFERENCE_BATCH = 1000


def parser():
    """The study's flags: the common ones (each question keeps its own epochs and rate)."""
    p = cli.parser(
        "The whole study: Question 1's CNN sweeps, Question 2's autoencoder sweeps, "
        "inference speed, then <out>/REPORT.md. Completed configurations are skipped "
        "(rerun to resume)."
    )
    p.prog = "python -m experiments.study"
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild REPORT.md from the results under --out, training nothing",
    )
    return p


def sweeps(opts: Options) -> list[sweep_lib.Sweep]:
    """Every sweep of the study, in the order they run (see `q1.ORDER` and `q2.SWEEPS`)."""
    return [q1.sweep(e, opts) for e in q1.ORDER] + [q2.sweep(s, opts) for s in q2.SWEEPS]


# ----------------------------------------------------------------------------------------------
# Inference speed


def measure_inference(ctx: Context, pool: str) -> dict:
    """Images/s of each model's evaluation over the test images, one model (fresh parameters:
    the speed does not depend on them), batch 1000, as `benchmarks.cases.infer_row` times it."""
    from benchmarks.cases import infer_row
    from fmnist_jax.models import ARCHITECTURES
    from fmnist_jax.train import TrainConfig

    labels = ctx.data.test_labels
    common = dict(
        augment="none",
        eval_batch_size=min(INFERENCE_BATCH, len(labels)),
        num_classes=len(ctx.data.class_names),
    )
    cfgs = {"cnn": TrainConfig(model="cnn", pool=pool, **common)}
    for arch, widths in ARCHITECTURES.items():
        cfgs[f"encoder_classifier_{arch}"] = TrainConfig(
            model="encoder_classifier", widths=widths, **common
        )
    reps = 1 if ctx.opts.quick else 3
    return {
        name: infer_row(name, cfg, ctx.data.test_images, labels, reps=reps)
        | ({"pool": pool} if name == "cnn" else {})
        for name, cfg in cfgs.items()
    }


# ----------------------------------------------------------------------------------------------
# study.json


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class StudyRecord:
    """`<out>/study.json`: kept as it is unless this invocation trains something."""

    def __init__(self, out: Path, opts: Options):
        self.path = out / report.STUDY_JSON
        try:
            self.previous = io.read_json(self.path)
        except (OSError, ValueError):
            self.previous = None
        self.opts = opts
        self.t0 = time.perf_counter()
        self.invocation = {"started": _now(), "wall_s": 0.0, "trained": [], "reused": []}

    def write(
        self,
        trained: list[str],
        reused: list[str],
        *,
        complete: bool,
        inference: dict | None = None,
    ) -> None:
        """Record this invocation (wall time, folders written) beside the earlier ones."""
        prev = self.previous or {}
        self.invocation.update(
            wall_s=time.perf_counter() - self.t0,
            trained=trained,
            reused=reused,
            finished=_now() if complete else None,
        )
        invocations = [*prev.get("invocations", []), self.invocation]
        io.write_json(
            self.path,
            {
                "complete": complete,
                "total_wall_s": sum(float(i.get("wall_s", 0.0)) for i in invocations),
                "invocations": invocations,
                "seeds": self.opts.seeds,
                "quick": self.opts.quick,
                "pool": self.opts.pool,
                "command": command_line(),
                "environment": results.environment(),
                "inference": inference if inference is not None else prev.get("inference"),
            },
        )

    @property
    def needs_writing(self) -> bool:
        """Whether study.json is missing, unfinished or lacks the inference timing."""
        prev = self.previous
        return not prev or not prev.get("complete") or not prev.get("inference")


def run_study(opts: Options) -> Path:
    """Every sweep (skipping what is complete), the inference timing, study.json, REPORT.md,
    with `--out` held for this command alone (`sole_writer`) once the checks have passed."""
    ctx = make_context(opts)
    all_sweeps = sweeps(opts)
    sweep_lib.check_all(ctx, all_sweeps)
    with sole_writer(opts):
        # Read, and timed, from here: with --wait, an earlier writer may have just ended.
        record = StudyRecord(opts.out, opts)
        trained, reused = [], []
        for s in all_sweeps:
            ctx.log(f"\n== {s.experiment} ==")
            got = sweep_lib.run_sweep(ctx, s)
            trained, reused = sorted([*trained, *got[0]]), sorted([*reused, *got[1]])
            if trained or reused:  # keep the time spent so far should the study be interrupted
                record.write(trained, reused, complete=False)
        if trained or reused or record.needs_writing:
            ctx.log("\nmeasuring inference speed ...")
            inference = measure_inference(ctx, opts.pool)
            record.write(trained, reused, complete=True, inference=inference)
        else:
            ctx.log("\nnothing trained: study.json kept as it was")
        path = report.write_report(opts.out)
    print(
        f"study: {len(trained)} run(s) trained, {len(reused)} copied from identical runs, the "
        f"rest complete and skipped; {time.perf_counter() - record.t0:.0f} s; report: {path}",
        flush=True,
    )
    return path


def main(argv=None) -> None:
    """`python -m experiments.study`."""

    def go():
        opts = cli.parse(parser(), argv)
        if not opts.report_only:
            run_study(opts)
            return
        if not opts.out.is_dir():
            raise UsageError(f"no results in {opts.out}; run the study first, or pass --out DIR")
        try:
            with sole_writer(opts):
                path = report.write_report(opts.out)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        print(f"report: {path}")

    cli.main_guard(go)


if __name__ == "__main__":
    main()
