"""Tests for fmnist_jax.augment on real Fashion-MNIST images (read straight from the IDX files)."""

import functools
import gzip
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from fmnist_jax.augment import (
    AUG_MODES,
    AugmentConfig,
    add_noise,
    augment_batch,
    corrupt,
    expanded_batch,
    random_angles,
    random_flip,
    rotate,
)

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")

# Tests call the jitted functions: one compile is cheaper than op-by-op dispatch.
augment_jit = jax.jit(augment_batch, static_argnames="cfg")
rotate_jit = jax.jit(rotate)


@functools.cache
def _read_idx(name: str, offset: int, n: int, item_bytes: int) -> np.ndarray:
    with gzip.open(DATA_DIR / name) as f:
        return np.frombuffer(f.read(offset + n * item_bytes), np.uint8, offset=offset)


def real_images(n: int) -> np.ndarray:
    """First n test images as float32 [n, 28, 28, 1] in [0, 1]."""
    if not DATA_DIR.exists():
        pytest.skip(f"Fashion-MNIST not found at {DATA_DIR}")
    raw = _read_idx("t10k-images-idx3-ubyte.gz", 16, n, 28 * 28)
    return (raw.reshape(n, 28, 28, 1) / 255.0).astype(np.float32)


def real_labels(n: int) -> np.ndarray:
    return _read_idx("t10k-labels-idx1-ubyte.gz", 8, n, 1).astype(np.int32)


def test_zero_angle_is_identity():
    x = real_images(20)
    out = rotate_jit(jnp.asarray(x), jnp.zeros(20))
    # cos 0 = 1 and sin 0 = 0 exactly: the sampling points are the pixel centres, so only the
    # bilinear weights' rounding (a few eps = 1.2e-7 on values in [0, 1]) is left.
    np.testing.assert_allclose(out, x, atol=1e-6, rtol=0)


# float32 here vs float64 in scipy: a sampling coordinate (|c| <= 28 sqrt 2 = 40 pixels from the
# centre) rounds by 40 eps = 4.8e-6 of a pixel, which moves a bilinear sample of values in
# [0, 1] by at most as much (slope <= 1 per pixel); twice that. Both treat a source point
# outside [0, 27] as 0, so the edges agree too.
SCIPY_ATOL = 1e-5


@pytest.mark.parametrize("angle", [-10.0, -7.5, -3.0, 3.0, 7.5, 10.0, 90.0, 180.0])
def test_rotate_matches_scipy(angle):
    x = real_images(20)
    out = np.asarray(rotate_jit(jnp.asarray(x), jnp.full((20,), angle)))[..., 0]

    def scipy_rotate(a):
        planes = x[..., 0].astype(np.float64)
        return np.stack(
            [ndi.rotate(im, a, reshape=False, order=1, mode="constant", cval=0.0) for im in planes]
        )

    assert np.abs(out - scipy_rotate(angle)).max() < SCIPY_ATOL
    if angle % 180:  # +-180 are the same rotation
        # The opposite direction is far off, so the check above pins the direction.
        assert np.abs(out - scipy_rotate(-angle)).max() > 0.1


def test_rotate_there_and_back_restores_interior():
    # Smoothed images: bilinear resampling twice blurs sharp texture, which is not what this checks.
    x = ndi.gaussian_filter(real_images(20), (0, 1.5, 1.5, 0))
    angles = jnp.full((20,), 10.0)
    once = rotate_jit(jnp.asarray(x), angles)
    back = rotate_jit(once, -angles)
    centre = (slice(None), slice(6, 22), slice(6, 22))
    assert np.abs(back - x)[centre].mean() < 0.01
    assert np.abs(back - x)[centre].max() < 0.06
    assert np.abs(once - x)[centre].mean() > 0.03  # the rotation itself is not a no-op


def test_random_angles_uniform_in_range():
    n, max_degrees = 100_000, 10.0
    angles = np.asarray(random_angles(jax.random.key(0), n, max_degrees))
    assert angles.shape == (n,) and angles.dtype == np.float32
    assert angles.min() >= -max_degrees and angles.max() <= max_degrees
    assert angles.min() < -0.999 * max_degrees and angles.max() > 0.999 * max_degrees
    std_err = max_degrees / math.sqrt(3) / math.sqrt(n)
    assert abs(angles.mean()) < 4 * std_err
    # Uniform: each tenth of the range holds ~10% of the draws.
    counts, _ = np.histogram(angles, bins=10, range=(-max_degrees, max_degrees))
    assert np.all(np.abs(counts / n - 0.1) < 0.005)


def test_noise_has_requested_sigma():
    sigma = 0.1
    x = jnp.full((100, 28, 28, 1), 0.5)  # 5 sigma from either clip bound
    delta = np.asarray(add_noise(jax.random.key(1), x, sigma) - x).ravel()
    n = delta.size
    assert abs(delta.std() - sigma) < 4 * sigma / math.sqrt(2 * n)
    assert abs(delta.mean()) < 4 * sigma / math.sqrt(n)


def test_noise_is_clipped_to_unit_interval():
    x = jnp.asarray(real_images(50))
    out = np.asarray(add_noise(jax.random.key(2), x, 1.0))
    assert out.min() == 0.0 and out.max() == 1.0  # large sigma hits both bounds


def test_corrupt_is_add_noise():
    x = jnp.asarray(real_images(10))
    key = jax.random.key(3)
    np.testing.assert_array_equal(corrupt(key, x, 0.2), add_noise(key, x, 0.2))


def _flipped_mask(x, out):
    """Per image: True if out is x mirrored, False if unchanged; fails on anything else."""
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)  # real images are not mirror-symmetric
    return mirrored


