"""Layer tables of the study's models (like PyTorch's `torchsummary`), traced from the real Flax
modules: every layer's output shape and parameter count, and the totals.

    python -m fmnist_jax.summary

Shapes are NHWC (batch first, channels last) as JAX computes them, so the CNN's first
convolution reads `[-1, 26, 26, 10]` where the original report (PyTorch, NCHW) printed
`[-1, 10, 26, 26]`. "Trainable params" counts every parameter, BatchNorm scale and bias
included; BatchNorm's running statistics are state, not parameters (as in PyTorch, where
they are buffers), and are listed separately.

How it is traced: the model is applied under `jax.eval_shape` (nothing is computed) with
`flax.linen.intercept_methods` recording every module call, and the activation and pooling
functions the models call through `flax.linen` (`nn.relu`, `nn.avg_pool`, `nn.max_pool`)
wrapped for the duration so they are recorded too. A change of rank between two layers is a
flatten. So the table follows the models' code rather than a hand-written description.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax.models import ARCHITECTURES, CNN, Autoencoder, EncoderClassifier, count_params


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
    non_trainable: int  # BatchNorm running statistics (state, not parameters)


def _shape_text(shape) -> str:
    return "[" + ", ".join(["-1", *map(str, shape[1:])]) + "]"


def _size(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


@contextlib.contextmanager
def _record_functions(events: list) -> Iterator[None]:
    """Wrap the `flax.linen` functions the models call so each call is recorded."""

    def wrap(attr: str, label: Callable[..., str]):
        original = getattr(nn, attr)

        def recorded(x, *args, **kwargs):
            out = original(x, *args, **kwargs)
            events.append(("fn", label(*args, **kwargs), tuple(x.shape), tuple(out.shape), 0))
            return out

        return attr, original, recorded

    def pool_label(kind):
        return lambda window, *a, **k: f"{kind} {'x'.join(map(str, window))}"

    patches = [
        wrap("relu", lambda *a, **k: "ReLU"),
        wrap("avg_pool", pool_label("AvgPool")),
        wrap("max_pool", pool_label("MaxPool")),
    ]
    try:
        for attr, _, recorded in patches:
            setattr(nn, attr, recorded)
        yield
    finally:
        for attr, original, _ in patches:
            setattr(nn, attr, original)


def trace(model: nn.Module, input_shape: tuple[int, ...], title: str) -> ModelSummary:
    """Trace `model` on an input of `input_shape` (batch included) into a layer table."""
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
    events: list = []
    stack: list[list[bool]] = []  # per open module call: [has_child_calls]

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "setup":
            return next_fun(*args, **kwargs)
        if stack:
            stack[-1][0] = True
        stack.append([False])
        try:
            out = next_fun(*args, **kwargs)
        finally:
            had_children = stack.pop()[0]
        if context.method_name == "__call__" and not had_children:
            module = context.module
            path = "/".join(module.path) if getattr(module, "path", None) else (module.name or "")
            params = _size(module.variables.get("params", {}))
            kind = type(module).__name__
            if isinstance(module, nn.Dropout):
                kind += f" {module.rate:g}"
            events.append(
                (
                    "module",
                    f"{path} ({kind})",
                    tuple(args[0].shape) if args else (),
                    tuple(out.shape),
                    params,
                )
            )
        return out

    def apply(variables, x):
        with _record_functions(events), nn.intercept_methods(interceptor):
            return model.apply(variables, x)

    jax.eval_shape(apply, variables, x)

    layers, previous = [], tuple(input_shape)
    for _kind, name, in_shape, out_shape, params in events:
        if len(in_shape) < len(previous) and math.prod(in_shape[1:]) == math.prod(previous[1:]):
            layers.append(Layer("Flatten", in_shape, 0))
        layers.append(Layer(name, out_shape, params))
        previous = out_shape
    trainable = count_params(variables["params"])
    if sum(layer.params for layer in layers) != trainable:
        raise AssertionError(
            f"{title}: the layer rows miss parameters "
            f"({sum(layer.params for layer in layers)} vs {trainable})"
        )
    return ModelSummary(
        title=title,
        input_shape=tuple(input_shape),
        layers=tuple(layers),
        trainable=trainable,
        non_trainable=_size(variables.get("batch_stats", {})),
    )


def summaries(pool: str = "avg") -> dict[str, ModelSummary]:
    """The study's models: the CNN, both autoencoders, and the encoder classifiers of Q2."""
    out = {"cnn": trace(CNN(pool=pool), (1, 28, 28, 1), f"CNN ({pool} pooling)")}
    for arch, widths in ARCHITECTURES.items():
        dims = "-".join(map(str, (784, *widths, *reversed(widths[:-1]), 784)))
        out[f"autoencoder_{arch}"] = trace(
            Autoencoder(widths=widths), (1, 784), f"denoising autoencoder, {arch} {dims}"
        )
    for arch, widths in ARCHITECTURES.items():
        dims = "-".join(map(str, (784, *widths)))
        out[f"encoder_classifier_{arch}"] = trace(
            EncoderClassifier(widths=widths),
            (1, 784),
            f"encoder classifier, {arch} encoder {dims} + head to 5",
        )
    return out


