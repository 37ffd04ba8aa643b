"""Watching runs train: TensorBoard event files of every run, and `--profile`'s trace of one
epoch. Both are fed by `fmnist_jax.fit`'s per-epoch hook from the history it has already read to
the host, and neither changes a number (docs/design.md#results-layout).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax

from fmnist_jax import distributed, results
from fmnist_jax.train import TrainConfig

TENSORBOARD = "tensorboard"  # a run folder's event files: <run_dir>/tensorboard/seed_<k>/


def tag(key: str) -> str:
    """The TensorBoard tag of a history key: "val_loss" -> "loss/val", so that each quantity's
    charts (train, val, test) are grouped together."""
    split, _, quantity = key.partition("_")
    return f"{quantity}/{split}"


def flat_hparams(cfg: TrainConfig, pretrain: TrainConfig | None = None) -> dict:
    """A run's configuration as HParams values: nested fields joined with ".", tuples as
    "a-b-c", unset ones (None) left out; a Question 2 row's pretraining under "pretrain."."""

    def flat(d: Mapping, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            elif isinstance(value, list):
                out[prefix + key] = "-".join(map(str, value))
            elif value is not None:
                out[prefix + key] = value
        return out

    out = flat(results.config_to_dict(cfg))
    if pretrain is not None:
        out.update(flat(results.config_to_dict(pretrain), "pretrain."))
    return out


class RunLog:
    """A run's TensorBoard event files, written as it trains: one run per seed in
    `folder/seed_<k>/`, each holding its hyperparameters (`hparams` plus "seed", for the HParams
    dashboard) and, per epoch (the global step, from 1), every quantity of the run's history as
    a float32 scalar tagged by `tag`.

    `write(history)` appends the epochs not yet written. Its first call in a process starts the
    folder afresh with every epoch of the history, so that the epochs of a run this one continues
    or resumes are there, in order, and none is written twice (TensorBoard shows one curve).
    Records are appended and flushed per epoch, so a killed run leaves readable events up to its
    last epoch. Only the process that writes results writes, and nothing without a `folder`.
    """

    def __init__(self, folder: Path | None, seeds: Sequence[int], hparams: Mapping):
        self.folder, self.seeds, self.hparams = folder, list(seeds), dict(hparams)
        self.writers: list | None = None  # tensorboardX EventsWriters, one per seed
        self.written = 0

    def write(self, history: Mapping[str, Sequence[Sequence[float]]]) -> None:
        """Write the epochs of `history` (name -> [n_seeds][n_epochs]) not yet written."""
        if self.folder is None or not history or not distributed.is_writer():
            return
        # Imported here: tensorboardX's package imports torch whenever it is installed (the
        # `bench` extra), 2.5 s of every command's start-up otherwise.
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        if self.writers is None:
            results.remove_tree(self.folder)
            self.writers = []
            for seed in self.seeds:
                (self.folder / f"seed_{seed}").mkdir(parents=True)
                writer = EventsWriter(str(self.folder / f"seed_{seed}" / "events"))
                _, start, _ = summary.hparams({**self.hparams, "seed": seed}, {})
                writer.write_event(Event(wall_time=time.time(), summary=start))
                self.writers.append(writer)
        n_epochs, now = len(next(iter(history.values()))[0]), time.time()
        for k, writer in enumerate(self.writers):
            for epoch in range(self.written, n_epochs):  # one record per seed and epoch
                values = [
                    Summary.Value(tag=tag(key), simple_value=rows[k][epoch])
                    for key, rows in history.items()
                ]
                event = Event(wall_time=now, step=epoch + 1, summary=Summary(value=values))
                writer.write_event(event)
            writer.flush()
        self.written = n_epochs

    def close(self) -> None:
        """Close the event files (a later `write` would start them afresh)."""
        for writer in self.writers or ():
            writer.close()
        self.writers, self.written = None, 0


class EpochTrace:
    """`--profile DIR`: a `jax.profiler` trace of one epoch after compilation, into DIR (for
    TensorBoard's profiler and, as `perfetto_trace.json.gz`, for Perfetto).

    The trace starts when the first epoch of a `fit` call ends (its compilation done, its
    evaluation compiled too) and stops when the next epoch ends: it holds that epoch as the run
    trains it (training, evaluation, the host read, the checkpoint and the event files). The
    first configuration that trains two or more epochs in this process is traced; configurations
    of one epoch (most of `--quick`'s) hold nothing but their compilation, and are passed over
    with one warning. Only the process that writes results traces.
    """

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.state = "waiting" if folder is not None and distributed.is_writer() else "done"
        self.name, self.warned = "", False

    def hook(self, name: str, epochs: int) -> Callable[[Mapping], None]:
        """The per-epoch hook of one `fit` call training configuration `name` up to `epochs`."""
        calls = 0

        def on_epoch(history: Mapping) -> None:
            nonlocal calls
            calls += 1
            n_epochs = len(next(iter(history.values()))[0])
            if self.state == "tracing":
                self.stop()
            elif self.state == "waiting" and calls == 1 and n_epochs < epochs:
                jax.profiler.start_trace(self.folder, create_perfetto_trace=True)
                self.state, self.name = "tracing", f"{name}, epoch {n_epochs + 1}"
            elif self.state == "waiting" and calls == 1 and not self.warned:
                self.warned = True
                print(
                    f"warning: --profile: {name} trains a single epoch here, which holds its "
                    "compilation, so it is not traced; the first configuration that trains two "
                    "or more epochs in this process will be",
                    file=sys.stderr,
                    flush=True,
                )

        return on_epoch

    def stop(self) -> None:
        """End a trace in progress (also when its run stopped early) and say where it is."""
        if self.state != "tracing":
            return
        jax.profiler.stop_trace()
        self.state = "done"
        found = sorted(Path(self.folder).glob("plugins/profile/*/perfetto_trace.json.gz"))
        where = found[-1] if found else self.folder
        print(f"profile of one epoch ({self.name}): {where}", flush=True)
