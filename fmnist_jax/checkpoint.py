"""Orbax checkpoints: a train state (or any pytree of arrays) plus a JSON sidecar.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so an
interrupted save never leaves a half-written checkpoint under its final name. What is damaged
later (a file removed, emptied or changed on disk) is caught on restore: by Orbax, or by the
sha256 of the state's bytes that `save` records in the sidecar (a changed byte in an array's
data restores without complaint otherwise).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fmnist_jax import placement

_DIGEST = "state_sha256"  # sidecar key: the saved state's bytes, checked by `restore`


class CheckpointError(OSError):
    """A checkpoint that cannot be written (the disk full, the folder not writable, its path too
    long) or restored as asked (damaged, or of other shapes). The message gives the folder and
    the cause in words; `__cause__` is Orbax's or tensorstore's own error."""


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of `tree`: the restore target Orbax needs."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def _manager(directory: str | os.PathLike, *, write: bool = False) -> ocp.CheckpointManager:
    """A manager that writes (creates the folder, removes what a killed save left, keeps only the
    newest checkpoint) or only reads.

    Only writers clean up temporary directories: Orbax runs that cleanup in a background thread
    that `close()` does not wait for (orbax-checkpoint 0.12), so a reader in a process about to
    exit (e.g. with a clear error on a mismatched encoder) would leave it racing interpreter
    shutdown. `save` waits for it before writing.

    Orbax is given the resolved path: it finds a checkpoint's parts by glob patterns built on
    it, so a `[...]` or `**` in a symbolic link's name or a `..` is taken out of its way (those
    left in a real folder's name are refused up front: `experiments.cli.path_problem`).
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        enable_async_checkpointing=False,
        create=write,
        cleanup_tmp_directories=write,  # a save killed midway leaves only a temporary directory
    )
    return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def _digest(state: Any) -> str | None:
    """sha256 of the state's leaves' bytes, in tree order (None if some live on other hosts)."""
    leaves = jax.tree_util.tree_leaves(state)
    if not all(getattr(leaf, "is_fully_addressable", True) for leaf in leaves):
        return None
    digest = hashlib.sha256()
    for leaf in jax.device_get(leaves):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def save(directory: str | os.PathLike, step: int, state: Any, extra: dict | None = None) -> None:
    """Save `state` (pytree of arrays) and `extra` (JSON-able dict) as checkpoint `step`, the
    only one kept.

    An existing checkpoint `step` is replaced (Orbax alone refuses): a rerun after an
    interruption saves the same step again (e.g. the encoder copy a fine-tuning row writes
    before training), and must not crash on what the interrupted run left.

    Raises:
      CheckpointError: Orbax or tensorstore cannot write it (the disk is full, the folder not
        writable, the path too long: tensorstore says which only in its message).
    """
    state = placement.replicated_across_processes(state)  # Orbax saves global arrays only
    extra = dict(extra or {})
    if (digest := _digest(state)) is not None:
        extra[_DIGEST] = digest
    try:
        with _manager(directory, write=True) as mngr:
            if step in mngr.all_steps():
                mngr.delete(step)
            args = ocp.args.Composite(
                state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)
            )
            mngr.save(step, force=True, args=args)
            mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - Orbax and tensorstore raise many types
        raise CheckpointError(
            f"cannot write a checkpoint in {directory} ({_cause(e)}); free space or fix the "
            "folder's permissions, then rerun the same command"
        ) from e


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest checkpoint step in `directory`, None if there is none (or no folder)."""
    if not Path(directory).exists():
        return None
    with _manager(directory) as mngr:
        return mngr.latest_step()


def _cause(error: Exception, limit: int = 500) -> str:
    """The first line of Orbax's or tensorstore's message, without the specs they append."""
    text = (str(error).strip().splitlines() or [""])[0]
    for marker in (" [tensorstore_spec", " See full TensorStore details"):
        text = text.split(marker)[0]
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def _restore(directory, step: int | None, items: dict) -> tuple[Any, dict]:
    if not Path(directory).is_dir():  # else the manager would create a mistyped folder
        raise FileNotFoundError(f"no checkpoint found in {directory}: no such folder")
    try:
        with _manager(directory) as mngr:
            step = mngr.latest_step() if step is None else step
            if step is None:
                raise FileNotFoundError(f"no checkpoint found in {directory}")
            restored = mngr.restore(
                step, args=ocp.args.Composite(extra=ocp.args.JsonRestore(), **items)
            )
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - Orbax and tensorstore raise many types
        raise CheckpointError(f"{type(e).__name__}: {_cause(e)}") from e
    extra = dict(restored["extra"] or {})
    want = extra.pop(_DIGEST, None)
    if "state" in items and want is not None and _digest(restored["state"]) != want:
        raise CheckpointError(
            "the restored arrays' sha256 is not the one saved: a data file changed"
        )
    return restored.get("state"), extra


def restore(directory: str | os.PathLike, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restore (state, extra) from checkpoint `step` (latest if None) onto `target`'s structure.

    `target` is a pytree of arrays or of `jax.ShapeDtypeStruct` (see `abstract_like`).

    Raises:
      FileNotFoundError: no such folder, or no checkpoint in it.
      CheckpointError: the checkpoint is damaged, or does not fit `target` (the message says why).
    """
    return _restore(directory, step, {"state": ocp.args.StandardRestore(abstract_like(target))})


