"""Field faults (issue 22, kinds 1-3) through the real command line: two commands writing one
results folder, an inherited environment that changes the numbers or breaks start-up, and an
output stream whose reader stops reading.

Training runs are tiny (`--quick --limit 200 --seeds 1`: 200 train / 50 val / 50 test images,
one epoch). In-process only where a subprocess cannot set the fault up (a file system without
locks) or for a pure function of the environment.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from experiments import context
from experiments.cli import Options
from tests._cli import ROOT, TIMEOUT_S, assert_clean_failure, child_env, run

SMALL = ["--quick", "--limit", "200", "--seeds", "1"]
ROWS = ("sgd", "sgd_momentum", "adam")  # experiments.q1_optimizers' rows
JUPYTER_BACKEND = "module://matplotlib_inline.backend_inline"  # matplotlib_inline: not installed


def q1(*args, env=None) -> subprocess.CompletedProcess:
    return run("experiments.q1_optimizers", *args, env=env)


def complete(folder: Path) -> bool:
    metrics = folder / "metrics.json"
    return metrics.is_file() and json.loads(metrics.read_text()).get("complete") is True


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def background(tmp: Path, name: str, *args) -> subprocess.Popen:
    """`python -m experiments.q1_epochs args` (one row: the smallest sweep) started; its output
    goes to tmp/name.out|err (files: no pipe can fill up and block it)."""
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        argv = [sys.executable, "-m", "experiments.q1_epochs", *map(str, args)]
        return subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=out, stderr=err)


def poll_until(proc: subprocess.Popen, condition, what: str) -> None:
    """Poll `condition` until it holds; fail if `proc` ends first (TIMEOUT_S: a hang guard)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert proc.poll() is None, f"the command ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT_S} s"
        time.sleep(0.01)


def with_stdout_closed(argv: list, env=None) -> subprocess.CompletedProcess:
    """`argv` (run from the repository root) with stdout a pipe whose reader has already gone,
    as in `cmd | head -1` once head has its line: every write to stdout fails (EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [str(a) for a in argv],
            cwd=ROOT,
            env=env or child_env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT_S,
        )
    finally:
        os.close(write_end)


# ----------------------------------------------------------------------------------------------
# Kind 1: one writer per results folder


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_first_and_waits_with_wait(tmp_path):
    out = tmp_path / "out"
    lock = out / context.LOCK_FILE
    first = background(tmp_path, "first", "--out", out, *SMALL, "--quiet")
    try:
        poll_until(
            first,
            lambda: lock.is_file() and f"pid {first.pid} " in lock.read_text(),
            "the first command holding --out",
        )
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock and does nothing: no race with its end
        before = listing(out)
        second = run("experiments.q1_epochs", "--out", out, *SMALL, "--quiet")
        assert_clean_failure(
            second,
            2,
            f"is being written by another command (pid {first.pid} on {socket.gethostname()}",
            "-m experiments.q1_epochs",  # its command
            "--wait",
            "--out DIR",
        )
        assert listing(out) == before  # the refused command wrote nothing

        waiting = background(tmp_path, "waiting", "--out", out, *SMALL, "--quiet", "--wait")
        poll_until(
            waiting,
            lambda: "waiting: --out" in (tmp_path / "waiting.err").read_text(),
            "the --wait command waiting",
        )
        assert not complete(out / "q1_epochs" / "epochs_1")  # it waits, writing nothing
    finally:
        first.kill()  # SIGKILL (a stopped process takes it too): the kernel releases the lock
    assert first.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    status = waiting.wait(timeout=TIMEOUT_S)
    assert status == 0, (tmp_path / "waiting.err").read_text()[-3000:]
    assert complete(out / "q1_epochs" / "epochs_1")
    assert (out / "q1_epochs" / "summary.md").is_file()
    assert lock.read_text() == ""  # released: it names no holder any more


def test_a_folder_that_cannot_be_locked_is_written_after_one_warning(tmp_path, monkeypatch, capsys):
    """NFS mounted without its lock service answers flock with ENOLCK; a subprocess cannot set
    that up, so `fcntl.flock` fails here as it would there."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(context.fcntl, "flock", no_locks)
    ran = False
    with context.sole_writer(Options(out=tmp_path / "out")):
        ran = True
    err = capsys.readouterr().err
    assert ran and err.count("\n") == 1 and err.startswith("warning: --out ")
    assert "cannot be locked (No locks available" in err and "at the same time" in err


