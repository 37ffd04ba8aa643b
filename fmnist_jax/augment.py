"""Batched, jittable image augmentation with explicit PRNG keys.

Images are float32 NHWC ``[B, H, W, C]`` in [0, 1]. ``augment_batch`` is the online
augmentation used inside the compiled train step; ``expanded_batch`` reads batches of what the
original report trained on (originals + one rotated copy + one noisy copy, drawn once; a
flipped copy too with ``flip``), each member of a run with its own draw.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

AUG_MODES = ("none", "expand", "online")

# Fixed fold_in constants: each transform gets its own stream, so turning one off
# does not change the random draws of the others.
_ROTATE_STREAM = 0
_FLIP_STREAM = 1
_NOISE_STREAM = 2


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Augmentation settings; frozen and hashable, so usable as a jit static arg."""

    max_degrees: float = 10.0  # rotation angle ~ U[-max_degrees, +max_degrees]
    noise_std: float = 0.1  # Gaussian sigma on the [0, 1] scale, result clipped
    flip: bool = False  # online: flip with p=0.5; expand: a flipped copy. Off by default
    rotate: bool = True
    noise: bool = True

    def __post_init__(self):
        # `not (a <= x <= b)` also rejects NaN.
        if not (0.0 <= self.max_degrees <= 180.0):
            raise ValueError(f"max_degrees must be in [0, 180], got {self.max_degrees!r}")
        if not (self.noise_std >= 0.0):
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")


def rotate(images: jax.Array, angles_degrees: jax.Array) -> jax.Array:
    """Rotate each image about its centre, bilinear, zero fill: [B,H,W,C], [B] -> [B,H,W,C].

    Same direction and boundary rule as
    ``scipy.ndimage.rotate(img, angle, reshape=False, order=1, mode="constant", cval=0)``:
    an output pixel whose source point falls outside [0, H-1] x [0, W-1] is 0.
    Hand-written gathers rather than a vmapped ``map_coordinates`` (about as fast on CPU):
    ``map_coordinates``' "constant" mode blends the edge pixels into a one-pixel margin
    outside the image, which scipy's "constant" does not.
    """
    b, h, w, c = images.shape
    theta = jnp.deg2rad(angles_degrees.astype(jnp.float32))[:, None, None]
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij"
    )
    # scipy maps output -> input with [[c, s], [-s, c]] in (row, col) order.
    src_y = cos * yy + sin * xx + cy  # [B,H,W]
    src_x = -sin * yy + cos * xx + cx
    # The slack absorbs float32 error in cos/sin: at exact multiples of 90 degrees scipy
    # (float64, exact cosdg/sindg) lands exactly on the edge rows and keeps them.
    slack = 1e-4
    inside = (
        (src_y >= -slack) & (src_y <= h - 1 + slack) & (src_x >= -slack) & (src_x <= w - 1 + slack)
    )
    src_y = jnp.clip(src_y, 0, h - 1)
    src_x = jnp.clip(src_x, 0, w - 1)
    # Clamping the lower corner to H-2 keeps both neighbours in range; at the last row
    # the weight of the upper neighbour is then exactly 1, so nothing is lost.
    y0 = jnp.clip(jnp.floor(src_y), 0, h - 2)
    x0 = jnp.clip(jnp.floor(src_x), 0, w - 2)
    fy = (src_y - y0)[..., None]
    fx = (src_x - x0)[..., None]
    base = (y0 * w + x0).astype(jnp.int32).reshape(b, h * w, 1)
    flat = images.reshape(b, h * w, c)

    def at(offset):
        return jnp.take_along_axis(flat, base + offset, axis=1).reshape(b, h, w, c)

    top = at(0) * (1 - fx) + at(1) * fx
    bottom = at(w) * (1 - fx) + at(w + 1) * fx
    out = top * (1 - fy) + bottom * fy
    return jnp.where(inside[..., None], out, 0.0).astype(images.dtype)