def param_counts(pool: str = "avg") -> dict[str, int]:
    """Trainable parameters per model: cnn, autoencoder_base/thick, encoder_classifier_base/thick."""
    return {key: s.trainable for key, s in summaries(pool).items()}


def _totals(s: ModelSummary) -> list[str]:
    lines = [f"Trainable params: {s.trainable:,}"]
    biases = sum(layer.output_shape[-1] for layer in s.layers if "(Conv3x3)" in layer.name)
    if biases:
        lines.append(
            f"  of which held at 0 in training: the {biases:,} convolution biases (each "
            "feeds a BatchNorm that subtracts it: its gradient is exactly 0)"
        )
    lines.append("Non-trainable params: 0")
    if s.non_trainable:
        lines.append(f"BatchNorm running statistics (state, not parameters): {s.non_trainable:,}")
    return lines


def text_table(s: ModelSummary) -> str:
    """The table as torchsummary prints it."""
    rows = [
        (layer.name, _shape_text(layer.output_shape), f"{layer.params:,}") for layer in s.layers
    ]
    w0 = max(len("Layer (type)"), *(len(r[0]) for r in rows))
    w1 = max(len("Output Shape"), *(len(r[1]) for r in rows))
    w2 = max(len("Param #"), *(len(r[2]) for r in rows))
    rule = "=" * (w0 + w1 + w2 + 4)
    lines = [
        s.title,
        f"input {_shape_text(s.input_shape)}",
        rule,
        f"{'Layer (type)':<{w0}}  {'Output Shape':<{w1}}  {'Param #':>{w2}}",
        rule,
    ]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>{w2}}" for a, b, c in rows]
    return "\n".join([*lines, rule, *_totals(s)])


def markdown_table(s: ModelSummary) -> str:
    """The table in Markdown, with the input shape and totals."""
    lines = ["| layer (type) | output shape | parameters |", "|---|---|---:|"]
    lines += [
        f"| {layer.name} | {_shape_text(layer.output_shape)} | {layer.params:,} |"
        for layer in s.layers
    ]
    lines.append(f"| **total** | | **{s.trainable:,}** |")
    return "\n".join(
        [f"Input {_shape_text(s.input_shape)}.", "", *lines, "", "  \n".join(_totals(s))]
    )


def model_tables(pool: str = "avg") -> dict[str, str]:
    """Markdown layer tables keyed like `param_counts` (title not included)."""
    return {key: markdown_table(s) for key, s in summaries(pool).items()}


def titles(pool: str = "avg") -> dict[str, str]:
    """Each model's title, by key."""
    return {key: s.title for key, s in summaries(pool).items()}


NOTE = (
    "Output shapes are NHWC, batch first (-1): the original report's PyTorch table is NCHW, "
    "so its [-1, 10, 26, 26] is [-1, 26, 26, 10] here."
)


def main(argv=None) -> None:
    """`python -m fmnist_jax.summary`: print every model's layer table."""
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