# ----------------------------------------------------------------------------------------------
# Kind 2: the environment the user inherited


@pytest.fixture(scope="module")
def swept_with_reader_gone(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -m experiments.q1_optimizers` (float32, three rows) run with stdout a pipe whose
    reader has gone: (the finished command, its --out). One run for two tests: the reader gone
    (kind 3), and float32 results that an x64 run meets (kind 2), which copies them."""
    out = tmp_path_factory.mktemp("reader_gone") / "out"
    argv = [sys.executable, "-m", "experiments.q1_optimizers", "--out", out, *SMALL]
    return with_stdout_closed(argv), out


@pytest.mark.slow
def test_x64_is_part_of_the_fingerprint_and_refused_on_float32_results(
    tmp_path, swept_with_reader_gone
):
    made, written = swept_with_reader_gone
    assert made.returncode == 0, made.stderr[-3000:]
    out = tmp_path / "out"
    shutil.copytree(written, out)
    sweep = out / "q1_optimizers"
    float32 = json.loads((sweep / "adam" / "config.json").read_text())
    assert "numerics_env" not in float32  # no variable set: the fingerprint is as it always was
    (sweep / "sgd" / "metrics.json").unlink()  # sgd: a partial run, which a rerun resumes
    before = listing(out)

    x64 = child_env(JAX_ENABLE_X64="1")
    proc = q1("--out", out, *SMALL, "--quiet", env=x64)
    assert_clean_failure(
        proc, 2, f"{sweep / 'sgd'} was run with JAX_ENABLE_X64 unset", "env -u JAX_ENABLE_X64"
    )
    assert listing(out) == before  # neither resumed nor touched

    # Another sweep whose quick row is the adam row's configuration trains its own x64 run
    # instead of copying the float32 one, and records why its fingerprint differs.
    proc = run("experiments.q1_epochs", "--out", out, *SMALL, "--quiet", env=x64)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "q1_epochs" / "epochs_1" / "config.json").read_text())
    assert "reused_from" not in config  # trained, not copied
    assert config["numerics_env"] == {"JAX_ENABLE_X64": "1"}
    assert config["fingerprint"] != float32["fingerprint"]
    assert config["train_config"] == float32["train_config"]
    assert "env JAX_ENABLE_X64=1 " in config["command"]


def test_the_fingerprint_leaves_out_the_xla_flags_that_change_no_number(monkeypatch):
    for name in context.NUMERICS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_dump_to=/d")
    assert context.numerics_env() == {}  # where members run and what XLA dumps: same numbers
    fast = "--xla_cpu_enable_fast_math=true"
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {fast}")
    monkeypatch.setenv("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    assert context.numerics_env() == {"JAX_DEFAULT_MATMUL_PRECISION": "highest", "XLA_FLAGS": fast}


ENTRY_POINTS = [
    ["-m", "experiments.q1_augmentation"],
    ["-m", "experiments.q1_epochs"],
    ["-m", "experiments.q1_optimizers"],
    ["-m", "experiments.q2_autoencoder"],
    ["-m", "experiments.study"],
    ["-m", "fmnist_jax.architecture"],
    ["-m", "fmnist_jax.compare"],
    ["-m", "fmnist_jax.report"],
    ["-m", "benchmarks.run"],
    ["-m", "benchmarks.scaling"],
    ["scripts/accelerator_check.py"],
]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e[-1])
def test_every_entry_point_starts_in_a_hostile_environment_and_outlives_its_reader(tmp_path, entry):
    """`--help`, with an inherited matplotlib backend that does not exist here, a matplotlib
    folder that cannot be created, a tqdm setting tqdm cannot read, and stdout closed (`| head`):
    usage printed (into the closed pipe), exit 0, and not a word on stderr."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = child_env(
        MPLBACKEND=JUPYTER_BACKEND,
        MPLCONFIGDIR=blocker / "matplotlib",
        TQDM_MININTERVAL="abc",
        PYTHONPATH=ROOT,  # scripts/accelerator_check.py imports the project from the root
    )
    proc = with_stdout_closed([sys.executable, *entry, "--help"], env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_an_invalid_backend_name_does_not_stop_the_report(tmp_path):
    """`python -m fmnist_jax.report` draws its figure with MPLBACKEND set to a name matplotlib
    rejects at import."""
    out = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", out)
    (out / "REPORT.md").unlink()
    (out / "cnn_vs_autoencoder.png").unlink()
    proc = run("fmnist_jax.report", out, env=child_env(MPLBACKEND="nonsense"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (out / "REPORT.md").is_file() and (out / "cnn_vs_autoencoder.png").is_file()


@pytest.mark.parametrize(
    "name,value",
    [
        ("JAX_ENABLE_X64", "yes please"),
        ("JAX_DEFAULT_MATMUL_PRECISION", "fastest"),
        ("JAX_DEFAULT_PRNG_IMPL", "mersenne"),
    ],
)
def test_a_jax_setting_jax_refuses_is_one_error_line(tmp_path, name, value):
    out = tmp_path / "out"
    proc = q1("--out", out, *SMALL, env=child_env(**{name: value}))
    assert_clean_failure(proc, 2, "JAX cannot start", repr(value)[1:-1], f"unset {name}")
    assert not out.exists()


@pytest.mark.slow
def test_progress_bars_on_a_terminal_whatever_tqdm_settings_were_inherited(tmp_path):
    """stderr a terminal (a pseudo-terminal), so progress bars are drawn: with TQDM_MININTERVAL
    unreadable (tqdm converts TQDM_* when first imported, for the first bar, mid-run) and an
    inherited Jupyter backend, the sweep still trains every row and draws every figure."""
    out = tmp_path / "out"
    env = child_env(TQDM_MININTERVAL="abc", MPLBACKEND=JUPYTER_BACKEND)
    terminal, terminal_end = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns
    with open(tmp_path / "stdout", "w") as stdout:
        argv = [sys.executable, "-m", "experiments.q1_epochs", "--out", out, *SMALL]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=stdout, stderr=terminal_end)
    os.close(terminal_end)
    shown = b""
    while True:
        try:
            chunk = os.read(terminal, 1 << 16)
        except OSError:  # EIO: the command has closed its end of the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(terminal)
    text = shown.decode("utf-8", "replace")
    assert proc.wait(timeout=TIMEOUT_S) == 0, text[-3000:]
    assert "Traceback" not in text and "epoch" in text, text[-3000:]  # a bar: "0/1 [... epoch/s]"
    row = out / "q1_epochs" / "epochs_1"  # the sweep's one row
    assert complete(row)
    assert (row / "learning_curves.png").stat().st_size > 0


# ----------------------------------------------------------------------------------------------
# Kind 3: the reader stops reading


@pytest.mark.slow
def test_a_sweep_whose_reader_has_gone_trains_and_writes_every_row(swept_with_reader_gone):
    proc, out = swept_with_reader_gone
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "\r" not in proc.stderr  # no progress bar redrawn into a pipe
    for row in ROWS:
        assert complete(out / "q1_optimizers" / row)
    assert (out / "q1_optimizers" / "summary.md").is_file()


def test_printing_tables_and_differences_into_a_closed_pipe(tmp_path):
    proc = with_stdout_closed([sys.executable, "-m", "fmnist_jax.architecture"])
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for side, accuracy in (("a", 0.5), ("b", 0.75)):
        for k in range(50):  # fifty differences: more lines than any reader waits for
            metrics = tmp_path / side / "q1_x" / f"row{k}" / "metrics.json"
            metrics.parent.mkdir(parents=True)
            metrics.write_text(json.dumps({"test_accuracy": accuracy}))
    proc = with_stdout_closed(
        [sys.executable, "-m", "fmnist_jax.compare", tmp_path / "a", tmp_path / "b"]
    )
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr  # 1: the trees differ
