"""Where a run's members and data live: one device, members spread over devices (`seeds`), or
every batch split over devices (`data`); and how the members share one compiled program.

Both sharded modes use a one-axis `Mesh` over every device (`jax.make_mesh`), which spans all
processes' devices once `jax.distributed.initialize` has run (`fmnist_jax.distributed`). Then
`jax.device_put` still places host data on the mesh (every process passes the same values, and
each keeps its devices' part), but a sharded array is not fully addressable by any one process,
and the host reads it with `to_host`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PARALLEL_MODES = ("auto", "none", "seeds", "data")
MEMBER_MAPS = ("auto", "vmap", "map")


def resolve_parallel(parallel: str, n_members: int) -> str:
    """`auto` -> `seeds` with several devices and members (no communication at all), else
    `none`.

    Raises:
      ValueError: an unknown mode.
    """
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {parallel!r}; choose one of {PARALLEL_MODES}")
    if parallel != "auto":
        return parallel
    return "seeds" if jax.device_count() > 1 and n_members > 1 else "none"


def padded_members(n_members: int, mode: str) -> int:
    """Members actually trained: in `seeds` mode the member axis is padded to a multiple of the
    device count (the padding members are trained and discarded)."""
    if mode != "seeds":
        return n_members
    d = jax.device_count()
    return int(math.ceil(n_members / d) * d)


def resolve_member_map(member_map: str, mode: str) -> str:
    """How a run's members share its one compiled program: `vmap` (every op batched over the
    member axis) or `map` (`lax.map`: one member after another, unbatched ops).

    `auto` is `map` on the CPU when the run is not sharded, `vmap` otherwise: on small CPU hosts
    the batched convolution matmuls and BatchNorm passes of the CNN run slower than the same ops
    per member (`benchmarks.run --only seeds` measures both), while accelerators want the wide
    batched ops, and the sharded modes split the member or batch axis. Both give the same
    numbers up to float32 summation order.

    Raises:
      ValueError: an unknown value, or `map` with a sharded mode.
    """
    if member_map not in MEMBER_MAPS:
        raise ValueError(f"unknown member_map {member_map!r}; choose one of {MEMBER_MAPS}")
    if member_map == "map" and mode != "none":
        raise ValueError(
            f"member_map 'map' runs the members one after another on one device; "
            f"parallel mode {mode!r} spreads them over devices: use member_map "
            f"'vmap' or 'auto' with it, or parallel 'none'"
        )
    if member_map != "auto":
        return member_map
    return "map" if mode == "none" and jax.default_backend() == "cpu" else "vmap"


def side_by_side(n_members: int, member_map: str) -> int:
    """Members whose images one op processes together: all of them under vmap, one under map."""
    return n_members if member_map == "vmap" else 1


@dataclass(frozen=True)
class Placement:
    """How to put a run's states and data on the devices for one parallel mode."""

    mode: str
    mesh: Mesh | None

    def state(self, tree):
        """Stacked member states: split over the devices (`seeds`), replicated (`data`), or on
        the default device."""
        if self.mode == "seeds":
            return jax.device_put(tree, NamedSharding(self.mesh, P("devices")))
        if self.mode == "data":
            return jax.device_put(tree, NamedSharding(self.mesh, P()))
        return jax.device_put(tree)

    def data(self, array):
        """A data array, replicated on every device of the mesh (or on the default device)."""
        if self.mesh is None:
            return jax.device_put(array)
        return jax.device_put(array, NamedSharding(self.mesh, P()))

    @property
    def batch_sharding(self) -> NamedSharding | None:
        """In `data` mode, one member's batch split over the devices along its batch axis."""
        return NamedSharding(self.mesh, P("devices")) if self.mode == "data" else None


def make_placement(mode: str) -> Placement:
    """The `Placement` of a resolved mode (`none`, `seeds` or `data`)."""
    if mode == "none":
        return Placement(mode, None)
    # Auto axis type: XLA's partitioner propagates the shardings we place on the inputs.
    mesh = jax.make_mesh((jax.device_count(),), ("devices",), axis_types=(AxisType.Auto,))
    return Placement(mode, mesh)


def first_members(states, n: int):
    """The first `n` members of stacked states (padding members dropped), ready.

    With members spread over several processes, slicing is a collective; it is waited for, so
    that no other collective (a barrier, a checkpoint's) starts while it is in flight: two at
    once deadlocked now and then with the CPU's collectives (gloo).
    """
    return jax.block_until_ready(jax.tree_util.tree_map(lambda x: x[:n], states))


def to_host(tree):
    """A pytree of arrays as NumPy arrays, whichever devices and processes hold them.

    `jax.device_get` refuses an array spread over several processes' devices; such an array is
    gathered (`process_allgather`), a collective: every process must then call `to_host` on
    arrays of the same shapes and shardings, in the same order.
    """

    def read(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.device_get(x)

    return jax.tree_util.tree_map(read, tree)


def replicated_across_processes(tree):
    """With several processes, arrays held by one process's devices alone (each process has its
    own copy: states trained with parallel `none`, fresh initialisations) as arrays replicated
    over every device, which collective saves (Orbax) need; anything else unchanged."""
    if jax.process_count() == 1:
        return tree
    everywhere = NamedSharding(jax.make_mesh((jax.device_count(),), ("devices",)), P())

    def spread(x):
        if isinstance(x, jax.Array) and x.is_fully_addressable:
            return jax.device_put(np.asarray(x), everywhere)
        return x

    return jax.tree_util.tree_map(spread, tree)


def backend_problem() -> str | None:
    """Why JAX cannot start the backend the environment asks for (e.g. JAX_PLATFORMS=cuda on a
    machine without CUDA), with the fix; None when it starts."""
    try:
        jax.devices()
        return None
    except Exception as e:  # noqa: BLE001 - JAX raises RuntimeError, or a bare AssertionError for cuda
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    name = next((n for n in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME") if os.environ.get(n)), None)
    if name is None:
        return f"JAX cannot start a backend ({reason})."
    return (
        f"{name}={os.environ[name]} asks JAX for a backend this machine does not have or cannot "
        f"start ({reason}). Fix: unset {name} (JAX then picks the best backend available) or set "
        f"{name}=cpu; for a GPU, install JAX with its CUDA plugin (pip install -U 'jax[cuda12]'), "
        "for a TPU 'jax[tpu]'."
    )
