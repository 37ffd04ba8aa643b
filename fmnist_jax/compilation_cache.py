"""JAX's persistent compilation cache, on by default for the entry points.

A sweep compiles the same programs again and again across configurations and processes (a
rerun, a resumed sweep, the study after the single experiments); the cache turns each repeat
compile (seconds on a CPU) into a file read. `FMNIST_JAX_CACHE=0` turns it off;
`JAX_COMPILATION_CACHE_DIR` or `FMNIST_JAX_CACHE=DIR` chooses the folder (default
~/.cache/fmnist_jax/xla, see `fmnist_jax.io.user_cache_dir`).

JAX writes an entry in place and, when a read or write fails (a full disk), warns in several
lines and goes on compiling, leaving a half-written entry that later runs read, and warn about,
again. `after_warning` says what to do instead; an entry point calls it from the warnings it
receives (experiments.cli.main_guard).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from fmnist_jax.io import user_cache_dir

# The warnings of jax/_src/compiler.py (jax 0.10) when an entry cannot be read or written.
CACHE_ERROR = re.compile(r"Error (reading|writing) persistent compilation cache entry for '(.*?)'")


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
        disable()
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return directory


def disable() -> None:
    """Turn JAX's persistent compilation cache off, also after it was used."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()  # forgets the folder it opened


def after_warning(message: str) -> str | None:
    """For a JAX warning that an entry of the cache could not be read or written: remove the
    entries of that program it may have left damaged (JAX rewrites a removed entry after
    compiling), turn the cache off at a write error, and return the one line to print instead
    of the warning; None for any other warning.

    A write error leaves the entry written at the time cut short: the program's newest entry is
    removed (an older, complete one at worst: it is compiled again). Which entry a failed read
    read is not said: every entry of that program is removed.
    """
    import jax

    match, directory = CACHE_ERROR.match(message), jax.config.jax_compilation_cache_dir
    if match is None or not directory:
        return None
    action, name = match.groups()
    cause = message[match.end() :].lstrip(": ")
    try:
        entries = sorted(
            (p for p in Path(directory).iterdir() if name in _program_and_key(p.name)),
            key=lambda p: p.stat().st_mtime_ns,
        )
    except OSError:  # the folder gone, an entry removed meanwhile by another process
        entries = []
    if action == "reading":
        _remove(entries)
        return (
            f"warning: the compilation cache in {directory} held a damaged entry of {name} "
            f"({cause}); removed, the program is compiled again"
        )
    _remove(entries[-1:])
    disable()
    return (
        f"warning: the compilation cache in {directory} cannot be written ({cause}); it is turned "
        "off for this run, which compiles its programs instead (nothing else changes)"
    )


def _remove(paths) -> None:
    for path in paths:
        with contextlib.suppress(OSError):  # a read-only folder holds no half-written entry
            path.unlink()


def _program_and_key(filename: str) -> tuple[str, ...]:
    """An entry `<program>-<hash>-cache`'s program name and key (JAX names it by either)."""
    key = filename.removesuffix("-cache")
    return (key, key.rsplit("-", 1)[0]) if key != filename else ()
