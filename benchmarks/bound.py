"""The FLOP bound of a row: the matmul FLOPs one image costs, and the machine's float32 matmul
peak, so that images/s reads as a share of what the multiply-adds alone would allow.

FLOPs are counted from the layer shapes (`fmnist_jax.architecture.trace`), 2 per multiply-add
of every convolution and dense layer: inference is the forward pass F; a training step is
F + F (kernel gradients) + F (input gradients) less the first layer's input gradient, which
nobody needs (2 x its multiply-adds). BatchNorm, pooling, activations, augmentation, the loss
and the optimizer are not counted: the bound is that of the matmul work alone. For the CNN
that is 4.93 MFLOP per image forward and 14.67 per training step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax.architecture import trace
from fmnist_jax.train import IMAGE_SHAPE, TrainConfig


def matmul_flops(cfg: TrainConfig) -> dict[str, int]:
    """{"train": FLOPs of one image's training step, "infer": of its forward pass} of `cfg`'s
    model (see the module's docstring)."""
    s = trace(cfg, (1, *IMAGE_SHAPE), cfg.model)
    macs = [  # kernel size x output positions, for each convolution and dense layer in order
        (layer.params - layer.output_shape[-1]) * math.prod(layer.output_shape[1:-1])
        for layer in s.layers
        if layer.name.endswith(("(Conv3x3)", "(Dense)"))
    ]
    forward = 2 * sum(macs)
    return {"train": 3 * forward - 2 * macs[0], "infer": forward}


def _best_gflops(call: Callable[[], object], flops: float, reps: int, threads: int) -> float:
    jax.block_until_ready(call())  # warm-up (and compile)
    best = math.inf
    for _ in range(reps):
        cpu0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(call())
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        # On a machine shared with other work the wall time also counts the time this process
        # waited for a core; cpu / threads does not (and, for a library that keeps all its
        # threads busy, equals the wall time of a quiet machine). The larger of the two never
        # overstates the speed.
        best = min(best, max(wall, cpu / threads))
    return flops / best / 1e9


def matmul_peak(
    n: int, reps: int, threads: int, extra: dict[str, Callable[[], object]] | None = None
) -> dict:
    """GFLOP/s of float32 [n, n] @ [n, n], the best of `reps` calls, with NumPy's BLAS, XLA's
    `jnp.dot` and the calls in `extra` (e.g. PyTorch's), at the `threads` this process has, not
    counting time spent waiting for a core (see `_best_gflops`); "best" is the highest of them
    (the machine's peak, as far as its libraries reach it)."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((n, n), np.float32) for _ in range(2))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    dot = jax.jit(jnp.dot)
    calls = {"numpy": lambda: a @ b, "xla": lambda: dot(ja, jb), **(extra or {})}
    out = {name: _best_gflops(call, 2.0 * n**3, reps, threads) for name, call in calls.items()}
    out["best"] = max(out.values())
    return out
