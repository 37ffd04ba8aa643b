"""The one way tests run the project's command lines: `python -m MODULE ARGS` in a subprocess from
the repository root, as a user types them, and the one check of a clean failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900  # a hang guard only: the slowest child (a quick sweep under load) takes ~3 min


def child_env(**changes) -> dict:
    """This process's environment (it carries the shared JAX compilation cache, see conftest.py)
    with `changes` applied: a value of None removes the variable."""
    env = os.environ.copy()
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def run(module: str, *args, env=None, cwd=ROOT, timeout=TIMEOUT_S) -> subprocess.CompletedProcess:
    """`python -m module *args` (args through str), text output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_failure(proc: subprocess.CompletedProcess, status: int, *needles: str) -> None:
    """Exit `status`, no traceback, exactly one `error:` line on stderr, holding every needle."""
    msg = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == status, msg
    assert "Traceback" not in proc.stderr, msg
    assert sum("error:" in line for line in proc.stderr.splitlines()) == 1, msg
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} missing; {msg}"


def usage_error(main, argv: list, capsys) -> str:
    """`main(argv)` (an entry point's, run in this process): exit 2, no traceback, exactly one
    `error:` line on stderr -> that stderr. The in-process twin of `assert_clean_failure`."""
    import pytest

    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err and sum("error:" in line for line in err.splitlines()) == 1, err
    return err
