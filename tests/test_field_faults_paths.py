"""Field faults, third round (issue 22), kinds 4 and 5, through the real command lines: paths a
library reads as syntax, and messages that sent the user the wrong way (results of older code,
a checkpoint of other devices, data files that are broken links, a compilation cache whose disk
fills).

Training runs are tiny (`--quick --limit 200 --seeds 1`: 200 train / 50 val / 50 test images,
one epoch). `main(argv)` is never needed here: every fault is set up for a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli
from experiments.cli import path_problem
from fmnist_jax import checkpoint, results, sources
from fmnist_jax.compare import compare
from tests._cli import ROOT, TIMEOUT_S, assert_clean_failure, child_env, run

SMALL = ["--quick", "--limit", "200", "--seeds", "1", "--quiet"]
TWO_DEVICES = "--xla_force_host_platform_device_count=2"


def warnings_of(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("warning:")]


# ----------------------------------------------------------------------------------------------
# Kind 4: a path that a library reads as syntax


# Each a folder name in which a checkpoint is saved and restored; the probe found those
# with `[...]` or `\` failing and the rest working.
NAMES = [
    *" #:%?*~@ü;&+$'\"{}!(),=^<>|`-_.",
    "{a,b}",
    "x]y[",  # brackets, but no [...] class
    "[]",
    "[!]",
    "[1]",  # the exp[1]
    "[ab]",
    "[!a]",
    "[a-z]",
    "[]]",
    "\\",
    "**",
]


def test_the_folders_refused_for_checkpoints_are_exactly_those_orbax_cannot_use(tmp_path):
    """Save and restore through fmnist_jax.checkpoint (Orbax) in a folder named with each
    candidate: the entry points' check (`path_problem`) refuses exactly the names where that
    fails, so nothing that works is refused and nothing refused would have worked."""
    state = {"w": jnp.arange(4.0)}
    works, refused = {}, {}
    for name in NAMES:
        folder = tmp_path / f"x{name}y" / "checkpoint"
        try:
            checkpoint.save(folder, 1, state, {"epoch": 1})
            restored, extra = checkpoint.restore(folder, state)
            works[name] = np.array_equal(restored["w"], state["w"]) and extra == {"epoch": 1}
        except checkpoint.CheckpointError:
            works[name] = False
        refused[name] = path_problem(folder, "orbax") is not None
    assert {n for n in NAMES if not works[n]} == {n for n in NAMES if refused[n]}
    assert not works["[1]"] and not works["\\"] and works[" "] and works["ü"]  # the probe


def refusal(argv: list) -> str:
    """The usage error the entry points' flag parsing (`experiments.cli.parse`, with Question
    2's flags) raises for `argv`: what the command line prints after `error: `, exit 2."""
    with pytest.raises(cli.UsageError) as raised:
        cli.parse(cli.parser("test", question2=True), [str(a) for a in argv])
    return str(raised.value)


def test_a_folder_read_as_a_pattern_is_refused_up_front_with_what_to_do(tmp_path, monkeypatch):
    """`--out exp[1]` made every resume checkpoint look damaged and Question 2 end in a dead
    end; such a folder, wherever the pattern is in its full path (the current folder too), is
    refused before anything is read or written: exit 2, one line naming it, why and the fix.

    One command line shows both (a relative --out in a current folder named with a pattern);
    the other flags go through the same parsing, which is checked in-process."""
    cwd = tmp_path / "work[2]"
    cwd.mkdir()
    env = child_env(PYTHONPATH=ROOT)
    proc = run("experiments.q1_epochs", "--out", "exp[1]", *SMALL, cwd=cwd, env=env)
    assert_clean_failure(
        proc,
        2,
        f"--out exp[1]: its full path {cwd.resolve() / 'exp[1]'}",
        "'work[2]'",
        "'exp[1]'",
        "glob pattern",
        "--out DIR",
    )
    assert list(cwd.iterdir()) == []

    out = tmp_path / "exp[1]"
    message = refusal(["--out", out])
    assert f"--out {out}" in message and "'exp[1]'" in message and "work" not in message
    with monkeypatch.context() as here:
        here.chdir(cwd)
        assert f"its full path {cwd.resolve() / 'results'}" in refusal(["--out", "results"])
    encoder = tmp_path / "pre\\trained" / "encoder"
    message = refusal(["--stage", "finetune", "--encoder", encoder, "--out", tmp_path / "q2"])
    assert f"--encoder {encoder}" in message and "a backslash" in message and "Orbax" in message
    message = refusal(["--source", "tfds", "--data-dir", tmp_path / "tfds**"])
    for needle in ("'**' (a glob pattern)", "TensorFlow Datasets", "--data-dir DIR"):
        assert needle in message, message
    assert not out.exists() and not (tmp_path / "q2").exists()


