"""JAX's persistent compilation cache, on by default for the entry points.

A sweep compiles the same programs again and again across configurations and processes (a
rerun, a resumed sweep, the study after the single experiments); the cache turns each repeat
compile (seconds on a CPU) into a file read. `FMNIST_JAX_CACHE=0` turns it off;
`JAX_COMPILATION_CACHE_DIR` or `FMNIST_JAX_CACHE=DIR` chooses the folder (default
~/.cache/fmnist_jax/xla, see `fmnist_jax.io.user_cache_dir`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fmnist_jax.io import user_cache_dir


def enable() -> Path | None:
    """Turn on JAX's persistent compilation cache (see the module doc); -> its folder, or None when
    off or unwritable."""
    import jax

    setting = os.environ.get("FMNIST_JAX_CACHE", "")
    if setting == "0":
        return None
    directory = Path(
        setting or os.environ.get("JAX_COMPILATION_CACHE_DIR") or user_cache_dir() / "xla"
    )
    try:  # an unwritable cache only costs time: never fail a run (nor warn per program) over it
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError:  # off, also when named by JAX's own variable
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return directory
