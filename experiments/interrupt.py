"""Prompt, clean stops on SIGINT/SIGTERM.

A compiled epoch blocks the main thread inside XLA, where Python signal handlers cannot run
until it returns (tens of seconds on a CPU). So the entry points block SIGINT/SIGTERM in every
thread *before anything else starts threads* (NumPy's BLAS, XLA's pools) and one watcher
thread receives them with `sigwait`, prints what is kept, and ends the process at once.
Nothing is lost by ending abruptly: every result file, checkpoint and download is written to a
temporary name and renamed, so the last completed epoch's checkpoint and every completed
configuration are intact, and rerunning the same command resumes.

Use at the very top of an entry module, before other imports:

    if __name__ == "__main__":
        from experiments import interrupt; interrupt.install()
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_message = "rerun the same command to resume"


def set_message(text: str) -> None:
    """What to print on interruption (e.g. where completed results are)."""
    global _message
    _message = text


def _watch() -> None:
    sig = signal.sigwait(_SIGNALS)
    name = signal.Signals(sig).name
    try:
        sys.stderr.write(f"\ninterrupted by {name}: {_message}\n")
        sys.stderr.flush()
    finally:
        os._exit(128 + sig)


def install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    threading.Thread(target=_watch, name="signal-watcher", daemon=True).start()
