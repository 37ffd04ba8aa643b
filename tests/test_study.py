"""`python -m experiments.study`: one quick study (3 seeds on 2 host devices, so that every entry
point also runs with its seeds spread over devices) into a temporary folder, then its report
checked against the result files, a rerun that must train nothing and reproduce the report, and
`--report-only`.

The study is run once per module (a subprocess, sharing the test session's compilation cache)
and the rerun once; the tests only read what those produced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "experiments.study", "--quick", "--seeds", "3"]
DEVICES = 2
SEVERAL_DEVICES = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"}
PRETRAIN_CACHE = "q2_pretrain"
IMAGE = re.compile(r"!\[(?:\\.|[^\]\\])*\]\(([^)\s]+)\)")
METRICS_LINK = re.compile(r"\]\(([^)\s]+)/metrics\.json\)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What the sweep driver logs when it trains, resumes or copies a run, or pretrains an autoencoder.
TRAINED = re.compile(r": (training|resuming|identical to .*, reused|pretraining \d)")


def run(
    args: list[str], timeout: int = 1200, cwd: Path = ROOT, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = None if env is None else {**os.environ, **env}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, (
        f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return done


def mtimes(out: Path) -> dict[str, int]:
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("*/*/metrics.json"))
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "results"
    done = run([*COMMAND, "--out", str(out)], env=SEVERAL_DEVICES)
    return {
        "out": out,
        "stdout": done.stdout,
        "report": (out / "REPORT.md").read_text(encoding="utf-8"),
        "study_json": (out / "study.json").read_bytes(),
        "mtimes": mtimes(out),
    }


@pytest.fixture(scope="module")
def rerun(study, tmp_path_factory):
    """The command study.json recorded, pasted into a shell in another folder: it must rerun as
    is."""
    out = study["out"]
    command = json.loads(study["study_json"])["command"]
    done = run(["bash", "-c", command], cwd=tmp_path_factory.mktemp("elsewhere"))
    return {
        "stdout": done.stdout,
        "report": (out / "REPORT.md").read_text(encoding="utf-8"),
        "study_json": (out / "study.json").read_bytes(),
        "mtimes": mtimes(out),
    }


# ----------------------------------------------------------------------------------------------
# Helpers reading the report


def sweep_folders(out: Path) -> dict[str, set[str]]:
    """experiment -> its configuration folders, from the disk."""
    found: dict[str, set[str]] = {}
    for config in out.glob("*/*/config.json"):
        exp = config.parent.parent.name
        if exp != PRETRAIN_CACHE:
            found.setdefault(exp, set()).add(config.parent.name)
    return found


def tables(report: str, first_header: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table whose header starts with `first_header`: (header, rows of cells)."""
    out, lines, i = [], report.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith(f"| {first_header} |"):
            head = split_row(lines[i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(split_row(lines[i]))
                i += 1
            out.append((head, rows))
        i += 1
    return out


def split_row(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def ms(entry: dict, scale: float = 100.0, digits: int = 2) -> str:
    return f"{entry['mean'] * scale:.{digits}f} ± {entry['std'] * scale:.{digits}f}"


def read_metrics(out: Path, rel: str) -> dict:
    return json.loads((out / rel / "metrics.json").read_text())


def read_config(out: Path, rel: str) -> dict:
    return json.loads((out / rel / "config.json").read_text())


# ----------------------------------------------------------------------------------------------
# The report


@pytest.mark.slow
def test_study_writes_report_and_study_json(study):
    out = study["out"]
    assert (out / "REPORT.md").is_file()
    record = json.loads(study["study_json"])
    assert (
        record["complete"]
        and record["total_wall_s"] > 0
        and record["seeds"] == 3
        and record["quick"]
    )
    for model in ("cnn", "encoder_classifier_base", "encoder_classifier_thick"):
        assert record["inference"][model]["images_per_s"] > 0
    assert record["environment"]["jax"] and record["environment"]["backend"]
    assert record["invocations"][0]["trained"], "the first run trains"
    # trained / reused: every result folder the first run wrote, told apart by being a copy.
    written = {str(p.parent.relative_to(out)) for p in out.glob("*/*/metrics.json")}
    copies = {f for f in written if read_config(out, f).get("reused_from")}
    assert record["invocations"][0]["reused"] == sorted(copies)
    assert record["invocations"][0]["trained"] == sorted(written - copies)
    # Every question's sweeps ran.
    assert {
        "q1_augmentation",
        "q1_epochs",
        "q1_optimizers",
        "q2_lr",
        "q2_arch",
        "q2_epochs",
        "q2_pretraining",
    } <= set(sweep_folders(out))


@pytest.mark.slow
def test_each_configuration_is_trained_once(study):
    """The tuned row continues the `expand` row trained in the same process (not trained again);
    Question 2's epochs sweep pretrains 1 epoch (--quick) once for all its rows, and copied rows
    carry their encoder checkpoint."""
    out, log = study["out"], study["stdout"]
    assert "  tuned: continues the 1-epoch run" in log
    assert log.count("] expand: training") == 1
    tuned = json.loads((out / "q1_tuned" / "tuned" / "history.json").read_text())
    history = json.loads((out / "q1_augmentation" / "expand" / "history.json").read_text())
    assert history["val_loss"] == [row[:1] for row in tuned["val_loss"]]
    assert len(list((out / PRETRAIN_CACHE).iterdir())) == 3  # base, lr 1e-2, thick
    assert log.count(": pretraining 784-") == 3
    copied = out / "q2_lr" / "lr_0.001"
    assert json.loads((copied / "config.json").read_text())["reused_from"]
    assert (copied / "encoder").is_dir() and any((copied / "encoder").iterdir())


@pytest.mark.slow
def test_the_report_says_how_each_claim_was_tested(study):
    """Every verdict is worded by its test (Statistics section); the tuned recipe has a section
    of its own and takes part in no choice; the comparison's "original recipe" is the expand row;
    the denoising figure's black dots are explained with their count."""
    out, report = study["out"], study["report"]
    assert (
        "## Statistics" in report
        and "The interval covers both sources of chance" in report
        and "over seeds and images" in report
    )
    for exp in sweep_folders(out):
        choice = json.loads((out / exp / "choice.json").read_text())
        if "choice" in choice and "comparison" in choice:
            word = choice["comparison"]["verdict_text"]
            assert f"on the validation images: {word}," in report, exp
    assert "### Q1 · beyond the original: a tuned recipe" in report
    assert "no choice is made here" in report
    # The conclusion states its difference from the side that scored higher (never a bare
    # negative number), and a smoke run's numbers are held against no published conclusion.
    assert re.search(
        r"\(autoencoder\); (CNN − autoencoder|autoencoder − CNN): "
        r"(better|not distinguishable)( \([^)]*\))?, \+\d",
        report,
    )
    assert "original report concluded" not in report
    assert "This run kept only the first images of each split" in report  # --quick: not 10%, 5,000
    [(head, rows)] = tables(report, "measure")
    cells = {r[0]: r[1:] for r in rows}
    columns = dict(zip(head[1:], cells["configuration"], strict=False))
    if "CNN, original recipe" in columns:
        assert "q1_augmentation/expand/metrics.json" in columns["CNN, original recipe"]
    assert not any("q1_tuned" in c for t, c in columns.items() if t in ("CNN", "autoencoder"))
    pre = read_metrics(out, "q2_pretraining/finetuned")["pretrain"]
    assert len(pre["dead_outputs"]["per_seed"]) == 3
    assert (
        "black dots in the reconstructions" in report
        and f"{pre['dead_outputs']['mean']:.1f}" in report
    )


@pytest.mark.slow
def test_the_study_runs_on_several_devices(study):
    """3 seeds on 2 devices, the member axis padded to 4 (continued runs once indexed past the
    real members): every entry point of the study runs, the seeds spread over the devices
    ("seeds" mode). One seed per device is tests/test_sharding.py's case."""
    record = json.loads(study["study_json"])
    assert record["environment"]["device_count"] == DEVICES
    for rel in ("q1_tuned/tuned", "q2_pretraining/finetuned", "q2_pretraining/frozen_probe"):
        m = read_metrics(study["out"], rel)
        assert m["parallel"] == "seeds" and len(m["test_accuracy"]["per_seed"]) == 3


@pytest.mark.slow
def test_every_linked_image_exists_and_is_a_png(study):
    out, report = study["out"], study["report"]
    links = IMAGE.findall(report)
    assert len(links) > 20
    for link in links:
        assert not link.startswith("/") and "://" not in link, f"not a relative link: {link}"
        path = out / link
        assert path.is_file(), f"missing image {link}"
        assert path.read_bytes()[:8] == PNG_MAGIC, f"not a PNG: {link}"
    for must in (
        "cnn_vs_autoencoder.png",
        "q1_epochs/sweep_val_accuracy.png",
        "q1_augmentation/none/learning_curves.png",
        "q1_augmentation/none/confusion_matrix.png",
        "q2_lr/lr_0.001/denoising.png",
    ):
        assert must in links, must


@pytest.mark.slow
def test_every_sweep_table_has_one_row_per_configuration(study):
    out, report = study["out"], study["report"]
    sweep_tables = tables(report, "configuration | test acc %")
    on_disk = sweep_folders(out)
    assert len(sweep_tables) == len(on_disk)
    seen: dict[str, list[str]] = {}
    for _head, rows in sweep_tables:
        rels = [METRICS_LINK.search(r[0]).group(1) for r in rows]
        exps = {rel.split("/")[0] for rel in rels}
        assert len(exps) == 1, f"a table mixes sweeps: {exps}"
        exp = exps.pop()
        assert exp not in seen, f"{exp} has two tables"
        seen[exp] = [rel.split("/")[1] for rel in rels]
    for exp, names in seen.items():
        assert sorted(names) == sorted(on_disk[exp]), exp  # one row per folder, none twice
    assert set(seen) == set(on_disk)


@pytest.mark.slow
def test_table_numbers_equal_metrics_json(study):
    out, report = study["out"], study["report"]
    checked = 0
    for head, rows in tables(report, "configuration | test acc %"):
        classes = [
            h[:-2] for h in head if h.endswith(" %") and h not in ("test acc %", "val acc %")
        ]
        for r in rows:
            cells = dict(zip(head, r, strict=False))
            m = read_metrics(out, METRICS_LINK.search(r[0]).group(1))
            assert cells["test acc %"] == ms(m["test_accuracy"])
            assert cells["val acc %"] == ms(m["val_accuracy"])
            for c in classes:
                assert cells[f"{c} %"] == ms(m["per_class_test_accuracy"][c], digits=1)
            n, n_div = len(m["diverged"]), m["n_diverged"]
            assert cells["diverged"] == (f"⚠ {n_div}/{n} diverged" if n_div else f"0/{n}")
            checked += 1
    assert checked >= 15

    # The comparison table: both columns' accuracies come from the linked metrics.json files.
    [(head, rows)] = tables(report, "measure")
    cells = {r[0]: r[1:] for r in rows}
    rels = [METRICS_LINK.search(c).group(1) for c in cells["configuration"]]
    assert rels[0].startswith("q1_") and rels[1].startswith("q2_")
    for i, rel in enumerate(rels):
        m = read_metrics(out, rel)
        assert cells["test accuracy %"][i] == ms(m["test_accuracy"])
        assert cells["validation accuracy %"][i] == ms(m["val_accuracy"])
        assert (
            cells["parameters of the classifier (trained)"][i]
            == f"{m['n_params']:,} ({m['n_trained_params']:,})"
        )
    record = json.loads(study["study_json"])
    assert (
        cells["inference images/s (one model, batch 1000)"][0]
        == f"{record['inference']['cnn']['images_per_s']:,.0f}"
    )


@pytest.mark.slow
def test_choice_and_fit_diagnoses_are_reported(study):
    out, report = study["out"], study["report"]
    for exp in sweep_folders(out):
        choice = json.loads((out / exp / "choice.json").read_text())
        if "choice" not in choice:  # the tuned row: beside the sweeps, no choice
            assert choice["note"] in report
            continue
        assert f"val {ms(choice['val'])}%, test {ms(choice['test'])}%" in report
    m = read_metrics(out, "q2_lr/lr_0.001")
    assert (
        f"| {ms(m['pretrain']['test_mse'], 1.0, 4)} "
        f"| {ms(m['pretrain']['test_noisy_mse'], 1.0, 4)} |" in report
    )
    assert m["fit_diagnosis"]["verdict"] in report
    assert "## CNN vs autoencoder" in report and "**Conclusion.**" in report
    assert "## Differences from the original report" in report and "270,000" in report
    env = json.loads(study["study_json"])["environment"]
    assert f"| JAX / jaxlib | {env['jax']} / {env['jaxlib']} |" in report
    assert "Total wall time of the study" in report


# ----------------------------------------------------------------------------------------------
# Resuming and rebuilding


@pytest.mark.slow
def test_rerun_skips_every_configuration_and_reproduces_the_report(study, rerun):
    out = study["out"]
    for exp, names in sweep_folders(out).items():
        for name in names:
            assert f"[{exp}] {name}: complete, skipped" in rerun["stdout"], (
                f"{exp}/{name} not skipped"
            )
    assert not TRAINED.search(rerun["stdout"]), TRAINED.search(rerun["stdout"]).group(0)
    assert rerun["mtimes"] == study["mtimes"], "a completed configuration was rewritten"
    assert rerun["study_json"] == study["study_json"], "study.json changed though nothing trained"
    assert rerun["report"] == study["report"]


@pytest.mark.slow
def test_report_only_rebuilds_without_training(study, rerun):
    out = study["out"]
    (out / "REPORT.md").write_text("stale")
    done = run(
        [sys.executable, "-m", "experiments.study", "--report-only", "--out", str(out)], timeout=300
    )
    assert not TRAINED.search(done.stdout)
    assert (out / "REPORT.md").read_text(encoding="utf-8") == study["report"]
    assert mtimes(out) == study["mtimes"]


@pytest.mark.slow
def test_report_flags_a_diverged_run(study, tmp_path):
    """A sweep copied alone, with one seed marked diverged: the row says so, and the report
    (without Question 2) still builds."""
    from fmnist_jax import report

    out = tmp_path / "results"
    shutil.copytree(study["out"] / "q1_optimizers", out / "q1_optimizers")
    path = out / "q1_optimizers" / "sgd" / "metrics.json"
    m = json.loads(path.read_text())
    m["diverged"], m["n_diverged"] = [True, False], 1
    path.write_text(json.dumps(m))
    text = report.write_report(out).read_text(encoding="utf-8")
    [(head, rows)] = tables(text, "configuration | test acc %")
    row = next(
        dict(zip(head, r, strict=False)) for r in rows if "q1_optimizers/sgd/metrics.json" in r[0]
    )
    assert row["diverged"] == "⚠ 1/2 diverged"
    assert "Not available" in text  # no Question 2 to compare with


@pytest.mark.slow
def test_the_report_places_rows_by_what_their_sweeps_recorded(study, tmp_path):
    """The comparison's columns and the sections' order follow what choice.json records
    (question, position, roles), not folder names: with every sweep folder renamed, the same
    columns and sections, linking the renamed folders."""
    from fmnist_jax import report

    out = tmp_path / "results"
    renamed = {exp: f"sweep_{i}" for i, exp in enumerate(sorted(sweep_folders(study["out"])))}
    for exp, new in renamed.items():
        shutil.copytree(study["out"] / exp, out / new)
    text = report.write_report(out).read_text(encoding="utf-8")
    [(head, rows)] = tables(text, "measure")
    [(want_head, want_rows)] = tables(study["report"], "measure")
    assert head == want_head
    want = want_rows[0]
    for exp, new in renamed.items():
        want = [cell.replace(f"]({exp}/", f"]({new}/") for cell in want]
    assert rows[0] == want  # the configuration row: each column's link
    headings = [
        [x for x in r.splitlines() if x.startswith("### Q")] for r in (text, study["report"])
    ]
    assert headings[0] == headings[1]


TRAINING_SUM = re.compile(
    r"Training wall time summed over the distinct configurations trained .*?: ([\d,]+) s\."
)


def test_a_run_that_continued_another_adds_only_its_own_time(study, tmp_path):
    """The environment section's training-time sum counts each distinct run's own time once:
    a run that continued another (`own_wall_s` < `wall_s`) adds only its own epochs."""
    from fmnist_jax import report

    out = tmp_path / "results"
    shutil.copytree(study["out"] / "q1_optimizers", out / "q1_optimizers")

    def summed() -> int:
        text = report.write_report(out).read_text(encoding="utf-8")
        return int(TRAINING_SUM.search(text).group(1).replace(",", ""))

    path = out / "q1_optimizers" / "sgd" / "metrics.json"
    m = json.loads(path.read_text())
    assert m["timing"]["wall_s"] == m["timing"]["own_wall_s"]  # trained from scratch
    m["timing"].update(own_wall_s=50.0, wall_s=50.0)
    path.write_text(json.dumps(m))
    before = summed()
    m["timing"].update(own_wall_s=0.0, wall_s=150.0)  # as if it had continued a 150 s run
    path.write_text(json.dumps(m))
    assert abs(before - summed() - 50) <= 1  # rounding to whole seconds


def test_report_only_without_results_is_a_usage_error(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.study",
            "--report-only",
            "--out",
            str(tmp_path / "nothing"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "error:" in done.stderr