def test_odd_but_usable_paths_work_end_to_end_and_a_run_resumes_in_them(tmp_path):
    """Every path the user gives holds characters that work: --out reached through a link whose
    name holds a [...] pattern (Orbax is given the resolved folder), with space # % : ; & + $ '
    * ? ~ @ ü in the real name; a data folder and a compilation cache named with the [...], \\
    and ** that Orbax alone cannot take. A run stopped after its last checkpoint resumes there
    silently, to the same numbers."""
    real = tmp_path / "real #%:;&+$'*?~@ü"
    real.mkdir()
    (tmp_path / "link[1]").symlink_to(real)
    data = tmp_path / "data [1] \\ **"
    data.mkdir()
    for f in sources.DEBIAN_DIR.iterdir():
        (data / f.name).symlink_to(f)
    cache = tmp_path / "cache [1] \\ **"
    env = child_env(FMNIST_JAX_CACHE=cache)
    args = ["--out", tmp_path / "link[1]" / "out", *SMALL, "--data-dir", data, "--keep-checkpoints"]
    first = run("experiments.q1_epochs", *args, env=env)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    assert any(p.name.endswith("-cache") for p in cache.iterdir())
    row = real / "out" / "q1_epochs" / "epochs_1"
    shutil.copytree(real / "out", tmp_path / "uninterrupted")
    (row / "metrics.json").unlink()  # stopped after its last checkpoint
    again = run("experiments.q1_epochs", *args, env=env)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert not any(
        p.name.startswith(".checkpoint") for p in row.iterdir()
    )  # resumed, not set aside
    assert compare(real / "out", tmp_path / "uninterrupted") == []


# ----------------------------------------------------------------------------------------------
# Kind 5: messages that sent the user the wrong way


def test_results_of_older_code_are_named_as_such_and_overwrite_leaves_no_stale_row(tmp_path):
    """Results written by older code of this project (another results version) are refused
    saying so, not as "changed flags, seeds or data"; a changed flag is named with both values;
    --overwrite recomputes the rows and removes the rows the sweep no longer has (the old code's
    `tuned` row), touching no folder that is not one of its rows."""
    out, reference = tmp_path / "out", tmp_path / "reference"
    made = run("experiments.q1_epochs", "--out", reference, *SMALL)
    assert made.returncode == 0, made.stderr
    sweep = out / "q1_epochs"
    shutil.copytree(reference / "q1_epochs", sweep)
    # As older code left it: results version 2 in the fingerprint, and a row it had.
    config = json.loads((sweep / "epochs_1" / "config.json").read_text())
    keys = ("results_version", "train_config", "seeds", "data")
    old = {**{k: config[k] for k in keys}, "results_version": 2}
    config.update(old, fingerprint=results.config_fingerprint(old))
    (sweep / "epochs_1" / "config.json").write_text(json.dumps(config))
    shutil.copytree(sweep / "epochs_1", sweep / "tuned")
    other = json.loads((sweep / "tuned" / "config.json").read_text())
    (sweep / "notes").mkdir()  # not a row: no config.json
    (sweep / "notes" / "todo.txt").write_text("mine")
    (sweep / "elsewhere").mkdir()  # a row of another experiment
    (sweep / "elsewhere" / "config.json").write_text(json.dumps({**other, "experiment": "q2_lr"}))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    proc = run("experiments.q1_epochs", "--out", out, *SMALL)
    assert_clean_failure(
        proc,
        2,
        f"{sweep / 'epochs_1'} holds complete results written by older code of this project",
        "results version 2; this code's is 3",
        "--overwrite",
    )
    assert "changed flags" not in proc.stderr
    changed = run("experiments.q1_epochs", "--out", reference, *SMALL, "--lr", "0.01")
    assert_clean_failure(
        changed, 2, "of a different configuration", "learning_rate 0.001 there, 0.01 here"
    )
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing touched

    proc = run("experiments.q1_epochs", "--out", out, *SMALL, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "elsewhere",
        "epochs_1",
        "notes",
    ]
    assert (sweep / "notes" / "todo.txt").read_text() == "mine"
    assert compare(out, reference, ignore=("q1_epochs/elsewhere",)) == []


def test_a_checkpoint_written_on_other_devices_is_named_not_called_damaged(tmp_path):
    """A run stopped after its last checkpoint on 2 devices, rerun on 1: with --parallel seeds
    its arrays have other shapes (the member axis padded for 2 devices) and were reported as
    damaged; with --parallel data they restored and the run went on silently on other devices,
    ending with the numbers of neither. Now both are named as written elsewhere (devices then
    and now), kept aside, not called damaged, with how to resume them; the run trains afresh to
    the one-device numbers.

    Both are rerun on one device with --parallel data (the placement is no part of the
    configuration), so that one reference run gives the one-device numbers of both."""
    args = [*SMALL, "--keep-checkpoints"]
    reference = tmp_path / "reference"
    made = run("experiments.q1_epochs", "--out", reference, *args, "--parallel", "data")
    assert made.returncode == 0, made.stderr
    two_devices = child_env(XLA_FLAGS=TWO_DEVICES)
    for then in ("seeds", "data"):
        out = tmp_path / then
        on_two = run(
            "experiments.q1_epochs", "--out", out, *args, "--parallel", then, env=two_devices
        )
        assert on_two.returncode == 0, on_two.stderr
        row = out / "q1_epochs" / "epochs_1"
        (row / "metrics.json").unlink()
        proc = run("experiments.q1_epochs", "--out", out, *args, "--parallel", "data")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        [warning] = warnings_of(proc)
        aside = row / ".checkpoint.other-placement"
        for needle in (
            f"the checkpoint in {row / 'checkpoint'} was written with devices 2 x cpu, "
            f"parallel {then}",
            "(this run: devices 1 x cpu, parallel data",
            "not damaged",
            f"moved to {aside}",
            "to resume from it instead",
        ):
            assert needle in warning, warning
        assert "damaged" not in warning.replace("not damaged", "")
        assert (aside / "1").is_dir()
        assert compare(out, reference) == []


