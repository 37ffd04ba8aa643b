"""Shared fixtures: the real data is loaded once per test session.

JAX's persistent compilation cache is shared by every test process and every subprocess a
test starts (the CLI tests), through the environment, so each program compiles once per run.
"""

import os
from pathlib import Path

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fmnist_jax import data, sources  # noqa: E402


@pytest.fixture(scope="session")
def raw_data() -> tuple[sources.RawSplit, sources.RawSplit]:
    """(train, test) of the full, verified 10-class Fashion-MNIST."""
    return data.load_fashion_mnist()


@pytest.fixture(scope="session")
def task_data() -> data.TaskData:
    """The default 5-class task: 27,000 / 3,000 / 5,000."""
    return data.load_task()


def kaggle_csv(split: sources.RawSplit, seed: int = 0) -> bytes:
    """`split` as Kaggle's CSV release has it: a header, then `label,pixel1..pixel784` rows, in a
    shuffled order (Kaggle's rows are the official examples, not in the IDX files' order)."""
    order = np.random.default_rng(seed).permutation(len(split.labels))
    rows = np.concatenate(
        [split.labels[order, None], split.images[order].reshape(len(order), -1)], axis=1
    )
    digits = np.zeros(
        (2, 256, 4), np.uint8
    )  # value -> its ASCII digits and "," (or "\n"), 0-padded
    for value in range(256):
        for k, end in enumerate((",", "\n")):
            text = f"{value}{end}".encode()
            digits[k, value, : len(text)] = list(text)
    chars = digits[0][rows]
    chars[:, -1] = digits[1][rows[:, -1]]
    flat = chars.reshape(-1)
    return (sources.CSV_HEADER + "\n").encode() + flat[flat != 0].tobytes()


@pytest.fixture(scope="session")
def kaggle_csv_dir(raw_data, tmp_path_factory) -> Path:
    """A folder holding only Kaggle's fashion-mnist_train.csv and fashion-mnist_test.csv."""
    folder = tmp_path_factory.mktemp("kaggle")
    for name, split in zip(("train", "test"), raw_data, strict=False):
        (folder / sources.CSV_FILES[name]).write_bytes(kaggle_csv(split, seed=len(name)))
    return folder
