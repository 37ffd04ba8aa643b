"""What every `python -m` entry point of the project does first, before its other imports: make
the environment it inherited one it can start in, and its output streams safe to print to.

It changes process-wide state (environment variables, `sys.stdout`/`sys.stderr`), so a library
module never calls it; an entry module does, at its very top:

    if __name__ == "__main__":
        from fmnist_jax import entry

        entry.start()

(`experiments.interrupt.install()` comes before it, where an entry point installs it.)
"""

from __future__ import annotations

import os
import re
import sys

from fmnist_jax import io


def start() -> None:
    """Neutralise what the project never needs but an inherited environment can break, spell
    output in ASCII where the terminal needs it and survive a reader that stops reading
    (`fmnist_jax.io.tolerant_output`), then start JAX, which reads its settings now.

    - `MPLBACKEND`: figures are drawn on Agg's canvas directly (`fmnist_jax.plots`), but
      matplotlib validates the variable when imported: a value from Jupyter or an IDE
      (`module://matplotlib_inline.backend_inline`) or a mistyped one fails every command,
      `--help` included. Set to `agg`.
    - `MPLCONFIGDIR` naming a folder that cannot be written: matplotlib would warn on every
      start; unset, so that its usual folder is used.
    - `TQDM_*`: tqdm turns them into its defaults when first imported (mid-run, for the first
      progress bar), and a value it cannot convert (`TQDM_MININTERVAL=abc`) stops the run.
      The project sets its bars itself (`--quiet`; none when stderr is not a terminal): unset.

    Exits with status 2 and one `error:` line when a `JAX_*` variable has a value JAX refuses
    (`JAX_ENABLE_X64=yes please`), naming it; JAX itself raises a ValueError at import.
    """
    os.environ["MPLBACKEND"] = "agg"
    config = os.environ.get("MPLCONFIGDIR")
    if config and not _writable_folder(config):
        del os.environ["MPLCONFIGDIR"]
    for name in [name for name in os.environ if name.startswith("TQDM_")]:
        del os.environ[name]
    io.tolerant_output()
    try:
        import jax  # noqa: F401 - reads its settings from the environment now
    except ValueError as e:  # JAX names the setting: "... for JAX flag jax_x" / "environment 'X'"
        found = re.search(r"JAX flag (\w+)|environment '(\w+)'", str(e))
        if found is None:
            raise
        name = (found[1] or found[2]).upper()
        print(
            f"error: JAX cannot start: {e}; unset {name} (JAX's default) or give it a valid value",
            file=sys.stderr,
        )
        sys.exit(2)


def _writable_folder(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)  # what matplotlib would do
    except OSError:
        return False
    return os.access(path, os.W_OK)