ANNEX_TARGET = (
    "../.git/annex/objects/Qx/9j/SHA256E-s26421880--0123abcd.gz/SHA256E-s26421880--0123abcd.gz"
)


def test_data_files_that_are_broken_links_into_an_annex_are_named_with_the_fetch(tmp_path):
    """A DataLad / git-annex dataset not yet fetched: every data file a symbolic link into the
    annex's object store, which is empty. Named as broken links (to what), with the commands that
    fetch the content; exit 1, one error line. Unlocked annexed files, pointer files in place
    of the data, are named as such too."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for spec in sources.FILES.values():
        (folder / f"{spec.name}.gz").symlink_to(ANNEX_TARGET)
    proc = run("experiments.q1_epochs", "--out", tmp_path / "out", *SMALL, "--data-dir", folder)
    assert_clean_failure(
        proc,
        1,
        f"t10k-images-idx3-ubyte.gz is a broken symbolic link (to {ANNEX_TARGET}), and 3 more",
        f"datalad get {folder}",
        f"git -C {folder} annex get .",
    )
    assert not (tmp_path / "out").exists()
    for spec in sources.FILES.values():
        (folder / f"{spec.name}.gz").unlink()
        (folder / spec.name).write_text("/annex/objects/SHA256E-s47040016--c59f468a\n")
    proc = run("experiments.q1_epochs", "--out", tmp_path / "out", *SMALL, "--data-dir", folder)
    assert_clean_failure(proc, 1, "it is a git-annex pointer", "datalad get")


# The smallest run that writes a checkpoint: one quick epoch of the autoencoder's pretraining
# (`python -m experiments.run --model autoencoder`), whose programs compile in about half the
# time of the CNN's.
PRETRAIN = ["experiments.run", "--model", "autoencoder", *SMALL]
FILE_SIZE_LIMIT = 100_000  # bytes: above the small entries, below the training programs'
# `python -m experiments.run ARGS` under that limit (set by the child itself: a preexec_fn
# would fork this multithreaded process).
UNDER_LIMIT = (
    "import resource, runpy; "
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, resource.RLIM_INFINITY)); "
    "runpy.run_module('experiments.run', run_name='__main__', alter_sys=True)"
)


def test_a_compilation_cache_that_cannot_be_written_is_turned_off_at_the_first_error(tmp_path):
    """The disk fills while JAX writes an entry: one line says the cache is off (not JAX's
    multi-line warning per program) and the entry cut short is removed, so that the next run,
    with space again, reads no damaged entry and says nothing. The fault: a file-size limit on
    the process (RLIMIT_FSIZE; no root needed), which cuts every write at 100 kB, as a full disk
    does; the checkpoint after the first epoch then fails as on a full disk (exit 1). An entry
    damaged otherwise (cut short by older code) is removed on its first read, and rewritten."""
    cache, env = tmp_path / "cache", child_env(FMNIST_JAX_CACHE=tmp_path / "cache")
    full = subprocess.run(
        [sys.executable, "-c", UNDER_LIMIT, *PRETRAIN[1:], "--out", str(tmp_path / "full")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert_clean_failure(full, 1, "cannot write a checkpoint")
    [warning] = warnings_of(full)
    assert f"the compilation cache in {cache} cannot be written" in warning
    assert "File too large" in warning and "turned off" in warning
    assert "UserWarning" not in full.stderr
    sizes = {p.name: p.stat().st_size for p in cache.iterdir()}
    assert all(size < FILE_SIZE_LIMIT for size in sizes.values()), sizes  # none cut at the limit
    assert not any(name.startswith("jit_eval_fn") for name in sizes), sizes  # off after the error

    again = run(*PRETRAIN, "--out", tmp_path / "again", env=env)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    programs = [p for p in cache.iterdir() if p.name.startswith("jit_epoch_fn")]
    assert programs
    for p in programs:
        os.truncate(p, 1000)  # cut short, as older code left them
    proc = run(*PRETRAIN, "--out", tmp_path / "damaged", env=env)
    assert proc.returncode == 0, proc.stderr
    [warning] = warnings_of(proc)
    assert f"the compilation cache in {cache} held a damaged entry of jit_epoch_fn" in warning
    assert "UserWarning" not in proc.stderr
    rewritten = [p for p in cache.iterdir() if p.name.startswith("jit_epoch_fn")]
    assert rewritten and all(p.stat().st_size > 1000 for p in rewritten)
    assert compare(tmp_path / "damaged", tmp_path / "again") == []
