"""`scripts/accelerator_check.sh OUT --quick`, run for real on the CPU so that the check cannot
rot before a GPU machine runs it in full: its exit status and the fields of summary.json."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

from fmnist_jax import io

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "accelerator_check.py"  # a harness, not a package: loaded by path
_SPEC = importlib.util.spec_from_file_location("accelerator_check", SCRIPT)
accelerator_check = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(accelerator_check)
PARTS = ("environment", "tests", "benchmarks", "study")


def test_quick_check_writes_the_summary(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "scripts" / "accelerator_check.sh"), str(out), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = io.read_json(out / "summary.json")
    assert summary["ok"] is True and summary["quick"] is True
    assert list(summary["parts"]) == list(PARTS)
    assert summary["parts"]["tests"]["command"].startswith("JAX_DEFAULT_MATMUL_PRECISION=highest ")
    for name, part in summary["parts"].items():
        assert part["exit_status"] == 0 and not part["timed_out"], name
        assert 0 < part["wall_s"] <= part["limit_s"], name
        assert (out / part["log"]).read_text().startswith("$ "), name
    env = summary["environment"]
    assert env["backend"] == "cpu" and env["device_count"] >= 1 and env["device_kind"]
    assert {"jax", "jaxlib", "flax", "optax", "orbax_checkpoint", "matplotlib"} <= env.keys()
    for row in ("cnn_train", "cnn_infer", "ae_train", "ae_infer"):
        assert math.isfinite(summary["images_per_s"][row]) and summary["images_per_s"][row] > 0
        assert summary["compile_s"][row] > 0
    assert summary["benchmark_data"] == "fashion-mnist"
    study = summary["study"]
    assert study["complete"] is True and study["seeds"] == 2 and study["trained"] > 0
    assert summary["study_wall_s"] >= study["total_wall_s"] > 0
    assert len(summary["study_rows"]) == study["trained"]
    assert all(row["own_wall_s"] > 0 for row in summary["study_rows"].values())
    assert summary["study_train_wall_s"] <= study["total_wall_s"]
    assert (out / "REPORT.md").is_file() and (out / "benchmarks.json").is_file()


def test_a_failing_or_overlong_part_is_recorded(tmp_path):
    failed = accelerator_check.run_part(
        "fails", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path, 60, dict(os.environ)
    )
    assert failed["exit_status"] == 3 and not failed["timed_out"]
    slow = accelerator_check.run_part(
        "slow", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, 1, dict(os.environ)
    )
    assert slow["exit_status"] == 124 and slow["timed_out"]
    summary = accelerator_check.summarise(
        {"fails": failed, "slow": slow}, None, None, None, {}, True, 2.0
    )
    assert summary["ok"] is False and summary["images_per_s"] == {} and summary["study"] is None
