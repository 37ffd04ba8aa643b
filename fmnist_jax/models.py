"""Flax Linen models of the study: the small CNN, the denoising MLP autoencoder, the encoder
classifier.

Every kernel is Xavier/Glorot-uniform (PyTorch's `xavier_uniform_` with its fan convention:
for a conv kernel fan_in = 9 * C_in, fan_out = 9 * C_out), every bias zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

XAVIER = nn.initializers.xavier_uniform()
ZEROS = nn.initializers.zeros

NUM_CLASSES = 5
BASE_WIDTHS: tuple[int, ...] = (512, 256, 64)
THICK_WIDTHS: tuple[int, ...] = (600, 550, 512)
ARCHITECTURES = {"base": BASE_WIDTHS, "thick": THICK_WIDTHS}
POOLS = ("avg", "max")
CONV_IMPLS = ("auto", "xla", "matmul")


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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", XAVIER, (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", ZEROS, (self.features,), jnp.float32)
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


class CNN(nn.Module):
    """The report's CNN (230,735 trainable parameters), NHWC input [B, 28, 28, 1] -> logits [B, 5].

    conv10-BN-ReLU-pool2 -> conv20-BN-ReLU -> conv40-BN-ReLU -> conv80-BN-ReLU-pool2 ->
    flatten(720) -> dense265-ReLU-dropout(0.5) -> dense5.
    """

    pool: str = "avg"
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        # PyTorch BatchNorm2d defaults: momentum 0.1 (= Flax 0.9), eps 1e-5.
        def block(x, features, name):
            x = Conv3x3(features, self.conv_impl, name=f"conv_{name}")(x)
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"bn_{name}"
            )(x)
            return ReLU()(x)

        x = Pool(self.pool)(block(x, 10, "1"))
        x = block(x, 20, "2")
        x = block(x, 40, "3")
        x = Flatten()(Pool(self.pool)(block(x, 80, "4")))
        x = ReLU()(nn.Dense(265, kernel_init=XAVIER, bias_init=ZEROS, name="fc1")(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(NUM_CLASSES, kernel_init=XAVIER, bias_init=ZEROS, name="fc2")(x)


def _dense_relu_stack(x: jax.Array, widths: Sequence[int]) -> jax.Array:
    for i, width in enumerate(widths):
        x = ReLU()(nn.Dense(width, kernel_init=XAVIER, bias_init=ZEROS, name=f"dense_{i}")(x))
    return x


class Encoder(nn.Module):
    """784 -> widths (ReLU after every layer). Input [B, 28, 28, 1] or [B, 784]."""

    widths: tuple[int, ...] = BASE_WIDTHS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _dense_relu_stack(x.reshape(x.shape[0], -1), self.widths)


class Decoder(nn.Module):
    """Mirror of the encoder back to 784, ReLU after every layer including the last."""

    widths: tuple[int, ...] = BASE_WIDTHS

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        return _dense_relu_stack(z, (*reversed(self.widths[:-1]), 784))


class Autoencoder(nn.Module):
    """Denoising MLP autoencoder, e.g. 784-512-256-64-256-512-784 -> reconstruction [B, 784]."""

    widths: tuple[int, ...] = BASE_WIDTHS

    def setup(self):
        """The encoder and its mirrored decoder."""
        self.encoder = Encoder(self.widths)
        self.decoder = Decoder(self.widths)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout or batch norm; kept for a uniform apply signature
        return self.decoder(self.encoder(x))

    def encode(self, x: jax.Array) -> jax.Array:
        """The encoder's code [B, widths[-1]] of images [B, 28, 28, 1] or [B, 784]."""
        return self.encoder(x)


class EncoderClassifier(nn.Module):
    """The autoencoder's encoder plus a linear head to 5 classes -> logits [B, 5]."""

    widths: tuple[int, ...] = BASE_WIDTHS

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        z = Encoder(self.widths, name="encoder")(x)
        return nn.Dense(NUM_CLASSES, kernel_init=XAVIER, bias_init=ZEROS, name="head")(z)


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
