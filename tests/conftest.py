"""Shared fixtures: the real data is loaded once per test session."""

import pytest

from fmnist_jax import data


@pytest.fixture(scope="session")
def raw_data() -> tuple[data.RawSplit, data.RawSplit]:
    """(train, test) of the full, verified 10-class Fashion-MNIST."""
    return data.load_fashion_mnist()


@pytest.fixture(scope="session")
def task_data() -> data.TaskData:
    """The default 5-class task: 27,000 / 3,000 / 5,000."""
    return data.load_task()
