"""The quickstart notebook (notebooks/quickstart.ipynb) runs as committed, in its quick mode, in a
kernel of this interpreter: it trains, shows its curves and confusion matrix, quotes the published
reference run as docs/results/ holds it, and writes nothing; and it is committed without outputs.
"""

import json
import re
import subprocess
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from tests._cli import ROOT, TIMEOUT_S, child_env

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
RESULTS = ROOT / "docs" / "results"
REFERENCE = RESULTS / "q1_augmentation" / "expand"  # the configuration the notebook trains
# Quick mode loads the task with limit=600: 600 training images, max(600 // 5, 50) = 120
# validation and test images (docs/design.md#task-and-split), and trains one seed.
QUICK_COUNTS, QUICK_SEEDS, CLASSES = {"train": 600, "val": 120, "test": 120}, 1, 5


def repository_state() -> str:
    """Modified and untracked files of the checkout (read without taking git's index lock)."""
    return subprocess.run(
        ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def printed(cell) -> str:
    """What a code cell printed."""
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


def displayed(cell, mime: str) -> list:
    """What a code cell displayed as `mime` (e.g. "image/png", "text/markdown")."""
    return [o.data[mime] for o in cell.outputs if mime in o.get("data", {})]


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


@pytest.mark.slow
def test_the_quickstart_runs_in_quick_mode(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    before = repository_state()
    # "python3" is ipykernel's own kernel: jupyter_client starts it with this interpreter.
    client = NotebookClient(nb, kernel_name="python3", timeout=TIMEOUT_S)  # a hang guard only
    client.execute(cwd=str(tmp_path), env=child_env(FMNIST_JAX_NOTEBOOK_QUICK=1))
    cells = {cell.get("id"): cell for cell in nb.cells}

    # The kernel ran this interpreter and this checkout's library.
    env = printed(cells["environment"])
    assert f"python: {sys.executable}\n" in env and f"checkout: {ROOT}\n" in env, env
    counts = QUICK_COUNTS
    data = printed(cells["data"])
    assert f"train {counts['train']}, val {counts['val']}, test {counts['test']} images" in data
    # Its recipe and seeds are the reference row's (config.json), before quick mode shrinks them.
    assert "the reference row's configuration and seeds: True\n" in printed(cells["config"])

    # Trained: chance on 5 balanced classes is 0.2, and over 120 images a guesser's accuracy has
    # a standard deviation of sqrt(0.2 * 0.8 / 120) = 0.037, so 0.4 is over 5 of them above
    # chance; the quick run's 18 Adam steps reach 0.675 (measured on an AMD EPYC), far above it.
    accuracy = number(r"test accuracy: (\d\.\d{4}) \(mean over 1 seed", printed(cells["train"]))
    assert 0.4 <= accuracy <= 1.0

    # The confusion matrix: 5x5 counts over every evaluated test image, its diagonal the accuracy
    # printed by the training cell (computed apart: correct counts vs the confusion matrix).
    text = printed(cells["confusion"]).split("summed over seeds):\n", 1)[1].split("]]", 1)[0]
    confusion = np.array([int(v) for v in re.findall(r"\d+", text)])
    assert confusion.size == CLASSES * CLASSES, text
    confusion = confusion.reshape(CLASSES, CLASSES)
    assert confusion.sum() == QUICK_SEEDS * counts["test"]
    assert abs(np.trace(confusion) / confusion.sum() - accuracy) <= 5e-5  # printed to 4 digits
    assert displayed(cells["curves"], "image/png"), "no learning curves shown"
    assert displayed(cells["confusion"], "image/png"), "no confusion matrix shown"

    # The published reference run, as its files hold it.
    ref = json.loads((REFERENCE / "metrics.json").read_text(encoding="utf-8"))["test_accuracy"]
    published = f"{100 * ref['mean']:.2f} ± {100 * ref['std']:.2f} %"
    out = printed(cells["reference"])
    assert f"published test accuracy of q1_augmentation/expand: {published}" in out, out
    assert f"this run: {100 * accuracy:.2f} % (quick mode" in out, out
    [table] = displayed(cells["reference"], "text/markdown")
    seeds = json.loads((RESULTS / "study.json").read_text(encoding="utf-8"))["seeds"]
    assert table.startswith(f"{seeds} seeds;"), table
    assert "| **CNN vs autoencoder** (test images) |" in table, table
    assert displayed(cells["reference"], "image/png"), "the reference learning curves not shown"

    # It wrote nothing: not where it ran, not in the checkout.
    assert list(tmp_path.iterdir()) == []
    assert repository_state() == before


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), (
        "commit it without outputs (Jupyter: Edit > Clear Outputs of All Cells, then save)"
    )
    assert "widgets" not in nb.metadata
    # It opens with how to install it, Colab included.
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "Colab" in first.source
    assert "pip install -q -e ." in first.source