def random_angles(key: jax.Array, n: int, max_degrees: float) -> jax.Array:
    """Angles in degrees, uniform in [-max_degrees, max_degrees]: [n] float32."""
    return jax.random.uniform(key, (n,), jnp.float32, -max_degrees, max_degrees)


def add_noise(key: jax.Array, images: jax.Array, std: float) -> jax.Array:
    """clip(images + std * N(0, 1), 0, 1), same shape as images."""
    noise = jax.random.normal(key, images.shape, images.dtype)
    return jnp.clip(images + std * noise, 0.0, 1.0)


def corrupt(key: jax.Array, images: jax.Array, std: float) -> jax.Array:
    """The denoising autoencoder's input corruption: exactly ``add_noise``."""
    return add_noise(key, images, std)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Flip each image horizontally with probability 0.5: [B,H,W,C] -> [B,H,W,C]."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1))
    w = images.shape[2]
    # A per-image column gather, not where(flip, x[:, :, ::-1], x): XLA fuses the
    # producer (e.g. the rotation) into both branches of a select and computes it twice.
    columns = jnp.where(flip, jnp.arange(w - 1, -1, -1), jnp.arange(w))  # [B, W]
    return jnp.take_along_axis(images, columns[:, None, :, None], axis=2)


def augment_batch(key: jax.Array, images: jax.Array, cfg: AugmentConfig) -> jax.Array:
    """Online augmentation: rotate, then flip, then noise, each as enabled in cfg."""
    if cfg.rotate:
        angles = random_angles(
            jax.random.fold_in(key, _ROTATE_STREAM), images.shape[0], cfg.max_degrees
        )
        images = rotate(images, angles)
    if cfg.flip:
        images = random_flip(jax.random.fold_in(key, _FLIP_STREAM), images)
    if cfg.noise:
        images = add_noise(jax.random.fold_in(key, _NOISE_STREAM), images, cfg.noise_std)
    return images


def expand_copies(cfg: AugmentConfig) -> tuple[str, ...]:
    """The augmented copies of every image in the expanded set, in their order: "rotated" (with
    cfg.rotate), "noisy" (cfg.noise), "flipped" (cfg.flip); the original report's are the first
    two. The set holds 1 + len(copies) times the images."""
    wanted = (("rotated", cfg.rotate), ("noisy", cfg.noise), ("flipped", cfg.flip))
    return tuple(name for name, on in wanted if on)


def expanded_batch(
    key: jax.Array, images: jax.Array, index: jax.Array, cfg: AugmentConfig
) -> jax.Array:
    """Images `index` [B] of the expanded set of `images` [N, H, W, C]: index i < N is original
    i, c * N + i its c-th copy of `expand_copies(cfg)`: rotated (an angle up to
    cfg.max_degrees), noisy (cfg.noise_std, clipped), flipped (horizontally, every one). The
    copy at index j is drawn from `fold_in(key, j)` alone, so the expanded set is fixed by
    `key` (drawn once, whatever the batches), and the labels of a batch are those of
    `index % N`.
    """
    n = images.shape[0]
    copy, originals = index // n, images[index % n]
    keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(index)
    versions = [originals]
    if cfg.rotate:
        angles = jax.vmap(
            lambda k: random_angles(jax.random.fold_in(k, _ROTATE_STREAM), 1, cfg.max_degrees)[0]
        )(keys)
        versions.append(rotate(originals, angles))
    if cfg.noise:
        noise = jax.vmap(
            lambda k: jax.random.normal(
                jax.random.fold_in(k, _NOISE_STREAM), images.shape[1:], images.dtype
            )
        )(keys)
        versions.append(jnp.clip(originals + cfg.noise_std * noise, 0.0, 1.0))
    if cfg.flip:
        versions.append(originals[:, :, ::-1])
    copy = copy.reshape(-1, *([1] * (images.ndim - 1)))
    out = versions[-1]
    for c in range(len(versions) - 2, -1, -1):
        out = jnp.where(copy == c, versions[c], out)
    return out
