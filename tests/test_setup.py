"""scripts/setup.sh's choice of extras: its argument, FMNIST_JAX_EXTRAS, and JAX's CUDA build
(`cuda12`) where an NVIDIA GPU answers `nvidia-smi`. Run in a copy of the script beside a
stand-in .venv python that prints what it is asked to install, so nothing is installed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.mark.parametrize(
    "gpu, arg, asked, want",
    [
        (False, "test,tfds", "", ".[test,tfds]"),  # here: nvidia-smi fails (or is missing)
        (True, "test,tfds", "", ".[cuda12,test,tfds]"),
        (True, "", "", ".[cuda12]"),
        (False, "", "cuda12", ".[cuda12]"),
        (False, "", "", "."),
    ],
)
def test_setup_chooses_the_extras(tmp_path, gpu, arg, asked, want):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts")
    shutil.copy(ROOT / "pyproject.toml", repo)
    _script(repo / ".venv" / "bin" / "python", 'echo "venv-python $*"')
    _script(tmp_path / "bin" / "nvidia-smi", "echo 'GPU 0: NVIDIA H200'" if gpu else "exit 9")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "FMNIST_DATA_DIR": str(tmp_path),
        "FMNIST_JAX_EXTRAS": asked,
        "PYTHON": sys.executable,
    }
    done = subprocess.run(
        [str(repo / "scripts" / "setup.sh"), *([arg] if arg else [])],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"venv-python -m pip install -q -e {want}\n" in done.stdout
