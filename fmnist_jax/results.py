"""The results layout (docs/design.md#results-layout): one folder per configuration,
`metrics.json` written last.

`results/<experiment>/<config>/` holds config.json, history.json, test_predictions.npy, the
figures, and finally metrics.json: its presence (atomically written) marks the run complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_jax import distributed, io, metrics

REQUIRED_FILES = ("config.json", "history.json", "test_predictions.npy", "metrics.json")
# Part of every fingerprint: bump it with every change that moves a number, so that results of
# older code are never skipped or copied as if they were this code's.
# 2: per-stream key namespaces, a per-seed expanded set, divergence on train + val only.
# 3: fit labels from validation evidence across seeds; optimizer steps recorded.
# tests/test_results_version.py fails when the code that decides numbers changes unrecorded.
RESULTS_VERSION = 3


def versions() -> dict[str, str]:
    """Exact versions a result was made with (recorded in every config.json)."""
    import chex
    import flax
    import jax
    import jaxlib
    import optax
    import orbax.checkpoint

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "chex": chex.__version__,
        "orbax_checkpoint": orbax.checkpoint.__version__,
        "numpy": np.__version__,
    }


def cpu_model() -> str:
    """The host CPU's model name (Linux's /proc/cpuinfo; else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def environment() -> dict[str, Any]:
    """The versions, backend, devices and CPU a result was made with (recorded beside it)."""
    import jax

    devices = jax.devices()
    return {
        **versions(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
    }


def config_to_dict(cfg) -> dict:
    """A (nested) config dataclass as plain JSON data (tuples as lists). A field whose metadata
    holds `omit_default` is left out while it has its default (`fmnist_jax.train.OMIT_DEFAULT`:
    fields added after results were published, which must keep their fingerprints)."""

    def plain(x):
        if dataclasses.is_dataclass(x):
            return {
                f.name: plain(getattr(x, f.name))
                for f in dataclasses.fields(x)
                if not (f.metadata.get("omit_default") and getattr(x, f.name) == f.default)
            }
        return [plain(v) for v in x] if isinstance(x, tuple | list) else x

    return plain(cfg)


def config_from_dict(recorded: Mapping):
    """The `fmnist_jax.train.TrainConfig` a config.json's `train_config` records (the inverse of
    `config_to_dict`).

    Raises:
      ValueError: not a recorded TrainConfig (unknown or missing fields, bad values).
    """
    from fmnist_jax.augment import AugmentConfig
    from fmnist_jax.train import OptimizerConfig, TrainConfig

    if not isinstance(recorded, Mapping):
        raise ValueError(f"train_config must be an object, got {type(recorded).__name__}")
    fields = dict(recorded)
    try:
        fields["optimizer"] = OptimizerConfig(**fields.get("optimizer", {}))
        fields["aug"] = AugmentConfig(**fields.get("aug", {}))
        if "widths" in fields:
            fields["widths"] = tuple(fields["widths"])
        return TrainConfig(**fields)
    except TypeError as e:  # unknown or missing fields
        raise ValueError(str(e)) from None


def config_fingerprint(payload: Mapping) -> str:
    """A stable hash of what determines a run's numbers (configs, seeds, data split)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_complete(run_dir: str | Path) -> bool:
    """Whether a results folder holds every required file and a metrics.json marked complete."""
    run_dir = Path(run_dir)
    if not all((run_dir / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        return bool(io.read_json_object(run_dir / "metrics.json").get("complete"))
    except (OSError, ValueError):
        return False


def is_temporary(path: Path) -> bool:
    """A temporary name of fmnist_jax.io's atomic writes (`.<name>.<random>.tmp`)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def clean_stale_temporaries(run_dir: str | Path) -> None:
    """Remove temporary files left by a process killed mid-write (never a final name)."""
    if not distributed.is_writer():
        return
    for tmp in Path(run_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def classifier_metrics(
    labels: np.ndarray,
    predictions: np.ndarray,
    val_accuracy: Sequence[float],
    class_names: Sequence[str],
    *,
    test_loss=None,
    val_loss=None,
    diverged: Sequence[bool] = (),
) -> dict[str, Any]:
    """The metrics.json core from the test `labels` [N] and each seed's `predictions` [S, N]."""
    report = metrics.multi_seed_report(labels, predictions, class_names)
    out = {
        "test_accuracy": report["accuracy"],
        "val_accuracy": metrics.mean_std(val_accuracy),
        "per_class_test_accuracy": {
            name: report["per_class"][name]["accuracy"] for name in class_names
        },
        "classification_report": report,
        "classification_report_text": metrics.classification_report_text(
            labels, predictions, class_names
        ),
        "diverged": [bool(d) for d in diverged],
        "n_diverged": int(sum(bool(d) for d in diverged)),
    }
    if test_loss is not None:
        out["test_loss"] = metrics.mean_std(test_loss)
    if val_loss is not None:
        out["val_loss"] = metrics.mean_std(val_loss)
    return out


def write_run(
    run_dir: str | Path,
    *,
    history: Mapping,
    predictions: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    metrics: Mapping,
    figures: Mapping[str, Any] | None = None,
) -> Path:
    """Write one configuration's results beside its config.json; metrics.json goes last and
    marks completion.

    `predictions`: split ("val", "test") -> int [n_seeds, n_images], written as int8
    `<split>_predictions.npy` (class indices < 10: a byte each, so that a whole study's
    predictions stay small enough to publish); `labels`: split -> the true labels int
    [n_images], written together as int8 `labels.npz` (so that a folder's predictions can be
    scored on their own);
    `figures` maps a file name to a callable(path) drawing it (atomically, `fmnist_jax.plots`).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(run_dir / "history.json", history)
    for split, preds in predictions.items():
        io.write_npy(run_dir / f"{split}_predictions.npy", np.asarray(preds).astype(np.int8))
    with io.atomic_path(run_dir / "labels.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{split: np.asarray(y, np.int8) for split, y in labels.items()})
    for name, draw in (figures or {}).items():
        draw(run_dir / name)
    io.write_json(run_dir / "metrics.json", {**metrics, "complete": True})
    return run_dir


def remove_tree(path: str | Path) -> None:
    """Remove a folder and everything in it, if it exists (only the process that writes)."""
    if not distributed.is_writer():
        return
    shutil.rmtree(path, ignore_errors=True)
