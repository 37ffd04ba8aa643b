"""Several cooperating processes on JAX's distributed runtime (`fmnist_jax.distributed`), on this
machine, as the README's "Devices, processes and hosts" section shows: 2 processes on 127.0.0.1,
each with 2 fake CPU devices and CPU collectives (gloo), run an entry point with `--parallel data`
or `seeds` over all 4 devices; the results tree equals one process's with the same 4 devices
(`python -m fmnist_jax.compare --atol`), and a process that stops makes JAX's runtime end the other.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import cli
from fmnist_jax import distributed, io, results
from tests._cli import run

ROOT = Path(__file__).resolve().parent.parent
# A quick pretraining: 200 train / 50 val / 50 test images, 1 epoch, an encoder checkpoint.
COMMAND = [
    "experiments.q2_autoencoder",
    "--stage",
    "pretrain",
    "--quick",
    "--limit",
    "200",
    "--seeds",
    "2",
]
ATOL = 1e-5  # seen: metrics within 1e-7 (float32 sums split over processes), the same predictions


def _env(devices: int, **more) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )
    env.update({k: str(v) for k, v in more.items()})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp: Path, args_of, n: int = 2, **more) -> list[tuple[subprocess.Popen, Path, Path]]:
    """n processes of one job: process i runs `python -m` args_of(i), output in tmp/p<i>.*, with
    the environment variables `more` besides the job's."""
    port, procs = _free_port(), []
    for i in range(n):
        out, err = tmp / f"p{i}.out", tmp / f"p{i}.err"
        env = _env(
            2,
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES=n,
            JAX_PROCESS_ID=i,
            **more,
        )
        with open(out, "w") as fo, open(err, "w") as fe:
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-m", *args_of(i)], cwd=ROOT, env=env, stdout=fo, stderr=fe
                    ),
                    out,
                    err,
                )
            )
    return procs


def wait_all(procs, timeout: float = 600) -> list[int]:
    return [p.wait(timeout=timeout) for p, _, _ in procs]


@pytest.mark.parametrize("parallel", ["data", "seeds"])
def test_two_processes_give_the_numbers_of_one(tmp_path, parallel):
    command = [*COMMAND, "--parallel", parallel, "--quiet"]
    one = run(*command, "--out", tmp_path / "one", env=_env(4))
    assert one.returncode == 0, one.stderr[-3000:]
    procs = launch(tmp_path, lambda i: [*command, "--out", str(tmp_path / "two")])
    assert wait_all(procs) == [0, 0], [err.read_text()[-3000:] for _, _, err in procs]

    two = tmp_path / "two"
    [metrics] = two.glob("q2_pretrain/*/metrics.json")
    row = io.read_json(metrics)
    assert row["complete"] and row["epochs_run"] == 1 and row["diverged"] == [False, False]
    assert (metrics.parent / "encoder").is_dir() and (metrics.parent / "denoising.png").is_file()
    assert not [p for p in two.rglob("*") if results.is_temporary(p) or "tmp" in p.name]
    # The same numbers as one process; the comparison would see a difference (a changed value).
    compare = lambda: run("fmnist_jax.compare", tmp_path / "one", two, "--atol", ATOL)  # noqa: E731
    same = compare()
    assert same.returncode == 0 and "identical: 1 files compared" in same.stdout, same.stdout
    row["val_mse"]["mean"] += 10 * ATOL
    io.write_json(metrics, row)
    changed = compare()
    assert changed.returncode == 1 and "val_mse.mean" in changed.stdout


# JAX's runtime ends a job with a failed process (see fmnist_jax.distributed): at the latest when
# its shutdown barrier times out (300 s, jax.distributed.initialize's default). Waiting longer
# than that means a hang.
HANG_S = 600


def test_an_error_in_one_process_ends_every_process_with_a_non_zero_status(tmp_path):
    """Process 0 alone cannot write its --out (a file): its one error line and status 2; process 1
    fails in its first collective (JAX's runtime: no peer), with a non-zero status."""
    (tmp_path / "a_file").write_text("")
    outs = [tmp_path / "a_file", tmp_path / "results"]
    procs = launch(tmp_path, lambda i: [*COMMAND, "--quiet", "--out", str(outs[i])])
    status = wait_all(procs, timeout=HANG_S)
    errors = [err.read_text() for _, _, err in procs]
    assert status[0] == 2 and status[1] != 0, (status, errors)
    assert "error: --out" in errors[0] and "is a file, not a folder" in errors[0]
    assert "Traceback" not in errors[0]


@pytest.mark.parametrize("victim", [0, 1])
def test_an_interrupted_process_ends_every_process_with_a_non_zero_status(tmp_path, victim):
    """SIGINT to one process while it trains: it exits 130 at once; JAX's runtime ends the other
    (at once when process 0, which hosts the runtime, is gone; else after its heartbeat timeout,
    10 s here through FMNIST_JAX_HEARTBEAT_TIMEOUT_S, JAX's default 100 s)."""
    procs = launch(
        tmp_path,
        lambda i: [*COMMAND, "--out", str(tmp_path / "results")],
        FMNIST_JAX_HEARTBEAT_TIMEOUT_S=10,
    )
    proc, out, err = procs[victim]
    deadline = time.monotonic() + 300
    while "pretraining" not in out.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, err.read_text()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    status = wait_all(procs, timeout=HANG_S)
    assert status[victim] == 130 and status[1 - victim] != 0, status
    assert "interrupted by SIGINT" in err.read_text()


# ------------------------------------------------------------------------------- in-process


@pytest.fixture
def as_process(monkeypatch):
    """Pretend to be process `id` of 2, recording the barriers instead of waiting at them."""
    barriers = []

    def become(process_id: int) -> list[str]:
        monkeypatch.setattr(distributed, "_process", (process_id, 2))
        monkeypatch.setattr(distributed, "barrier", barriers.append)
        return barriers

    return become


def test_only_process_0_writes_and_every_write_is_a_barrier(tmp_path, as_process):
    stale = tmp_path / "run" / ".metrics.json.x1.tmp"
    stale.parent.mkdir()
    stale.write_text("")
    barriers = as_process(1)
    io.write_json(tmp_path / "run" / "metrics.json", {"complete": True})
    results.clean_stale_temporaries(tmp_path / "run")
    results.remove_tree(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [stale.name]
    assert len(barriers) == 2 and all("metrics.json" in b for b in barriers)

    as_process(0)
    io.write_json(tmp_path / "run" / "metrics.json", {"complete": True})
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"complete": True}
    results.clean_stale_temporaries(tmp_path / "run")
    assert not stale.exists() and len(barriers) == 4
    results.remove_tree(tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
        *(
            (
                {"JAX_NUM_PROCESSES": "2", "FMNIST_JAX_HEARTBEAT_TIMEOUT_S": value},
                f"FMNIST_JAX_HEARTBEAT_TIMEOUT_S='{value}' is not a whole number of seconds >= 1",
            )
            for value in ("ten", "0", "1.5")
        ),
        (
            {
                "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": "2",
            },
            "cannot join the other processes",
        ),
    ],
)
def test_bad_settings_are_one_error_line_and_status_2(monkeypatch, capsys, env, message):
    for name in (*distributed.ENV, distributed.HEARTBEAT_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stop:
        cli.main_guard(lambda: None)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_without_the_variables_a_process_is_alone(monkeypatch):
    for name in distributed.ENV:
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False
    assert distributed.is_writer()
