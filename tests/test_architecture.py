"""`python -m fmnist_jax.architecture`: layer tables and parameter counts from Flax's summary of
the models."""

import re

import pytest

from fmnist_jax import architecture
from tests._cli import run

# The original report's counts.
EXPECTED = {"cnn": 230_735, "autoencoder_base": 1_100_112, "autoencoder_thick": 2_167_596}
# The CNN's rows by hand, NHWC (the original's NCHW table transposed): a 3x3 conv from C_in to
# C_out has 9 * C_in * C_out + C_out parameters, a BatchNorm 2 * C, a dense layer
# n_in * n_out + n_out; a VALID 3x3 conv takes 2 off each side length, a 2x2 pool halves it
# (rounding down).
CNN_ROWS = [
    ("conv_1 (Conv3x3)", (1, 26, 26, 10), 100),
    ("bn_1 (BatchNorm)", (1, 26, 26, 10), 20),
    ("ReLU", (1, 26, 26, 10), 0),
    ("AvgPool 2x2", (1, 13, 13, 10), 0),
    ("conv_2 (Conv3x3)", (1, 11, 11, 20), 1_820),
    ("bn_2 (BatchNorm)", (1, 11, 11, 20), 40),
    ("ReLU", (1, 11, 11, 20), 0),
    ("conv_3 (Conv3x3)", (1, 9, 9, 40), 7_240),
    ("bn_3 (BatchNorm)", (1, 9, 9, 40), 80),
    ("ReLU", (1, 9, 9, 40), 0),
    ("conv_4 (Conv3x3)", (1, 7, 7, 80), 28_880),
    ("bn_4 (BatchNorm)", (1, 7, 7, 80), 160),
    ("ReLU", (1, 7, 7, 80), 0),
    ("AvgPool 2x2", (1, 3, 3, 80), 0),
    ("Flatten", (1, 720), 0),
    ("fc1 (Dense)", (1, 265), 191_065),
    ("ReLU", (1, 265), 0),
    ("Dropout 0.5", (1, 265), 0),
    ("fc2 (Dense)", (1, 5), 1_330),
]


@pytest.fixture(scope="module")
def cli_output() -> str:
    done = run("fmnist_jax.architecture")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_prints_the_totals_with_separators(cli_output):
    for count in ("230,735", "1,100,112", "2,167,596"):
        assert f"Trainable params: {count}" in cli_output
    # The CNN's 10 + 20 + 40 + 80 convolution biases are held at 0 in training; its BatchNorms
    # keep a running mean and variance per channel, 2 * 150.
    assert "held at 0 in training: the 150 convolution biases" in cli_output
    assert "BatchNorm running statistics (state, not parameters): 300" in cli_output
    assert cli_output.count("held at 0") == 1 and cli_output.count("running statistics") == 1
    assert "NHWC" in cli_output


def test_cli_prints_the_cnn_table(cli_output):
    lines = cli_output.split("denoising autoencoder")[0].splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"="}]
    assert (
        len(rules) == 3
        and lines[rules[0] + 1].split() == "Layer (type) Output Shape Param #".split()
    )
    body = [re.split(r"\s{2,}", line) for line in lines[rules[1] + 1 : rules[2]]]
    assert body == [
        [name, "[-1, " + ", ".join(map(str, shape[1:])) + "]", f"{params:,}"]
        for name, shape, params in CNN_ROWS
    ]


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_the_cnn_rows_are_the_hand_computed_ones(pool):
    s = architecture.summaries(pool)["cnn"]
    want = [(n.replace("AvgPool", f"{pool.capitalize()}Pool"), o, p) for n, o, p in CNN_ROWS]
    assert [(x.name, x.output_shape, x.params) for x in s.layers] == want
    assert s.trainable == sum(p for _, _, p in CNN_ROWS) == EXPECTED["cnn"]
    assert (s.held_at_zero, s.non_trainable) == (150, 300)


def test_param_counts_match_the_report():
    s = architecture.summaries()
    for key, value in EXPECTED.items():
        assert s[key].trainable == value
        assert s[key].trainable == sum(x.params for x in s[key].layers)
    base = [(784, 512), (512, 256), (256, 64), (64, 256), (256, 512), (512, 784)]
    ae = s["autoencoder_base"]
    assert [(x.name, x.output_shape[-1], x.params) for x in ae.layers[::2]] == [
        (f"{part}/dense_{i % 3} (Dense)", n_out, n_in * n_out + n_out)
        for i, (part, (n_in, n_out)) in enumerate(
            zip(["encoder"] * 3 + ["decoder"] * 3, base, strict=True)
        )
    ]
    assert [x.name for x in ae.layers[1::2]] == ["ReLU"] * 6
    assert (ae.held_at_zero, ae.non_trainable) == (0, 0)
    assert s["encoder_classifier_base"].trainable == 401_920 + 131_328 + 16_448 + 64 * 5 + 5


def test_markdown_tables():
    tables = architecture.model_tables()
    assert "| **total** | | **230,735** |" in tables["cnn"]
    assert "| conv_1 (Conv3x3) | [-1, 26, 26, 10] | 100 |" in tables["cnn"]
    assert "held at 0 in training: the 150 convolution biases" in tables["cnn"]
    assert "**1,100,112**" in tables["autoencoder_base"]
    assert "**2,167,596**" in tables["autoencoder_thick"]
    assert "held at 0" not in tables["autoencoder_base"]
