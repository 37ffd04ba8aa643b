"""Measuring: warm-up, repetitions, median and spread, CPU use, and what the numbers ran on.

Every repetition records wall time, this process's CPU time (cpu/wall = cores this process kept
busy) and, where /proc/stat exists, the cores kept busy by *other* processes meanwhile, so a row
taken on a loaded machine says so.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

from fmnist_jax import results


def host_cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _busy_cpu_seconds() -> float | None:
    """CPU-seconds all processes have spent busy since boot (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
    ticks = [int(x) for x in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass
class Measurement:
    """Per-repetition wall seconds, own CPU seconds and other processes' busy cores."""

    wall_s: list[float]
    cpu_s: list[float]
    other_cores: list[float]  # empty where /proc/stat is unavailable

    def summary(self, images_per_rep: int) -> dict[str, Any]:
        """Row fields: median images/s and the spread over repetitions."""
        rates = [images_per_rep / w for w in self.wall_s]
        med = statistics.median(rates)
        cores = [c / w for c, w in zip(self.cpu_s, self.wall_s, strict=True)]
        out = {
            "images_per_s": med,
            "images_per_s_min": min(rates),
            "images_per_s_max": max(rates),
            "images_per_s_reps": rates,  # in measuring order: rounds pair up within a group
            "spread": (max(rates) - min(rates)) / med,  # relative, over the repetitions
            "reps": len(rates),
            "seconds_per_rep": statistics.median(self.wall_s),
            "cpu_seconds_per_rep": statistics.median(self.cpu_s),
            "images_per_rep": images_per_rep,
            "cpu_per_wall": statistics.median(cores),
            # Images per CPU-second of this process: the cost of an image, which other
            # processes sharing the cores change far less than they change images/s.
            "images_per_cpu_s": images_per_rep / statistics.median(self.cpu_s),
        }
        if self.other_cores:
            out["other_processes_cores"] = statistics.median(self.other_cores)
        return out


def measure_interleaved(
    runs: dict[str, Callable[[], Any]], *, reps: int, warmup: int = 1
) -> dict[str, Measurement]:
    """Time several programs (each returns arrays to wait for) `reps` times after `warmup`
    untimed calls, in rounds (A B C, A B C, ...), so that a machine whose speed drifts (a shared
    VM does, by tens of percent over minutes) biases none of their ratios."""
    for run in runs.values():
        for _ in range(warmup):
            jax.block_until_ready(run())
    out = {name: Measurement([], [], []) for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            m = out[name]
            busy0, cpu0, t0 = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
            jax.block_until_ready(run())
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            busy1 = _busy_cpu_seconds()
            m.wall_s.append(wall)
            m.cpu_s.append(cpu)
            if busy0 is not None and busy1 is not None:
                m.other_cores.append(max(busy1 - busy0 - cpu, 0.0) / wall)
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds it took), e.g. for `lowered.compile()`."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def device_label(n_devices: int = 1) -> str:
    """e.g. 'cpu x2' or 'NVIDIA H200 x1': the device kind and how many a program used."""
    return f"{jax.devices()[0].device_kind} x{n_devices}"


def environment() -> dict[str, Any]:
    """`fmnist_jax.results.environment()` (versions, backend, devices) and what else absolute
    speeds depend on: the host's CPUs, XLA's flags, the compilation cache, the load."""
    return {
        **results.environment(),
        "cpu_count": host_cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # Set, compile_s can be a cache load rather than a compile.
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
