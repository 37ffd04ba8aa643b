"""Prompt, clean stops on SIGINT/SIGTERM.

A compiled epoch blocks the main thread inside XLA, where Python signal handlers cannot run
until it returns (tens of seconds on a CPU). So the entry points block SIGINT/SIGTERM in every
thread *before anything else starts threads* (NumPy's BLAS, XLA's pools) and one watcher
thread receives them with `sigwait`, prints what is kept, and ends the process at once, with
exit status 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell expects (one of
several cooperating processes: JAX's runtime then ends the others, see `fmnist_jax.distributed`).
Nothing is lost by ending abruptly: every result file, checkpoint and download is written to a
temporary name and renamed, so the last completed epoch's checkpoint and every completed
configuration are intact, and rerunning the same command resumes.

Use at the very top of an entry module, before other imports:

    if __name__ == "__main__":
        from experiments import interrupt; interrupt.install()
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_message = "rerun the same command to resume"
_installed = False


def set_message(text: str) -> None:
    """What to print on interruption (e.g. where completed results are)."""
    global _message
    _message = text


def _flush_stdout(timeout: float = 1.0) -> None:
    """Flush Python's stdout buffer (os._exit would drop it) without risking a hang: the main
    thread may hold the buffer's lock while blocked on a full pipe."""
    t = threading.Thread(target=lambda: sys.stdout and sys.stdout.flush(), daemon=True)
    t.start()
    t.join(timeout)


def _watch() -> None:
    sig = signal.sigwait(_SIGNALS)
    try:
        _flush_stdout()
        name = signal.Signals(sig).name
        # os.write, not sys.stderr: no lock the main thread (a progress bar) could be holding.
        os.write(2, f"\ninterrupted by {name}: {_message}\n".encode())
    finally:
        os._exit(128 + sig)


def install() -> None:
    """Route SIGINT/SIGTERM to the watcher thread (main thread only; idempotent)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    threading.Thread(target=_watch, name="signal-watcher", daemon=True).start()
    _installed = True
    # Child processes inherit the blocked mask; unblock it in them so they stay interruptible.
    os.register_at_fork(after_in_child=_unblock_in_child)


def _unblock_in_child() -> None:
    with contextlib.suppress(OSError, ValueError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
