"""`python -m fmnist_jax.summary`: layer tables and parameter counts traced from the models."""

import subprocess
import sys
from pathlib import Path

import pytest

from fmnist_jax import summary
from fmnist_jax.models import CNN, count_params

ROOT = Path(__file__).resolve().parent.parent

# The original report's counts (DESIGN §2).
EXPECTED = {"cnn": 230_735, "autoencoder_base": 1_100_112, "autoencoder_thick": 2_167_596}
# The CNN's per-layer output shapes, NHWC (the original's NCHW table transposed).
CNN_SHAPES = [
    "[-1, 26, 26, 10]",
    "[-1, 13, 13, 10]",
    "[-1, 11, 11, 20]",
    "[-1, 9, 9, 40]",
    "[-1, 7, 7, 80]",
    "[-1, 3, 3, 80]",
    "[-1, 720]",
    "[-1, 265]",
    "[-1, 5]",
]


@pytest.fixture(scope="module")
def cli_output() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_prints_the_totals_with_separators(cli_output):
    for count in ("230,735", "1,100,112", "2,167,596"):
        assert f"Trainable params: {count}" in cli_output
    # The CNN's 150 convolution biases are counted, and said to be held at 0 in training.
    assert "held at 0 in training: the 150 convolution biases" in cli_output
    assert "NHWC" in cli_output


def test_cli_prints_the_cnn_layers_in_order(cli_output):
    cnn = cli_output.split("denoising autoencoder")[0]
    positions = [cnn.find(shape) for shape in CNN_SHAPES]
    assert all(p >= 0 for p in positions), dict(zip(CNN_SHAPES, positions))
    assert positions == sorted(positions)
    # conv, batch norm, ReLU, average pool, flatten, dense, dropout rows, with their params.
    rows = [line.split() for line in cnn.splitlines()]
    assert ["conv_1", "(Conv3x3)", "[-1,", "26,", "26,", "10]", "100"] in rows
    assert ["bn_4", "(BatchNorm)", "[-1,", "7,", "7,", "80]", "160"] in rows
    assert ["fc1", "(Dense)", "[-1,", "265]", "191,065"] in rows
    assert sum(line.startswith("AvgPool 2x2") for line in cnn.splitlines()) == 2
    assert sum(line.startswith("ReLU") for line in cnn.splitlines()) == 5
    assert any(line.startswith("Flatten") for line in cnn.splitlines())


def test_param_counts_match_the_report_and_the_models():
    counts = summary.param_counts()
    for key, value in EXPECTED.items():
        assert counts[key] == value
    assert counts["encoder_classifier_base"] == 401_920 + 131_328 + 16_448 + 64 * 5 + 5


def test_max_pool_variant_and_markdown_tables():
    s = summary.trace(CNN(pool="max"), (1, 28, 28, 1), "max")
    assert [layer.name for layer in s.layers].count("MaxPool 2x2") == 2
    assert s.trainable == 230_735 and s.non_trainable == 300
    tables = summary.model_tables()
    assert "| **total** | | **230,735** |" in tables["cnn"]
    assert "| conv_1 (Conv3x3) | [-1, 26, 26, 10] | 100 |" in tables["cnn"]
    assert "**1,100,112**" in tables["autoencoder_base"]
    assert "**2,167,596**" in tables["autoencoder_thick"]


def test_layer_rows_sum_to_the_model_count():
    import jax
    import jax.numpy as jnp

    params = CNN().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    s = summary.summaries()["cnn"]
    assert sum(layer.params for layer in s.layers) == count_params(params) == s.trainable
