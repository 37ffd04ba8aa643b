"""Flax Linen models of the study: the small CNN, the denoising MLP autoencoder, the encoder
classifier.

By default (the assignment's variant) every kernel is Xavier/Glorot-uniform (PyTorch's
`xavier_uniform_` with its fan convention: for a conv kernel fan_in = 9 * C_in, fan_out =
9 * C_out), every bias zero; `init` chooses another scheme (see `initializers`) and
`num_classes` the classifiers' output size (docs/design.md#models).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

XAVIER = nn.initializers.xavier_uniform()
ZEROS = nn.initializers.zeros

NUM_CLASSES = 5  # the original variant's
# Kernel initialisers by name (`flax.linen.initializers`, which are `jax.nn.initializers`).
# Their normal ones are truncated at 2 standard deviations and rescaled so that the variance is
# the stated one (jax's convention; PyTorch's `*_normal_` are plain normals of that variance).
KERNEL_INITS = {
    "xavier_uniform": nn.initializers.xavier_uniform(),  # var 2 / (fan_in + fan_out)
    "xavier_normal": nn.initializers.xavier_normal(),
    "he_uniform": nn.initializers.he_uniform(),  # var 2 / fan_in
    "he_normal": nn.initializers.he_normal(),
    "lecun_normal": nn.initializers.lecun_normal(),  # var 1 / fan_in
    # PyTorch's default for nn.Linear / nn.Conv2d: kaiming_uniform_(a=sqrt(5)), i.e.
    # U(+-sqrt(1 / fan_in)), var 1 / (3 fan_in) (torch/nn/modules/linear.py, reset_parameters).
    "pytorch": nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
}
INITS = tuple(KERNEL_INITS)
BASE_WIDTHS: tuple[int, ...] = (512, 256, 64)
THICK_WIDTHS: tuple[int, ...] = (600, 550, 512)
ARCHITECTURES = {"base": BASE_WIDTHS, "thick": THICK_WIDTHS}
POOLS = ("avg", "max")
CONV_IMPLS = ("auto", "xla", "matmul")


def initializers(init: str, fan_in: int):
    """(kernel_init, bias_init) of the scheme `init` for a layer with `fan_in` inputs (a conv
    kernel's fan_in counts its window: 9 * C_in). Biases are zero, except for "pytorch":
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default bias of nn.Linear and nn.Conv2d
    (torch/nn/modules/linear.py and conv.py, `reset_parameters`).

    Raises:
      ValueError: an unknown scheme.
    """
    if init not in KERNEL_INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if init != "pytorch":
        return KERNEL_INITS[init], ZEROS
    bound = fan_in**-0.5

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return KERNEL_INITS[init], bias_init


def resolve_conv_impl(impl: str) -> str:
    """`auto` picks the shifted-slice matmul on CPU and XLA's convolution elsewhere.

    Why: on the CPU, XLA's convolution kernel-gradient is ~14x slower inside `lax.scan` than
    outside; nine shifted slices and one matmul have no such penalty. On GPU/TPU the library
    convolution is the fast one.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {impl!r}; choose one of {CONV_IMPLS}")
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return impl


def conv3x3_valid(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
    """3x3 'VALID' convolution, stride 1, NHWC: x [B, H, W, Cin], kernel [3, 3, Cin, Cout] ->
    [B, H-2, W-2, Cout]."""
    impl = resolve_conv_impl(impl)
    if impl == "xla":
        nhwc = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=nhwc)
    _, h, w, _ = x.shape
    # Patches ordered (dy, dx, cin) to match kernel.reshape(9 * Cin, Cout).
    patches = jnp.concatenate(
        [x[:, dy : dy + h - 2, dx : dx + w - 2, :] for dy in range(3) for dx in range(3)], axis=-1
    )
    return patches @ kernel.reshape(-1, kernel.shape[-1])


class Conv3x3(nn.Module):
    """A 3x3 VALID convolution, its implementation chosen per backend (same params either way)."""

    features: int
    impl: str = "auto"
    weight_init: str = "xavier_uniform"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_init, bias_init = initializers(self.weight_init, 9 * x.shape[-1])
        kernel = self.param("kernel", kernel_init, (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", bias_init, (self.features,), jnp.float32)
        return conv3x3_valid(x, kernel, self.impl) + bias


class ReLU(nn.Module):
    """`nn.relu` as a layer (PyTorch's `nn.ReLU`), so that the layer tables list it."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(x)


class Pool(nn.Module):
    """`avg` (the assignment's) or `max` pooling over `window`, stride `window`, VALID, NHWC.

    Raises:
      ValueError: an unknown kind.
    """

    kind: str = "avg"
    window: tuple[int, int] = (2, 2)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind not in POOLS:
            raise ValueError(f"unknown pool {self.kind!r}; choose one of {POOLS}")
        pool = nn.avg_pool if self.kind == "avg" else nn.max_pool
        return pool(x, self.window, strides=self.window, padding="VALID")


class Flatten(nn.Module):
    """[B, ...] -> [B, prod(...)], in the array's (H, W, C) order."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)


def dense(features: int, init: str, fan_in: int, name: str) -> nn.Dense:
    """A dense layer initialised by the scheme `init` (see `initializers`)."""
    kernel_init, bias_init = initializers(init, fan_in)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init, name=name)


class CNN(nn.Module):
    """The report's CNN (230,735 trainable parameters with 5 classes), NHWC input
    [B, 28, 28, 1] -> logits [B, num_classes].

    conv10-BN-ReLU-pool2 -> conv20-BN-ReLU -> conv40-BN-ReLU -> conv80-BN-ReLU-pool2 ->
    flatten(720) -> dense265-ReLU-dropout(0.5) -> dense(num_classes).
    """

    pool: str = "avg"
    conv_impl: str = "auto"
    weight_init: str = "xavier_uniform"
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        # PyTorch BatchNorm2d defaults: momentum 0.1 (= Flax 0.9), eps 1e-5.
        def block(x, features, name):
            x = Conv3x3(features, self.conv_impl, self.weight_init, name=f"conv_{name}")(x)
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"bn_{name}"
            )(x)
            return ReLU()(x)

        x = Pool(self.pool)(block(x, 10, "1"))
        x = block(x, 20, "2")
        x = block(x, 40, "3")
        x = Flatten()(Pool(self.pool)(block(x, 80, "4")))
        x = ReLU()(dense(265, self.weight_init, x.shape[-1], "fc1")(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return dense(self.num_classes, self.weight_init, x.shape[-1], "fc2")(x)


def _dense_relu_stack(x: jax.Array, widths: Sequence[int], init: str) -> jax.Array:
    for i, width in enumerate(widths):
        x = ReLU()(dense(width, init, x.shape[-1], f"dense_{i}")(x))
    return x


class Encoder(nn.Module):
    """784 -> widths (ReLU after every layer). Input [B, 28, 28, 1] or [B, 784]."""

    widths: tuple[int, ...] = BASE_WIDTHS
    weight_init: str = "xavier_uniform"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _dense_relu_stack(x.reshape(x.shape[0], -1), self.widths, self.weight_init)


class Decoder(nn.Module):
    """Mirror of the encoder back to 784, ReLU after every layer including the last."""

    widths: tuple[int, ...] = BASE_WIDTHS
    weight_init: str = "xavier_uniform"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        return _dense_relu_stack(z, (*reversed(self.widths[:-1]), 784), self.weight_init)


class Autoencoder(nn.Module):
    """Denoising MLP autoencoder, e.g. 784-512-256-64-256-512-784 -> reconstruction [B, 784]."""

    widths: tuple[int, ...] = BASE_WIDTHS
    weight_init: str = "xavier_uniform"

    def setup(self):
        """The encoder and its mirrored decoder."""
        self.encoder = Encoder(self.widths, self.weight_init)
        self.decoder = Decoder(self.widths, self.weight_init)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout or batch norm; kept for a uniform apply signature
        return self.decoder(self.encoder(x))

    def encode(self, x: jax.Array) -> jax.Array:
        """The encoder's code [B, widths[-1]] of images [B, 28, 28, 1] or [B, 784]."""
        return self.encoder(x)


class EncoderClassifier(nn.Module):
    """The autoencoder's encoder plus a linear head -> logits [B, num_classes]."""

    widths: tuple[int, ...] = BASE_WIDTHS
    weight_init: str = "xavier_uniform"
    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        z = Encoder(self.widths, self.weight_init, name="encoder")(x)
        return dense(self.num_classes, self.weight_init, z.shape[-1], "head")(z)


def with_pretrained_encoder(classifier_params: dict, encoder_params: dict) -> dict:
    """Return classifier params whose encoder is replaced by `encoder_params`.

    Raises:
      ValueError: the encoder's shapes are not the classifier's (another architecture).
    """
    target = classifier_params["encoder"]
    got = jax.tree_util.tree_map(jnp.shape, encoder_params)
    want = jax.tree_util.tree_map(jnp.shape, target)
    if got != want:
        raise ValueError(
            "pretrained encoder does not fit the classifier: "
            f"encoder shapes {got} vs classifier's {want}; use the same --arch for both stages"
        )
    return {**classifier_params, "encoder": encoder_params}


def count_params(params) -> int:
    """The number of scalars in a pytree of parameters."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
