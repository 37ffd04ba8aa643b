"""Compare two results trees: every `metrics.json` (timings left out) and `test_predictions.npy`.

    python -m fmnist_jax.compare A B [--atol X] [--ignore GLOB ...]

Prints one line per difference (a file on one side only, a metric that differs, predictions
that differ) and exits 1 when there is any, 0 when the two trees hold the same numbers, 2 when
A or B is not a folder or holds no results. Left out, because they differ between runs that
compute the same numbers: timings (every key named `timing` or ending in `_s`, seconds),
`encoder_checkpoint` (a path under the results root), and how the members were placed
(`parallel`, `member_map`). `--atol` accepts metric values that differ by at most X (e.g.
results of two backends); predictions must be equal. `--ignore` leaves out files whose path
(relative to the root) matches a glob, e.g. `'q2_pretrain/*'`, whose folders are named by the
configuration's hash.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the imports: see fmnist_jax.entry
    from fmnist_jax import entry

    entry.start()

import argparse
import fnmatch
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_jax.io import tolerant_output

FILES = ("metrics.json", "test_predictions.npy")


def is_left_out(key: str) -> bool:
    """Whether a metrics key holds a timing, a path or the placement (left out of comparing)."""
    return key in ("timing", "encoder_checkpoint", "parallel", "member_map") or key.endswith("_s")


def _as_number(value: Any) -> float | None:
    """A JSON number, or the strings "nan"/"inf" that `fmnist_jax.io` writes for them."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def diff_values(a: Any, b: Any, where: str, atol: float = 0.0) -> Iterator[str]:
    """Yield 'where: a != b' for every leaf that differs (timings skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if is_left_out(key):
                continue
            if key not in a or key not in b:
                yield f"{where}.{key}: only in {'B' if key not in a else 'A'}"
            else:
                yield from diff_values(a[key], b[key], f"{where}.{key}", atol)
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{where}: {len(a)} items != {len(b)}"
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from diff_values(x, y, f"{where}[{i}]", atol)
        return
    x, y = _as_number(a), _as_number(b)
    if x is not None and y is not None:
        same = x == y or (math.isnan(x) and math.isnan(y)) or (atol > 0 and abs(x - y) <= atol)
        if not same:
            yield f"{where}: {a!r} != {b!r}"
    elif a != b:
        yield f"{where}: {a!r} != {b!r}"


def _files(root: Path, ignore: tuple[str, ...] = ()) -> set[str]:
    found = {str(p.relative_to(root)) for name in FILES for p in root.rglob(name)}
    return {f for f in found if not any(fnmatch.fnmatch(f, g) for g in ignore)}


def compare(a: Path, b: Path, atol: float = 0.0, ignore: tuple[str, ...] = ()) -> list[str]:
    """Every difference between results trees `a` and `b`, one line each ([] if none);
    files matching a glob of `ignore` are left out."""
    a, b = Path(a), Path(b)
    files_a, files_b = _files(a, ignore), _files(b, ignore)
    out = [f"only in A: {f}" for f in sorted(files_a - files_b)]
    out += [f"only in B: {f}" for f in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        try:
            if rel.endswith(".json"):
                with open(a / rel, encoding="utf-8") as fa, open(b / rel, encoding="utf-8") as fb:
                    out += list(diff_values(json.load(fa), json.load(fb), rel, atol))
                continue
            pa, pb = np.load(a / rel), np.load(b / rel)
        except (OSError, ValueError) as e:  # ValueError: JSON or .npy that does not parse
            out.append(
                f"{rel}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            )
            continue
        if pa.shape != pb.shape or pa.dtype != pb.dtype:
            out.append(f"{rel}: {pa.dtype} {pa.shape} != {pb.dtype} {pb.shape}")
        elif not np.array_equal(pa, pb):
            out.append(f"{rel}: {int(np.sum(pa != pb))} of {pa.size} predictions differ")
    return out


def _tolerance(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"--atol must be a finite number >= 0, got {text}")
    return value


def main(argv=None) -> int:
    """The command line; returns the exit status (0 same, 1 different, 2 usage)."""
    tolerant_output()
    p = argparse.ArgumentParser(
        prog="python -m fmnist_jax.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument(
        "--atol",
        type=_tolerance,
        default=0.0,
        help="largest accepted difference of a metric value (default 0: identical)",
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out files whose relative path matches GLOB (repeatable)",
    )
    args = p.parse_args(argv)
    ignore = tuple(args.ignore)
    for root in (args.a, args.b):
        problem = (
            "is not a folder"
            if not root.is_dir()
            else "holds no metrics.json or test_predictions.npy"
            if not _files(root, ignore)
            else None
        )
        if problem:
            print(
                f"error: {root} {problem}; pass two results folders (e.g. results/)",
                file=sys.stderr,
            )
            return 2
    diffs = compare(args.a, args.b, args.atol, ignore)
    n = len(_files(args.a, ignore) | _files(args.b, ignore))
    for line in diffs:
        print(line)
    print(
        f"{'identical' if not diffs else f'{len(diffs)} difference(s)'}: {n} files compared "
        f"(metrics.json without timings, test_predictions.npy)"
    )
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
