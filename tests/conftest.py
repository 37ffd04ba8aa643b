"""Shared fixtures: the real data is loaded once per test session.

JAX's persistent compilation cache is shared by every test process and every subprocess a
test starts (the CLI tests), through the environment, so each program compiles once per run.
"""

import os
from pathlib import Path

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402

from fmnist_jax import data, sources  # noqa: E402


@pytest.fixture(scope="session")
def raw_data() -> tuple[sources.RawSplit, sources.RawSplit]:
    """(train, test) of the full, verified 10-class Fashion-MNIST."""
    return sources.load_fashion_mnist()


@pytest.fixture(scope="session")
def task_data() -> data.TaskData:
    """The default 5-class task: 27,000 / 3,000 / 5,000."""
    return data.load_task()
