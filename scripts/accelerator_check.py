"""One-shot accelerator check: `scripts/accelerator_check.sh OUT_DIR [--quick] [--budget-s S]
[--data-dir DIR]`.

Runs, each in its own Python process with a time limit, and times:
  environment  `fmnist_jax.results.environment()` (versions, backend, devices) and matplotlib's
               version, plus `nvidia-smi`'s GPUs where it exists;
  tests        with pytest, the model and engine tests whose code differs on an accelerator
               (`TESTS`, at full float32 precision); without pytest this part fails;
  benchmarks   `python -m benchmarks.run` (full), its JSON kept as OUT_DIR/benchmarks.json;
  study        `python -m experiments.study` with 3 seeds, `--out` a temporary folder (its
               study.json and REPORT.md kept in OUT_DIR);
then writes OUT_DIR/summary.json (see `summarise`) beside every part's log, OUT_DIR/<part>.log.
A part gets its own limit (`LIMITS_S`) or what is left of the budget, whichever is less, so the
check ends in time: `--budget-s` (default `BUDGET_S`, 9.5 minutes, within a 10-minute limit on
one command). A part that runs out of time is stopped and recorded with exit status 124.

It needs only the Python it runs with (python3 on PATH, or $PYTHON), with JAX (and its GPU
backend), Flax, Optax, Orbax, matplotlib and pytest, and no network. `--quick` is a smoke run
of the check itself on a CPU: a tiny test selection, quick benchmarks of the four rows the
summary reports, a `--quick --seeds 2` study. Exit status: 0 when every part passed, 1 when one
failed, 2 on a bad argument.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports: see fmnist_jax.entry
    from fmnist_jax import entry

    entry.start()

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fmnist_jax import io

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 570.0
LIMITS_S = {"environment": 30, "tests": 100, "benchmarks": 240, "study": 300}
TESTS = ("tests/test_models.py", "tests/test_gpu_paths.py", "tests/test_checkpoint.py")
QUICK_TESTS = ("tests/test_gpu_paths.py", "-k", "gradients")
# The tests compare implementations to float32 rounding, so no TensorFloat-32 (what GPUs use by
# default for float32 matmuls and convolutions); the benchmarks and the study keep the default.
TESTS_ENV = {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}
ROWS = ("cnn_train", "cnn_infer", "ae_train", "ae_infer")
ENV_PROBE = (
    "import json, matplotlib; from fmnist_jax import results; "
    "print(json.dumps({**results.environment(), 'matplotlib': matplotlib.__version__}))"
)
NVIDIA_SMI = ("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")


def commands(python: str, out: Path, study_out: Path, quick: bool) -> dict:
    """Each part's command line, in the order they run."""
    tests = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    bench = [python, "-m", "benchmarks.run", "--json", str(out / "benchmarks.json")]
    study = [python, "-m", "experiments.study", "--out", str(study_out), "--quiet"]
    if quick:
        bench += ["--quick", "--only", *ROWS]
        study += ["--quick", "--seeds", "2"]
    return {
        "environment": [python, "-c", ENV_PROBE],
        "tests": tests + list(QUICK_TESTS if quick else TESTS),
        "benchmarks": bench,
        "study": study,
    }


