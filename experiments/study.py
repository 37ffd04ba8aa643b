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

import datetime as _dt
import time
from pathlib import Path

from experiments import cli, q1, q2
from experiments import sweep as sweep_lib
from experiments.cli import Options, UsageError
from experiments.context import Context, command_line, make_context
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


def snapshot(out: Path) -> dict[str, int]:
    """Modification times of every results folder's metrics.json (to tell what a run wrote)."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/*/metrics.json")}


def written(out: Path, before: dict[str, int]) -> tuple[list[str], list[str]]:
    """(trained, reused): the result folders whose metrics.json appeared or changed since
    `before`, split by whether they were copied from an identical completed run."""
    trained, reused = [], []
    for key, mtime in sorted(snapshot(out).items()):
        if before.get(key) != mtime:
            folder = str(Path(key).parent)
            try:
                copied = io.read_json_object(out / folder / "config.json").get("reused_from")
            except (OSError, ValueError):
                copied = None
            (reused if copied else trained).append(folder)
    return trained, reused


# ----------------------------------------------------------------------------------------------
# Inference speed


def measure_inference(ctx: Context, pool: str) -> dict:
    """Images/s of one model's forward pass (eval mode) over the test images, batch 1000,
    after a warm-up pass; parameters are freshly initialised (speed does not depend on them)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fmnist_jax.models import ARCHITECTURES, CNN, EncoderClassifier

    images = np.asarray(ctx.data.test_images, np.float32)
    n = len(images) // INFERENCE_BATCH * INFERENCE_BATCH or len(images)
    batch = min(INFERENCE_BATCH, n)
    batches = [jnp.asarray(images[i : i + batch]) for i in range(0, n, batch)]
    repeats = 1 if ctx.opts.quick else 3
    models = {"cnn": CNN(pool=pool)}
    models.update(
        {f"encoder_classifier_{a}": EncoderClassifier(widths=w) for a, w in ARCHITECTURES.items()}
    )
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
        out[name] = {
            "images_per_s": repeats * n / seconds,
            "images": n,
            "batch": batch,
            "repeats": repeats,
            "seconds": seconds,
        }
        if name == "cnn":
            out[name]["pool"] = pool
    return out


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
    """Every sweep (skipping what is complete), the inference timing, study.json, REPORT.md."""
    record = StudyRecord(opts.out, opts)
    ctx = make_context(opts)
    all_sweeps = sweeps(opts)
    sweep_lib.check_all(ctx, all_sweeps)
    before = snapshot(opts.out)
    trained, reused = [], []
    for s in all_sweeps:
        ctx.log(f"\n== {s.experiment} ==")
        sweep_lib.run_sweep(ctx, s)
        trained, reused = written(opts.out, before)
        if trained or reused:  # keep the time spent so far should the study be interrupted
            record.write(trained, reused, complete=False)
    if trained or reused or record.needs_writing:
        ctx.log("\nmeasuring inference speed ...")
        record.write(trained, reused, complete=True, inference=measure_inference(ctx, opts.pool))
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
            path = report.write_report(opts.out)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        print(f"report: {path}")

    cli.main_guard(go)


if __name__ == "__main__":
    main()
