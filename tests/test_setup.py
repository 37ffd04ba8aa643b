"""scripts/setup.sh's choice of extras (its argument, FMNIST_JAX_EXTRAS, and JAX's CUDA build
`cuda12` where an NVIDIA GPU answers `nvidia-smi`) and of versions (requirements.lock's by
default, the newest pyproject.toml allows with FMNIST_JAX_UNLOCKED=1). Run in a copy of the
script beside a stand-in .venv python that prints what it is asked to install, so nothing is
installed. Then requirements.lock against pyproject.toml: every dependency pinned, within bounds."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKED = "-q -c requirements.lock -e"
UNLOCKED = "-q --upgrade --upgrade-strategy eager -e"


def _script(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def repo(tmp_path):
    """A copy of the script, pyproject.toml and requirements.lock; a stand-in .venv python."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts")
    shutil.copy(ROOT / "pyproject.toml", repo)
    shutil.copy(ROOT / "requirements.lock", repo)
    _script(repo / ".venv" / "bin" / "python", 'echo "venv-python $*"')
    return repo


def setup(repo: Path, arg="", gpu=False, **env: str) -> subprocess.CompletedProcess:
    bin_dir = repo.parent / "bin"
    _script(bin_dir / "nvidia-smi", "echo 'GPU 0: NVIDIA H200'" if gpu else "exit 9")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FMNIST_DATA_DIR": str(repo.parent),
        "FMNIST_JAX_EXTRAS": "",
        "FMNIST_JAX_UNLOCKED": "",
        "PYTHON": sys.executable,
        **env,
    }
    return subprocess.run(
        [str(repo / "scripts" / "setup.sh"), *([arg] if arg else [])],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def installs(done: subprocess.CompletedProcess) -> list[str]:
    """What the stand-in python was asked to install, beyond pip itself."""
    return [
        line.removeprefix("venv-python -m pip install ")
        for line in done.stdout.splitlines()
        if line.startswith("venv-python -m pip install ") and "--upgrade pip" not in line
    ]


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
def test_setup_chooses_the_extras_at_the_locked_versions(repo, gpu, arg, asked, want):
    done = setup(repo, arg, gpu, FMNIST_JAX_EXTRAS=asked)
    assert done.returncode == 0, done.stderr
    assert installs(done) == [f"{LOCKED} {want}"]


def test_the_switch_installs_the_newest_versions_allowed(repo):
    done = setup(repo, "test,tfds", FMNIST_JAX_UNLOCKED="1")
    assert done.returncode == 0, done.stderr
    assert installs(done) == [f"{UNLOCKED} .[test,tfds]"]


def test_a_bad_switch_value_is_one_error_line(repo):
    done = setup(repo, "test", FMNIST_JAX_UNLOCKED="yes")
    assert done.returncode == 2 and installs(done) == []
    assert done.stderr.startswith("error: FMNIST_JAX_UNLOCKED=yes; use 1")
    assert len(done.stderr.splitlines()) == 1


def test_setup_installs_again_only_when_the_lock_or_the_switch_changes(repo):
    assert installs(setup(repo, "test")) == [f"{LOCKED} .[test]"]
    assert installs(setup(repo, "test")) == []  # nothing changed: the stamp says it is done
    with (repo / "requirements.lock").open("a") as lock:
        lock.write("# regenerated\n")
    assert installs(setup(repo, "test")) == [f"{LOCKED} .[test]"]
    assert installs(setup(repo, "test", FMNIST_JAX_UNLOCKED="1")) == [f"{UNLOCKED} .[test]"]
    assert installs(setup(repo, "test")) == [f"{LOCKED} .[test]"]


def test_a_lock_pip_cannot_install_points_to_the_switch(repo):
    _script(
        repo / ".venv" / "bin" / "python",
        'echo "venv-python $*"; case "$*" in *requirements.lock*) exit 1;; esac',
    )
    done = setup(repo, "test")
    assert done.returncode == 1
    assert done.stderr.startswith("error: pip could not install requirements.lock's versions")
    assert "FMNIST_JAX_UNLOCKED=1" in done.stderr and "setup.sh test " in done.stderr
    assert not list((repo / ".venv").glob(".installed-*"))  # tried again next time


def locked_versions() -> dict[str, Version]:
    """requirements.lock's pins: one `name==version` line per package, comments indented or #."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
            assert match, f"not an exact pin: {line!r}"
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def test_the_lock_pins_every_dependency_within_pyproject_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = locked_versions()
    wanted = [*project["dependencies"], *extras["test"], *extras["tfds"]]
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (text, str(pins[name]))
    # The GPU extra is not locked, but it must accept the locked JAX it is installed beside.
    for text in extras["cuda12"]:
        req = Requirement(text)
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), text
