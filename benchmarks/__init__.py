"""Benchmarks of fmnist-jax: `python -m benchmarks.run` (see benchmarks/run.py).

Measurements that need a process of their own (a forced device count, a pinned CPU) run as
workers: `python -m benchmarks.<module> --out PATH [--quick] [--random-data]` writes one JSON
result. This module imports no JAX, so that a worker can set itself up before JAX starts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def spawn_worker(
    module: str, quick: bool, random_data: bool, timeout_s: float, env: dict | None = None
) -> tuple[dict | None, str | None]:
    """Run `python -m <module>` as a worker -> (its JSON result, None), or (None, why it failed:
    its exit status and the end of its stderr, or the timeout in seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker.json"
        cmd = [sys.executable, "-m", module, "--out", str(out)]
        cmd += ["--quick"] * quick + ["--random-data"] * random_data
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, f"worker timed out ({timeout_s} s)"
        if done.returncode != 0 or not out.exists():
            return None, f"worker failed (rc {done.returncode}): {done.stderr[-800:]}"
        return json.loads(out.read_text()), None


def worker_main(worker: Callable[[argparse.Namespace], dict], doc: str, argv=None) -> None:
    """A worker's entry point: parse `--out PATH [--quick] [--random-data]`, write `worker`'s
    result there as JSON."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--random-data", action="store_true")
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(worker(args)))
