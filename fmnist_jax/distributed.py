"""Several cooperating processes, on one host or many, on JAX's own distributed runtime.

Every process runs the same command with three environment variables (the names JAX and
Orbax use): `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES` and
`JAX_PROCESS_ID` (0..N-1). `initialize` passes them to `jax.distributed.initialize`, with
`FMNIST_JAX_HEARTBEAT_TIMEOUT_S` (default JAX's 100) as its `heartbeat_timeout_seconds`; the
mesh of `fmnist_jax.placement` then spans every process's devices. Only process 0 writes files
(`is_writer`), and `fmnist_jax.io` makes every write a barrier, so that every process reads the
same results folder and so makes the same choices (skip, resume, reuse) in the same order.

When one process stops, JAX's runtime (its coordination service, hosted by process 0) ends the
others; this module adds nothing to it. Every process then ends with a non-zero status, within
JAX's timeouts (`jax.distributed.initialize`'s defaults: heartbeats 100 s, shutdown 300 s), and
the cause is in the message of the process that stopped first. A lower heartbeat timeout ends
them sooner when a process other than 0 is gone; a higher one suits a network that pauses for
longer. As measured with jax 0.10 on the CPU (gloo collectives), two processes
(`tests/test_distributed.py`):

- process 0 stops outright (SIGINT/SIGTERM, which `experiments.interrupt` ends at once with
  status 130/143; a crash): the coordination service goes with it, and JAX aborts every other
  process within a second ("Terminating process because the JAX distributed service detected
  fatal errors"; SIGABRT, status 134);
- another process stops outright: the others fail in their next collective (a
  `JaxRuntimeError` traceback, "Connection closed by peer"), wait in JAX's shutdown barrier
  until the lost process has missed its heartbeats for the heartbeat timeout (100 s unless
  set), and are aborted (134);
- a process ends with an error of its own (an `error:` line, status 1 or 2): it waits in JAX's
  shutdown barrier for the others. One about to start its first collective fails it after 30 s
  (a `JaxRuntimeError` traceback, status 1), and then each ends with its own status; one inside
  a collective waits until the barrier times out (300 s), and every process is aborted (134).
"""

from __future__ import annotations

import os

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
HEARTBEAT_ENV = "FMNIST_JAX_HEARTBEAT_TIMEOUT_S"  # seconds; JAX's heartbeat_timeout_seconds
HEARTBEAT_DEFAULT_S = 100  # jax.distributed.initialize's default
_process: tuple[int, int] | None = None  # (this process's id, process count) when one of several


def initialize() -> bool:
    """Join the processes named by the environment (see the module doc) -> whether this is one of
    several. Call before any other JAX call; a no-op (False) when none of the variables is set.

    Raises:
      ValueError: a count or id that is not an integer, a heartbeat timeout that is not a
        whole number of seconds >= 1, or settings JAX refuses or cannot connect with (the
        message says which).
    """
    global _process
    if not any(os.environ.get(name) for name in ENV):
        return False
    import jax

    def integer(name):
        text = os.environ.get(name)
        try:
            return None if text is None else int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r} is not an integer") from None

    heartbeat = os.environ.get(HEARTBEAT_ENV, str(HEARTBEAT_DEFAULT_S))
    if not heartbeat.isdecimal() or int(heartbeat) < 1:
        raise ValueError(
            f"{HEARTBEAT_ENV}={heartbeat!r} is not a whole number of seconds >= 1; set one "
            f"(JAX's default: {HEARTBEAT_DEFAULT_S}) or unset it"
        )
    try:
        jax.distributed.initialize(
            os.environ.get(ENV[0]),
            integer(ENV[1]),
            integer(ENV[2]),
            heartbeat_timeout_seconds=int(heartbeat),
        )
    except Exception as e:  # noqa: BLE001 - JAX raises several kinds; each is a setup mistake
        raise ValueError(
            f"cannot join the other processes ({str(e).splitlines()[0]}); set "
            f"{', '.join(ENV)} (ids 0..N-1, the same address everywhere)"
        ) from None
    if jax.process_count() > 1:
        _process = (jax.process_index(), jax.process_count())
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
