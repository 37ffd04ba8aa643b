"""Layer tables of the study's models, as PyTorch's `torchsummary` prints them: every layer's
output shape and parameter count, and the totals (`python -m fmnist_jax.architecture`).

The tables come from Flax's own summary machinery on the real modules under `jax.eval_shape`
(nothing is computed): `Module.module_paths` gives the layers in call order, with their types,
and `capture_intermediates` their outputs. A row is a module without submodules (ReLU, pooling
and flatten are modules in `fmnist_jax.models` for that reason).

Shapes are NHWC (batch first, channels last), so the CNN's first convolution reads
`[-1, 26, 26, 10]` where the original report (PyTorch, NCHW) printed `[-1, 10, 26, 26]`.
"Trainable params" counts every parameter, BatchNorm scale and bias included; BatchNorm's
running statistics are state, not parameters (in PyTorch, buffers), and are listed apart.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports: see fmnist_jax.entry
    from fmnist_jax import entry

    entry.start()

import functools
import re
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax.models import ARCHITECTURES, NUM_CLASSES, Pool, count_params
from fmnist_jax.train import TrainConfig, build_model, n_trained_params


@dataclass(frozen=True)
class Layer:
    """One row of a layer table."""

    name: str  # e.g. "conv_1 (Conv3x3)", "ReLU", "AvgPool 2x2"
    output_shape: tuple[int, ...]  # batch dimension included (printed as -1)
    params: int


@dataclass(frozen=True)
class ModelSummary:
    """A model's layer table and parameter totals."""

    title: str
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    trainable: int
    held_at_zero: int  # those `train.held_fixed` holds (the CNN's convolution biases)
    non_trainable: int  # BatchNorm running statistics (state, not parameters)


def _shape_text(shape) -> str:
    return "[" + ", ".join(["-1", *map(str, shape[1:])]) + "]"


def _at(tree: dict, path: str):
    for name in path.split("/"):
        tree = tree.get(name, {})
    return tree


def _name(path: str, module: nn.Module) -> str:
    """`path (type)`, or the type alone where Flax named the module after it (`ReLU_3`)."""
    kind = type(module).__name__
    auto = re.fullmatch(rf"{kind}_\d+", path.rsplit("/", 1)[-1])
    if isinstance(module, Pool):
        kind = f"{module.kind.capitalize()}Pool {'x'.join(map(str, module.window))}"
    elif isinstance(module, nn.Dropout):
        kind = f"Dropout {module.rate:g}"
    return kind if auto else f"{path} ({kind})"


def trace(cfg: TrainConfig, input_shape: tuple[int, ...], title: str) -> ModelSummary:
    """The layer table of the model `cfg` describes, on an input of `input_shape` (batch
    included)."""
    model, key = build_model(cfg), jax.random.PRNGKey(0)
    x = jnp.zeros(input_shape, jnp.float32)
    modules = model.module_paths(key, x)  # path -> module, in call order
    variables = jax.eval_shape(
        lambda x: model.init(key, x, capture_intermediates=True, mutable=True), x
    )
    layers = tuple(
        Layer(
            _name(path, module),
            tuple(_at(variables["intermediates"], path)["__call__"][0].shape),
            count_params(_at(variables["params"], path)),
        )
        for path, module in modules.items()
        if path and not any(other.startswith(path + "/") for other in modules)
    )
    params = variables["params"]
    return ModelSummary(
        title=title,
        input_shape=tuple(input_shape),
        layers=layers,
        trainable=count_params(params),
        held_at_zero=count_params(params) - n_trained_params(cfg, params),
        non_trainable=count_params(variables.get("batch_stats", {})),
    )