def run_part(
    name: str, command: list[str], out: Path, limit_s: float, env: dict, extra_env: dict = None
) -> dict:
    """Run one part (with `extra_env` added to `env`) with its output in OUT_DIR/<name>.log ->
    its record (exit status 124 if stopped at `limit_s`)."""
    log = out / f"{name}.log"
    shown = shlex.join([*(f"{k}={v}" for k, v in (extra_env or {}).items()), *command])
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ {shown}\n")
        f.flush()
        proc = subprocess.Popen(  # its own process group: stopped with its children
            command,
            cwd=ROOT,
            env={**env, **(extra_env or {})},
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status, timed_out = proc.wait(timeout=max(limit_s, 1)), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status, timed_out = 124, True
    wall = time.perf_counter() - t0
    late = " (out of time)" if timed_out else ""
    print(f"[accelerator_check] {name}: exit status {status}{late}, {wall:.1f} s", flush=True)
    return {
        "command": shown,
        "exit_status": status,
        "timed_out": timed_out,
        "wall_s": wall,
        "limit_s": limit_s,
        "log": log.name,
    }


def _read_json(path: Path):
    try:
        return io.read_json(path)
    except (OSError, ValueError):
        return None


def read_environment(out: Path) -> dict | None:
    """What the environment part printed (its log's last JSON line), with nvidia-smi's GPUs."""
    lines = (out / "environment.log").read_text().splitlines()
    found = json.loads(next(x for x in reversed(lines) if x.startswith("{")))
    if shutil.which(NVIDIA_SMI[0]):
        smi = subprocess.run(NVIDIA_SMI, capture_output=True, text=True)
        found["nvidia_smi"] = smi.stdout.strip().splitlines()
    return found


def study_timing(study_out: Path) -> dict:
    """Where the study's time went: each configuration it trained (not the copies) with the
    compile, train and evaluation seconds in its metrics.json (a run that continues another
    includes that one's) and its own wall time."""
    rows = {}
    for metrics in sorted(study_out.glob("*/*/metrics.json")):
        folder = metrics.parent
        if (_read_json(folder / "config.json") or {}).get("reused_from"):
            continue
        timing = (_read_json(metrics) or {}).get("timing") or {}
        rows[f"{folder.parent.name}/{folder.name}"] = {
            k: timing[k] for k in ("compile_s", "train_s", "eval_s", "own_wall_s") if k in timing
        }
    return rows


def summarise(
    parts: dict,
    environment: dict | None,
    bench: dict | None,
    study: dict | None,
    rows: dict,
    quick: bool,
    total_s: float,
) -> dict:
    """summary.json: `ok`, each part's exit status and wall time, the environment, the
    benchmark's images/s and compile seconds of `ROWS`, and the study's wall time (measured
    here, and as study.json records it) with `study_rows` (see `study_timing`)."""
    by_name = {r["name"]: r for r in (bench or {}).get("rows", [])}
    invocations = (study or {}).get("invocations", [])
    return {
        "ok": all(p["exit_status"] == 0 for p in parts.values()),
        "quick": quick,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "total_wall_s": total_s,
        "environment": environment,
        "parts": parts,
        "images_per_s": {n: by_name[n]["images_per_s"] for n in ROWS if n in by_name},
        "compile_s": {n: by_name[n].get("compile_s") for n in ROWS if n in by_name},
        "benchmark_data": (bench or {}).get("env", {}).get("data"),
        "study_wall_s": parts.get("study", {}).get("wall_s"),
        "study": None
        if study is None
        else {
            **{k: study.get(k) for k in ("complete", "seeds", "total_wall_s", "inference")},
            **{k: sum(len(i.get(k, [])) for i in invocations) for k in ("trained", "reused")},
        },
        "study_rows": rows,
        "study_train_wall_s": sum(r.get("own_wall_s", 0.0) for r in rows.values()),
    }


def main(argv=None) -> int:
    """The command line; -> the exit status."""
    p = argparse.ArgumentParser(
        prog="scripts/accelerator_check.sh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, metavar="OUT_DIR", help="where summary.json and the logs go")
    p.add_argument("--quick", action="store_true", help="a smoke run of the check (CPU)")
    budget = f"seconds all parts may take together (default {BUDGET_S:g})"
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=budget)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the four Fashion-MNIST files (else $FMNIST_DATA_DIR, or the "
        "usual places)",
    )
    args = p.parse_args(argv)
    if not args.budget_s > 0:
        p.error(f"--budget-s must be > 0, got {args.budget_s:g}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"cannot create {args.out} ({e.strerror}); pass a writable OUT_DIR")
    env = dict(os.environ)
    if args.data_dir is not None:
        env["FMNIST_DATA_DIR"] = str(args.data_dir.resolve())
    out = args.out.resolve()
    t0 = time.perf_counter()
    parts, found = {}, None
    with tempfile.TemporaryDirectory(prefix="fmnist-study-") as tmp:
        study_out = Path(tmp) / "results"
        for name, command in commands(sys.executable, out, study_out, args.quick).items():
            limit = min(LIMITS_S[name], args.budget_s - (time.perf_counter() - t0))
            extra = TESTS_ENV if name == "tests" else None
            parts[name] = run_part(name, command, out, limit, env, extra)
            if name == "environment" and parts[name]["exit_status"] == 0:
                found = read_environment(out)
        for name in ("study.json", "REPORT.md"):
            if (study_out / name).is_file():
                shutil.copyfile(study_out / name, out / name)
        rows = study_timing(study_out)
    bench, study = _read_json(out / "benchmarks.json"), _read_json(out / "study.json")
    summary = summarise(parts, found, bench, study, rows, args.quick, time.perf_counter() - t0)
    io.write_json(out / "summary.json", summary)
    verdict = "all parts passed" if summary["ok"] else "a part failed"
    print(f"[accelerator_check] {verdict}; wrote {out / 'summary.json'}", flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
