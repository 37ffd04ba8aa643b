"""JAX's persistent compilation cache, on by default for the entry points.

A sweep compiles the same programs again and again across configurations and processes (a
rerun, a resumed sweep, the study after the single experiments); the cache turns each repeat
compile (seconds on a CPU) into a file read. `FMNIST_JAX_CACHE=0` turns it off; `JAX_COMPILATION_CACHE_DIR`
or `FMNIST_JAX_CACHE=DIR` chooses the folder (default ~/.cache/fmnist_jax/xla).
"""

from __future__ import annotations

import os
from pathlib import Path


def enable(directory: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache (see the module doc); -> its folder, or None when
    off or unwritable."""
    import jax

    setting = os.environ.get("FMNIST_JAX_CACHE", "")
    if setting == "0":
        return None
    directory = Path(directory or setting or os.environ.get("JAX_COMPILATION_CACHE_DIR")
                     or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fmnist_jax" / "xla")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache only costs time; never fail a run over it
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return directory