@functools.cache
def summaries(pool: str = "avg", num_classes: int = NUM_CLASSES) -> dict[str, ModelSummary]:
    """The study's models: the CNN, both autoencoders, and the encoder classifiers of Q2, for a
    task of `num_classes` classes."""
    cnn = TrainConfig(model="cnn", pool=pool, num_classes=num_classes)
    out = {"cnn": trace(cnn, (1, 28, 28, 1), f"CNN ({pool} pooling)")}
    for arch, widths in ARCHITECTURES.items():
        dims = "-".join(map(str, (784, *widths, *reversed(widths[:-1]), 784)))
        cfg = TrainConfig(model="autoencoder", widths=widths)
        out[f"autoencoder_{arch}"] = trace(cfg, (1, 784), f"denoising autoencoder, {arch} {dims}")
    for arch, widths in ARCHITECTURES.items():
        dims = "-".join(map(str, (784, *widths)))
        cfg = TrainConfig(model="encoder_classifier", widths=widths, num_classes=num_classes)
        title = f"encoder classifier, {arch} encoder {dims} + head to {num_classes}"
        out[f"encoder_classifier_{arch}"] = trace(cfg, (1, 784), title)
    return out


def _totals(s: ModelSummary) -> list[str]:
    lines = [f"Trainable params: {s.trainable:,}"]
    if s.held_at_zero:
        lines.append(
            f"  of which held at 0 in training: the {s.held_at_zero:,} convolution biases (each "
            "feeds a BatchNorm that subtracts it: its gradient is exactly 0)"
        )
    lines.append("Non-trainable params: 0")
    if s.non_trainable:
        lines.append(f"BatchNorm running statistics (state, not parameters): {s.non_trainable:,}")
    return lines


def text_table(s: ModelSummary) -> str:
    """The table as torchsummary prints it."""
    head = ("Layer (type)", "Output Shape", "Param #")
    rows = [(x.name, _shape_text(x.output_shape), f"{x.params:,}") for x in s.layers]
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    rule = "=" * (sum(w) + 4)
    lines = [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}" for a, b, c in [head, *rows]]
    return "\n".join(
        [s.title, f"input {_shape_text(s.input_shape)}", rule, lines[0], rule, *lines[1:], rule]
        + _totals(s)
    )


def markdown_table(s: ModelSummary) -> str:
    """The table in Markdown, with the input shape and totals."""
    lines = ["| layer (type) | output shape | parameters |", "|---|---|---:|"]
    lines += [f"| {x.name} | {_shape_text(x.output_shape)} | {x.params:,} |" for x in s.layers]
    lines.append(f"| **total** | | **{s.trainable:,}** |")
    return "\n".join(
        [f"Input {_shape_text(s.input_shape)}.", "", *lines, "", "  \n".join(_totals(s))]
    )


def model_tables(pool: str = "avg", num_classes: int = NUM_CLASSES) -> dict[str, str]:
    """Markdown layer tables keyed like `summaries` (title not included)."""
    return {key: markdown_table(s) for key, s in summaries(pool, num_classes).items()}


def titles(pool: str = "avg", num_classes: int = NUM_CLASSES) -> dict[str, str]:
    """Each model's title, by key."""
    return {key: s.title for key, s in summaries(pool, num_classes).items()}


NOTE = (
    "Output shapes are NHWC, batch first (-1): the original report's PyTorch table is NCHW, "
    "so its [-1, 10, 26, 26] is [-1, 26, 26, 10] here."
)


def main(argv=None) -> None:
    """`python -m fmnist_jax.architecture`: print every model's layer table."""
    import argparse
    import sys

    from fmnist_jax.io import tolerant_output
    from fmnist_jax.models import POOLS
    from fmnist_jax.placement import backend_problem

    tolerant_output()
    p = argparse.ArgumentParser(
        description="Layer tables and parameter counts of the study's models."
    )
    p.add_argument("--pool", choices=POOLS, default="avg", help="the CNN's pooling")
    args = p.parse_args(argv)
    if (problem := backend_problem()) is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    print(NOTE)
    for s in summaries(args.pool).values():
        print()
        print(text_table(s))


if __name__ == "__main__":
    main()