def restore_extra(directory: str | os.PathLike, step: int | None = None) -> dict:
    """Only the JSON sidecar of a checkpoint (e.g. to learn the shapes needed to restore it).

    Raises:
      FileNotFoundError: no such folder, or no checkpoint in it.
      CheckpointError: the sidecar cannot be read.
    """
    return _restore(directory, step, {})[1]


def resume(
    directory: str | os.PathLike,
    target: Any,
    after_step: int,
    required: Sequence[str] = (),
    placement: dict | None = None,
) -> tuple[Any, dict] | None:
    """(state, extra) of the newest checkpoint in `directory` if it is later than `after_step`
    (restored onto `target`'s structure); None if there is none.

    A checkpoint that cannot be restored, or whose sidecar lacks a `required` key, is no dead end:
    it is moved aside to `.<name>.damaged` beside `directory` (kept for inspection), a warning on
    stderr says which and why, and None is returned, so that the caller starts afresh. So is one
    whose sidecar's "placement" (the devices and layout it was written with; `save` it in
    `extra`) is not `placement`, to `.<name>.other-placement`: it is not damaged, and its warning
    says how to resume from it.
    """
    directory = Path(directory)
    try:
        if (latest_step(directory) or 0) <= after_step:
            return None
        then = restore_extra(directory).get("placement")
        if placement is not None and then is not None and then != placement:
            _set_aside(
                directory,
                "other-placement",
                f"was written with {_words(then)} (this run: {_words(placement)}). It is not "
                "damaged, but continued on other devices a run would end with the numbers of "
                "neither",
                "; to resume from it instead, stop and rerun the same command where it was "
                "written (those devices and --parallel)",
            )
            return None
        state, extra = restore(directory, target)
        if missing := [key for key in required if key not in extra]:
            raise CheckpointError(f"its sidecar lacks {', '.join(missing)}")
        return state, extra
    except OSError as e:  # CheckpointError included
        _set_aside(directory, "damaged", f"cannot be restored ({e})")
        return None


def _words(placement: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in placement.items())


def _set_aside(directory: Path, suffix: str, why: str, fix: str = "") -> None:
    """Move `directory` to `.<name>.<suffix>` beside it (never over an earlier one) and warn."""
    aside, n = directory.with_name(f".{directory.name}.{suffix}"), 1
    while aside.exists():
        n += 1
        aside = directory.with_name(f".{directory.name}.{suffix}-{n}")
    directory.rename(aside)
    print(
        f"warning: the checkpoint in {directory} {why}; it is moved to {aside} and this run "
        f"starts afresh{fix}.",
        file=sys.stderr,
        flush=True,
    )