def test_random_flip_mirrors_about_half():
    x = real_images(200)
    flipped = _flipped_mask(x, np.asarray(random_flip(jax.random.key(4), jnp.asarray(x))))
    assert 70 <= flipped.sum() <= 130  # Binomial(200, 0.5): mean 100, sd ~7


def test_augment_batch_flip_only():
    x = real_images(100)
    cfg = AugmentConfig(rotate=False, noise=False, flip=True)
    flipped = _flipped_mask(x, np.asarray(augment_jit(jax.random.key(5), jnp.asarray(x), cfg=cfg)))
    assert 0 < flipped.sum() < 100


def test_augment_batch_all_off_is_identity():
    x = real_images(10)
    cfg = AugmentConfig(rotate=False, noise=False, flip=False)
    np.testing.assert_array_equal(augment_jit(jax.random.key(6), jnp.asarray(x), cfg=cfg), x)


def test_augment_batch_keys_determine_output():
    x = jnp.asarray(real_images(32))
    cfg = AugmentConfig(flip=True)
    a = augment_jit(jax.random.key(7), x, cfg=cfg)
    b = augment_jit(jax.random.key(7), x, cfg=cfg)
    c = augment_jit(jax.random.key(8), x, cfg=cfg)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01
    assert a.shape == x.shape and a.dtype == jnp.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_augment_batch_under_jit_and_vmap():
    x = jnp.asarray(real_images(16))
    cfg = AugmentConfig(flip=True)
    keys = jax.random.split(jax.random.key(9), 3)
    stacked = jax.jit(jax.vmap(functools.partial(augment_batch, cfg=cfg), in_axes=(0, None)))(
        keys, x
    )
    assert stacked.shape == (3, *x.shape)
    # jit and vmap may fuse the coordinate arithmetic differently: SCIPY_ATOL's bound applies.
    np.testing.assert_allclose(
        augment_jit(keys[0], x, cfg=cfg), augment_batch(keys[0], x, cfg), atol=SCIPY_ATOL
    )
    for i in range(3):
        np.testing.assert_allclose(stacked[i], augment_jit(keys[i], x, cfg=cfg), atol=SCIPY_ATOL)
    assert np.abs(stacked[0] - stacked[1]).mean() > 0.01


def test_the_expanded_set_is_originals_rotated_and_noisy_copies_drawn_once():
    """Index i < N is original i, N + i its rotated copy, 2N + i its noisy copy; a copy depends
    on its key and index only (the same in any batch, i.e. drawn once), and another key draws
    another set (each member of a run its own)."""
    n, sigma = 50, 0.1
    x = real_images(n)
    cfg = AugmentConfig(noise_std=sigma)
    key = jax.random.key(10)
    batch = jax.jit(expanded_batch, static_argnames="cfg")
    images3 = np.asarray(batch(key, jnp.asarray(x), jnp.arange(3 * n), cfg=cfg))
    assert images3.shape == (3 * n, 28, 28, 1)
    original, rotated, noisy = images3[:n], images3[n : 2 * n], images3[2 * n :]
    np.testing.assert_array_equal(original, x)
    # Rotated copy i is original i turned by an angle within ±max_degrees: the best angle on a
    # fine grid reproduces it (bilinear interpolation of a slightly different angle), far more
    # closely than any other original comes, and the angles really differ from 0.
    grid = np.linspace(-cfg.max_degrees, cfg.max_degrees, 81)
    turned = jax.jit(jax.vmap(lambda a: rotate(jnp.asarray(x), jnp.full((n,), a))))(grid)
    errors = ((np.asarray(turned) - rotated[None]) ** 2).mean(axis=(2, 3, 4))  # [angles, n]
    best = errors.min(axis=0)
    assert best.max() < 2e-3, best.max()
    assert np.mean(np.abs(grid[errors.argmin(axis=0)])) > 1.0
    others = ((rotated.reshape(n, 1, -1) - x.reshape(1, n, -1)) ** 2).mean(-1) + np.diag(
        np.full(n, np.inf)
    )
    assert np.all(best < others.min(axis=1))
    # Noisy copy: the originals plus (clipped) noise of about sigma, nothing geometric.
    assert np.abs(noisy - x).max() < 6 * sigma
    assert 0.5 * sigma < (noisy - x).std() < 1.1 * sigma
    # Drawn once: any batch of indices gives the same images.
    order = np.random.default_rng(0).permutation(3 * n)[:40]
    np.testing.assert_array_equal(
        batch(key, jnp.asarray(x), jnp.asarray(order), cfg=cfg), images3[order]
    )
    # Another key, another draw of the copies (the originals stay).
    other = np.asarray(batch(jax.random.key(11), jnp.asarray(x), jnp.arange(3 * n), cfg=cfg))
    np.testing.assert_array_equal(other[:n], x)
    assert np.abs(other[n:] - images3[n:]).mean() > 0.01


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_degrees": -1.0},
        {"max_degrees": 181.0},
        {"max_degrees": float("nan")},
        {"noise_std": -0.1},
        {"noise_std": float("nan")},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_config_defaults_and_hashable():
    cfg = AugmentConfig()
    assert (cfg.max_degrees, cfg.noise_std, cfg.flip, cfg.rotate, cfg.noise) == (
        10.0,
        0.1,
        False,
        True,
        True,
    )
    assert hash(cfg) == hash(AugmentConfig()) and cfg != AugmentConfig(flip=True)
    assert AUG_MODES == ("none", "expand", "online")
    with pytest.raises(TypeError):
        AugmentConfig(10.0)  # keyword-only
