"""Several cooperating processes, on one host or many, on JAX's own distributed runtime.

Every process runs the same command with three environment variables (the names JAX and
Orbax use): `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES` and
`JAX_PROCESS_ID` (0..N-1). `initialize` passes them to `jax.distributed.initialize`; the mesh
of `fmnist_jax.placement` then spans every process's devices. Then:

- only process 0 writes files (`is_writer`), and `fmnist_jax.io` makes every write a barrier,
  so that every process reads the same results folder and so makes the same choices (skip,
  resume, reuse) in the same order;
- a process that stops (an error, a signal) stops all of them with its exit status
  (`exit_all`), where they would otherwise wait in a collective until JAX's health check
  aborts them minutes later.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import threading
import time
import traceback

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_EXIT_KEY = "fmnist_jax/exit"  # "<status> <process id>", set by the first process to stop
_LEFT_KEY = "fmnist_jax/left/"  # + process id: set by each process just before it exits
_GRACE_S = 2.0  # process 0 outlives the others' exits by this much (see _watch)
_process: tuple[int, int] | None = None  # (this process's id, process count) when one of several
_watcher: threading.Thread | None = None
_stopping_here = False


def initialize() -> bool:
    """Join the processes named by the environment (see the module doc) -> whether this is one of
    several. Call before any other JAX call; a no-op (False) when none of the variables is set.

    Raises:
      ValueError: a count or id that is not an integer, or settings JAX refuses or cannot
        connect with (the message says which).
    """
    global _process, _watcher
    if not any(os.environ.get(name) for name in ENV):
        return False
    import jax

    def integer(name):
        text = os.environ.get(name)
        try:
            return None if text is None else int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not an integer") from None

    try:
        jax.distributed.initialize(os.environ.get(ENV[0]), integer(ENV[1]), integer(ENV[2]))
    except Exception as e:  # noqa: BLE001 - JAX raises several kinds; each is a setup mistake
        raise ValueError(
            f"cannot join the other processes ({str(e).splitlines()[0]}); set "
            f"{', '.join(ENV)} (ids 0..N-1, the same address everywhere)"
        ) from None
    if jax.process_count() == 1:
        return False
    _process = (jax.process_index(), jax.process_count())
    _watcher = threading.Thread(target=_watch, name="exit-watcher", daemon=True)
    _watcher.start()
    atexit.register(_shutdown)  # runs before JAX's own clean-up (registered at import)
    return True


def is_multiprocess() -> bool:
    """Whether this process joined others through `initialize`."""
    return _process is not None


def is_writer() -> bool:
    """Whether this process writes files: always when alone, only process 0 of several."""
    return _process is None or _process[0] == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (a no-op for one process).

    Raises:
      AssertionError: the processes reached barriers of different names: they diverged.
    """
    if _process is not None:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def exit_all(status: int) -> None:
    """Stop every process with `status`, or with the status of a process that stopped first;
    never returns. Print this process's message before."""
    global _stopping_here
    _stopping_here = True
    with contextlib.suppress(Exception):  # set already (another process's status wins), or gone
        _client().key_value_set(_EXIT_KEY, f"{status} {_process[0]}")
    _watcher.join(timeout=60)  # the watcher ends the process
    _flush()
    os._exit(status)


def stop_together(main):
    """Decorate an entry point's guard: join the processes the environment names (a bad setting
    is one `error:` line and exit status 2), run `main`, and when it fails in one of several
    processes (SystemExit with a non-zero status; an uncaught exception: its traceback, then
    status 1) stop all of them with that status."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            several = initialize()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        if not several:
            return main(*args, **kwargs)
        try:
            return main(*args, **kwargs)
        except SystemExit as e:
            if e.code in (None, 0):
                raise
            if not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
            exit_all(e.code if isinstance(e.code, int) else 1)
        except BaseException:  # noqa: BLE001 - a bug: its traceback, then every process stops
            if not _stopped_elsewhere():  # else it is how a collective saw a peer leave
                traceback.print_exc()
            exit_all(1)

    return run


def _client():
    # JAX's runtime client (its key-value store) has no public accessor; Orbax reaches it so too.
    from jax._src import distributed

    return distributed.global_state.client


def _stopped_elsewhere() -> bool:
    try:
        return _client().key_value_try_get(_EXIT_KEY) is not None
    except Exception:  # noqa: BLE001 - not set (NOT_FOUND), or the runtime is gone
        return False


def _watch() -> None:
    """Wait for a process to stop, then stop this one with the same status."""
    client = _client()
    while True:
        try:
            value = client.blocking_key_value_get(_EXIT_KEY, 3_600_000)
            break
        except Exception as e:  # noqa: BLE001 - a timeout waits on; anything else is shutdown
            if "DEADLINE_EXCEEDED" not in str(e):
                return
    status, origin = (int(v) for v in value.split())
    me, n = _process
    if origin != me and not _stopping_here:
        print(
            f"stopped: process {origin} of {n} stopped with exit status {status}; all processes "
            "stop with it (see its message)",
            file=sys.stderr,
            flush=True,
        )
    _flush()
    with contextlib.suppress(Exception):
        client.key_value_set(f"{_LEFT_KEY}{me}", "")
    if me == 0:
        # Process 0 hosts the runtime: it leaves last, since a process that sees the runtime
        # vanish aborts (SIGABRT); the others exit within milliseconds of saying they leave.
        for other in range(1, n):
            with contextlib.suppress(Exception):
                client.blocking_key_value_get(f"{_LEFT_KEY}{other}", 10_000)
        time.sleep(_GRACE_S)
    os._exit(status)


def _shutdown() -> None:
    """A normal exit: JAX's shutdown (a barrier of all processes) ends the watcher's wait, and
    the watcher ends before the interpreter does (a thread still inside the runtime client then
    aborts the process)."""
    import jax

    jax.distributed.shutdown()
    _watcher.join(timeout=10)


def _flush(timeout: float = 1.0) -> None:
    """Flush stdout and stderr before `os._exit` without risking a hang on a lock the main
    thread holds (it may be blocked in a collective in the middle of a print)."""

    def flush():
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    t = threading.Thread(target=flush, daemon=True)
    t.start()
    t.join(timeout)
