"""Orbax checkpoints: a train state (or any pytree of arrays) plus a JSON sidecar.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so an
interrupted save never leaves a half-written checkpoint under its final name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from fmnist_jax import placement


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree`: the restore target Orbax needs."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def _manager(directory: str | os.PathLike, max_to_keep: int | None = 1, *,
             write: bool = False) -> ocp.CheckpointManager:
    """A manager that writes (creates the folder, removes what a killed save left) or only reads.

    Only writers clean up temporary directories: Orbax runs that cleanup in a background thread
    that `close()` does not wait for (orbax-checkpoint 0.12), so a reader in a process about to
    exit (e.g. with a clear error on a mismatched encoder) would leave it racing interpreter
    shutdown. `save` waits for it before writing.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False, create=write,
        cleanup_tmp_directories=write,  # a save killed midway leaves only a temporary directory
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(directory: str | os.PathLike, step: int, state: Any, extra: dict | None = None,
         max_to_keep: int | None = 1) -> None:
    """Save `state` (pytree of arrays) and `extra` (JSON-able dict) as checkpoint `step`.

    An existing checkpoint `step` is replaced (Orbax alone refuses): a rerun after an
    interruption saves the same step again (e.g. the encoder copy a fine-tuning row writes
    before training), and must not crash on what the interrupted run left.
    """
    state = placement.replicated_across_processes(state)  # Orbax saves global arrays only
    with _manager(directory, max_to_keep, write=True) as mngr:
        if step in mngr.all_steps():
            mngr.delete(step)
        mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra or {})
            ),
            force=True,
        )
        mngr.wait_until_finished()


def _require_dir(directory) -> None:
    # Checked here because the manager would otherwise create a mistyped folder before failing.
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"no checkpoint found in {directory}: no such folder")


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest checkpoint step in `directory`, None if there is none (or no folder)."""
    if not Path(directory).exists():
        return None
    with _manager(directory) as mngr:
        return mngr.latest_step()


def _restore(directory, step: int | None, items: dict):
    _require_dir(directory)
    with _manager(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {directory}")
        return mngr.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore(), **items))


def restore(directory: str | os.PathLike, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restore (state, extra) from checkpoint `step` (latest if None) onto `target`'s structure.

    `target` is a pytree of arrays or of `jax.ShapeDtypeStruct` (see `abstract_like`).

    Raises:
      FileNotFoundError: no such folder, or no checkpoint in it.
    """
    restored = _restore(directory, step, {"state": ocp.args.StandardRestore(abstract_like(target))})
    return restored["state"], dict(restored["extra"] or {})


def restore_extra(directory: str | os.PathLike, step: int | None = None) -> dict:
    """Only the JSON sidecar of a checkpoint (e.g. to learn the shapes needed to restore it).

    Raises:
      FileNotFoundError: no such folder, or no checkpoint in it.
    """
    return dict(_restore(directory, step, {})["extra"] or {})
