"""A sweep's results read back from disk, the choice made on them, and the Markdown that both its
`summary.md` and `REPORT.md` show (one path: the same rows, the same choice, the same tables).

A sweep folder `<out>/<experiment>/` holds one folder per configuration and, once the sweep has
run, `choice.json`: what its definition says of it (title, question, position, rows in order,
their roles, a note and its reference row) and the choice made on validation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_jax import curves, io, plots, stats

CHOICE_JSON = "choice.json"
CURVE_METRICS = ("val_accuracy", "val_loss")
ROW_FIGURES = (
    ("learning_curves.png", "learning curves"),
    ("confusion_matrix.png", "test confusion"),
    ("reconstruction_curves.png", "reconstruction MSE"),
    ("denoising.png", "denoising"),
)


# ----------------------------------------------------------------------------------------------
# Formatting


def num(value: Any) -> float:
    """A JSON number, or NaN for null / 'nan' strings / anything unreadable."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt(ms: Mapping | None, scale: float = 100.0, digits: int = 2) -> str:
    """'mean ± std' of a {"mean", "std"} entry (percent by default); the mean alone for one seed
    (std undefined); '–' when missing or NaN."""
    if not isinstance(ms, Mapping) or not math.isfinite(num(ms.get("mean"))):
        return "–"
    mean, std = num(ms["mean"]), num(ms.get("std"))
    text = f"{mean * scale:.{digits}f}"
    return f"{text} ± {std * scale:.{digits}f}" if math.isfinite(std) else text  # 1 seed: no std


def fmt_num(value: Any, digits: int = 0) -> str:
    """A number with thousands separators, '–' when missing or not finite."""
    v = num(value)
    return f"{v:,.{digits}f}" if math.isfinite(v) else "–"


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] = ()) -> str:
    """A Markdown table; `align` per column: 'l' (the default) or 'r'."""

    def line(cells):
        return (
            "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )

    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align or ["l"] * len(head)) + "|"
    return "\n".join([line(head), rule, *map(line, rows)])


def link_text(text: str) -> str:
    """`text` safe inside a Markdown link."""
    return text.replace("[", "\\[").replace("]", "\\]")


def image(path: str, alt: str) -> str:
    """A Markdown image."""
    return f"![{link_text(alt)}]({path})"


# ----------------------------------------------------------------------------------------------
# Reading results


def _read_json(path: Path) -> dict | None:
    try:
        return io.read_json_object(path)
    except (OSError, ValueError):
        return None


@dataclass
class Row:
    """One configuration folder: its config.json and, when complete, its metrics.json."""

    experiment: str
    name: str
    dir: Path
    config: dict
    metrics: dict | None  # None: incomplete (no complete metrics.json)
    role: str | None = None  # as its sweep recorded it (see experiments.sweep.Spec)

    @classmethod
    def read(cls, run_dir: Path, role: str | None = None) -> Row:
        """The row of a configuration folder (incomplete when its metrics.json is missing)."""
        metrics = _read_json(run_dir / "metrics.json")
        config = _read_json(run_dir / "config.json") or {}
        done = metrics if metrics is not None and metrics.get("complete") else None
        return cls(run_dir.parent.name, run_dir.name, run_dir, config, done, role)

    @property
    def label(self) -> str:
        """The row's label in tables (its folder name if none was recorded)."""
        return str(self.config.get("label", self.name))

    @property
    def complete(self) -> bool:
        """Whether the folder holds finished results."""
        return self.metrics is not None

    @property
    def fingerprint(self) -> str | None:
        """The hash of what determines the row's numbers."""
        return self.config.get("fingerprint")

    @property
    def n_seeds(self) -> int:
        """How many seeds the row trained."""
        return len((self.metrics or {}).get("seeds") or self.config.get("seeds") or [])

    @property
    def fit(self) -> dict:
        """The fit diagnosis (`curves.diagnose`) of the saved history.json, so that a report
        always applies this code's criteria to the saved curves; the one stored in metrics.json
        when no history is saved."""
        history = _read_json(self.dir / "history.json")
        if not history or "val_loss" not in history:
            return (self.metrics or {}).get("fit_diagnosis") or {}
        optimizer = self.config.get("train_config", {}).get("optimizer") or {}
        return curves.diagnose(history, decayed=optimizer.get("schedule") == "wsd")

    def correct(self, split: str) -> np.ndarray | None:
        """Whether each seed's model got each image of `split` ("val" or "test") right: bool
        [n_seeds, n_images], from the saved predictions and labels (None if not saved)."""
        try:
            preds = np.load(self.dir / f"{split}_predictions.npy")
            with np.load(self.dir / "labels.npz") as labels:
                return preds == labels[split][None, :]
        except (OSError, KeyError, ValueError):
            return None


def compare_rows(a: Row, b: Row, split: str) -> dict | None:
    """`stats.compare` of two complete rows on `split`'s images (None if either lacks them)."""
    ca, cb = a.correct(split), b.correct(split)
    if ca is None or cb is None or ca.shape != cb.shape:
        return None
    return stats.compare(ca, cb)


@dataclass
class SweepResult:
    """A sweep folder: its title, rows in order, the choice (None before it is made, and for
    rows reported beside the sweeps, which carry a `note` instead), and what its choice.json
    recorded of its place in the study: `question` ("q1", "q2"; None if not recorded) and
    `position` (its order among that question's sweeps)."""

    name: str
    dir: Path
    title: str
    rows: list[Row]
    choice: dict | None
    overlays: list[str] = field(default_factory=list)
    note: str | None = None
    reference: str | None = None  # with a note: the row the others are compared with
    question: str | None = None
    position: int = 0


def read_sweep(sweep_dir: Path, names: Sequence[str] | None = None) -> SweepResult:
    """The rows of a sweep folder: `names` in order, else the order its choice.json recorded
    (then any other configuration folder, sorted)."""
    sweep_dir = Path(sweep_dir)
    recorded = _read_json(sweep_dir / CHOICE_JSON) or {}
    order = list(names if names is not None else recorded.get("rows", []))
    if names is None:
        order += sorted({p.parent.name for p in sweep_dir.glob("*/config.json")} - set(order))
    roles, position = recorded.get("roles") or {}, recorded.get("position")
    rows = [Row.read(sweep_dir / n, roles.get(n)) for n in order if (sweep_dir / n).is_dir()]
    return SweepResult(
        sweep_dir.name,
        sweep_dir,
        recorded.get("title") or sweep_dir.name,
        rows,
        recorded if recorded.get("choice") in {r.name for r in rows} else None,
        [p.name for p in sorted(sweep_dir.glob("sweep_*.png"))],
        recorded.get("note"),
        recorded.get("reference"),
        recorded.get("question"),
        position if isinstance(position, int) else 0,
    )


def distinct(rows: Sequence[Row]) -> list[Row]:
    """The complete rows, one per fingerprint (copies of an identical run dropped)."""
    seen, out = set(), []
    for r in rows:
        if r.complete and (r.fingerprint is None or r.fingerprint not in seen):
            seen.add(r.fingerprint)
            out.append(r)
    return out


# ----------------------------------------------------------------------------------------------
# The choice


def _val(row: Row) -> float:
    v = num(row.metrics["val_accuracy"]["mean"])
    return v if math.isfinite(v) else -math.inf


def choose(rows: Sequence[Row]) -> dict | None:
    """The complete row with the best mean validation accuracy (rows with a diverged seed only if
    every row has one; a compute-matched control, role "control", never), and how it compares
    with the runner-up on the validation images (`stats.compare`). None when no row is
    complete."""
    done = [r for r in rows if r.complete and r.role != "control"]
    ranked = sorted(
        [r for r in done if not r.metrics.get("n_diverged")] or done, key=lambda r: -_val(r)
    )
    if not ranked:
        return None
    best, m = ranked[0], ranked[0].metrics
    out = {"choice": best.name, "label": best.label}
    out.update(val=m["val_accuracy"], test=m["test_accuracy"])
    if len(ranked) > 1:
        out.update(
            runner_up=ranked[1].name,
            runner_up_label=ranked[1].label,
            comparison=compare_rows(best, ranked[1], "val"),
            method=stats.METHOD,
        )
    return out


def verdict_words(c: Mapping, scale: float = 100.0) -> str:
    """A comparison's verdict with its numbers: 'better, +0.42 points, 95% CI [...] over seeds
    and images, p = 0.010', fragility and, for a tie, the seeds that could settle it."""
    if "covers" not in c:  # a choice.json written by older code, with other statistics
        return f"{c.get('verdict')} (tested by older code: rerun the study to test it anew)"
    text = f"{c['verdict_text']}, {stats.describe(c, scale)}"
    if c["verdict"] == "not distinguishable":
        need = c.get("seeds_needed") or {}
        if (need.get("seeds") or 0) > c.get("n_seeds", 0):
            text += (
                f" (if this difference is real, about {need['seeds']} seeds per side would show it)"
            )
        elif need.get("why"):
            text += f" (more seeds would not settle it: {need['why']})"
    return text


def choice_text(choice: Mapping | None, markdown: bool = True) -> str:
    """The verdict of a sweep in words, worded by its statistics."""
    if not choice:
        return "No choice: no configuration is complete."
    b = "**" if markdown else ""
    text = (
        f"{b}Choice on validation: {link_text(str(choice['label']))}{b} (val "
        f"{fmt(choice['val'])}%, test {fmt(choice['test'])}%): the highest mean validation "
        "accuracy among the runs that did not diverge."
    )
    if "runner_up" in choice:
        c = choice.get("comparison")
        text += f" Against the runner-up, {link_text(str(choice['runner_up_label']))}, on the "
        if c is None:
            text += "validation images: no saved predictions to compare."
        elif c["verdict"] == "better":
            text += f"validation images: {verdict_words(c)}: the data support the choice."
        else:
            text += f"validation images: {verdict_words(c)}: with these seeds and images the "
            text += "choice is a tie-break."
    return text


# ----------------------------------------------------------------------------------------------
# Tables


def class_names_of(rows: Sequence[Row]) -> list[str]:
    """The class names, from the first complete row."""
    found = (list(r.metrics.get("per_class_test_accuracy", {})) for r in rows if r.complete)
    return next(found, [])


def diverged_cell(m: Mapping) -> str:
    """'0/3', or '⚠ 1/3 diverged'."""
    n_div, n = int(num(m.get("n_diverged", 0)) or 0), len(m.get("diverged", []))
    return f"⚠ {n_div}/{n} diverged" if n_div else f"0/{n}"


def train_time_cell(m: Mapping) -> str:
    """Wall seconds of training (all seeds together); Q2 rows: pretraining + fine-tuning."""
    return " + ".join(fmt_num(s.get("timing", {}).get("wall_s")) for s in _stages(m))


def steps_cell(m: Mapping) -> str:
    """Optimizer steps of one seed's run (all seeds take the same); Q2 rows: pretraining +
    fine-tuning."""
    return " + ".join(fmt_num((s.get("optimizer_steps") or [None])[0]) for s in _stages(m))


def _stages(m: Mapping) -> list[Mapping]:
    """A row's metrics per training stage: [pretraining, fine-tuning] for Q2 rows, else [m]."""
    return [m["pretrain"], m] if m.get("pretrain") else [m]


def delta_cell(row: Row, chosen: Row | None, mark: str = "**chosen**", split: str = "val") -> str:
    """The difference to the chosen (or reference) row on `split`'s images, points with 95% CI,
    and its verdict; `mark` on that row itself."""
    if chosen is None:
        return "–"
    if row.name == chosen.name:
        return mark
    return interval_cell(compare_rows(row, chosen, split))


def interval_cell(c: Mapping | None) -> str:
    """A comparison (`stats.compare`) in a table cell: '+0.80 [+0.16, +1.44], better'; '–'
    without one, or for one written by older code."""
    if not c or "covers" not in c:
        return "–"
    low, high = (num(v) * 100 for v in c["ci95"])
    return f"{num(c['difference']) * 100:+.2f} [{low:+.2f}, {high:+.2f}], {c['verdict_text']}"


def sweep_table(sweep: SweepResult, class_names: Sequence[str], prefix: str = "") -> str:
    """Accuracies (test, val, per class), the difference to the chosen row, train time and
    divergence, one row per configuration; links are `prefix` + the row's folder."""
    name = (sweep.choice or {}).get("choice") or sweep.reference
    chosen = next((r for r in sweep.rows if r.name == name and r.complete), None)
    # A sweep with a note compares its rows with its reference row, if it names one; else with none.
    compared = sweep.choice is not None or sweep.reference is not None
    which = "chosen" if sweep.choice else "reference"
    split = "val" if sweep.choice else "test"  # a note section makes no choice: test is reported
    head = ["configuration", "test acc %", "val acc %", *[f"{c} %" for c in class_names]]
    head += [f"Δ {split} vs {which}, points (95% CI)"] * compared
    head += ["optimizer steps", "train time s", "diverged"]
    rows = []
    for r in sweep.rows:
        if not r.complete:
            cells = [f"{link_text(r.label)} (`{prefix}{r.name}/`)", "incomplete: no metrics.json"]
            rows.append(cells + ["–"] * (len(head) - 2))
            continue
        m, pc = r.metrics, r.metrics.get("per_class_test_accuracy", {})
        rows.append(
            [
                f"[{link_text(r.label)}]({prefix}{r.name}/metrics.json)",
                fmt(m.get("test_accuracy")),
                fmt(m.get("val_accuracy")),
                *[fmt(pc.get(c), digits=1) for c in class_names],
                *[delta_cell(r, chosen, f"**{which}**", split)] * compared,
                steps_cell(m),
                train_time_cell(m),
                diverged_cell(m),
            ]
        )
    return md_table(
        head, rows, ["l", "r", "r", *["r"] * len(class_names), *["l"] * compared, "r", "r", "l"]
    )


def _mean_se(d: Mapping, key: str, se_key: str) -> str:
    """'mean ± t·SE' of a diagnosis' number (its half-width at 95%), '–' when undefined."""
    value, se, t = num(d.get(key)), num(d.get(se_key)), num(d.get("t"))
    if not math.isfinite(value):
        return "–"
    return f"{value:+.4f} ± {t * se:.4f}" if math.isfinite(se * t) else f"{value:+.4f}"


FIT_HEAD = (
    "configuration|epochs|fit|val loss slope per epoch, last epochs (± t·SE)|best val epoch|"
    "val loss rise from it (± t·SE)|val − train loss|train − val acc, points|final train acc %|"
    "val-loss roughness"
).split("|")
PRETRAIN_HEAD = (
    "params (autoencoder)|pretraining fit|test recon MSE|noisy-input MSE|dead outputs (of 784)"
).split("|")


def diagnosis_table(sweep: SweepResult) -> str:
    """Fit verdicts with the numbers behind them (`fmnist_jax.curves.diagnose`), and for
    Question 2 the pretraining's fit, reconstruction MSE against the noisy input's, and its
    dead output units."""
    q2 = sweep.question == "q2"
    rows = []
    for r in (r for r in sweep.rows if r.complete):
        m, d = r.metrics, r.fit
        decayed = " (rate decayed to 0)" if d.get("learning_rate_decayed") else ""
        cells = [
            link_text(r.label),
            str(m.get("epochs_run", "–")),
            str(d.get("verdict", "–")) + decayed,
            _mean_se(d, "val_loss_slope", "val_loss_slope_se"),
            str(d.get("best_val_epoch", "–")),
            _mean_se(d, "val_loss_rise_from_min", "val_loss_rise_se"),
            fmt_num(d.get("final_val_minus_train_loss"), 3),
            fmt_num(d.get("train_minus_val_accuracy_points"), 2),
            fmt_num(num(d.get("final_train_accuracy")) * 100, 2),
            fmt(m.get("val_loss_roughness"), scale=1.0, digits=4),
        ]
        pre = m.get("pretrain")
        if q2 and pre:
            cells += [
                fmt_num(pre.get("n_params")),
                str(pre.get("fit_diagnosis", {}).get("verdict", "–")),
                fmt(pre.get("test_mse"), scale=1.0, digits=4),
                fmt(pre.get("test_noisy_mse"), scale=1.0, digits=4),
                fmt(pre.get("dead_outputs"), scale=1.0, digits=1),
            ]
        elif q2:
            cells += ["– (no pretraining)", "–", "–", "–", "–"]
        rows.append(cells)
    return md_table(FIT_HEAD + PRETRAIN_HEAD * q2, rows)


def divergence_lines(rows: Sequence[Row]) -> list[str]:
    """A warning naming every configuration with a diverged (NaN/inf) seed ([] if none)."""
    bad = [r for r in rows if r.complete and r.metrics.get("n_diverged")]
    if not bad:
        return []
    names = "; ".join(
        f"{r.label} ({r.metrics['n_diverged']}/{len(r.metrics.get('diverged', []))} seeds)"
        for r in bad
    )
    return [
        f"**Diverged** (the training or validation loss became NaN/inf; such a seed's numbers "
        f"are meaningless, it trains on with the others until every seed has diverged, and a "
        f"configuration with a diverged seed is not chosen unless all are): {names}.",
        "",
    ]


def comparison_lines(sweep: SweepResult) -> list[str]:
    """The sentences beside a sweep's choice: a compute-matched control against the row of the
    original recipe (validation images, as the choice), and a note section's rows against its
    reference row (test images: such a section makes no choice)."""
    done = {r.role or r.name: r for r in sweep.rows if r.complete}
    lines = []
    original = done.get("original")
    for control in (r for r in sweep.rows if r.complete and r.role == "control" and original):
        c = compare_rows(original, control, "val")
        if c is not None:
            lines.append(
                f"**Compute-matched control.** {link_text(original.label)} against "
                f"{link_text(control.label)}, the same number of optimizer steps "
                f"({steps_cell(original.metrics)} vs {steps_cell(control.metrics)}), on the "
                f"validation images: {verdict_words(c)}. This separates what augmentation adds "
                "from what more steps add."
            )
    reference = next((r for r in sweep.rows if r.name == sweep.reference and r.complete), None)
    if sweep.note and reference is not None:
        for r in (r for r in sweep.rows if r.complete and r is not reference):
            c = compare_rows(reference, r, "test")
            if c is not None:
                lines.append(
                    f"**On the test images**, {link_text(reference.label)} against "
                    f"{link_text(r.label)}: {verdict_words(c)}."
                )
    return [" ".join(lines), ""] if lines else []


def sweep_section(sweep: SweepResult, class_names: Sequence[str], prefix: str = "") -> list[str]:
    """The Markdown lines that present a sweep (summary.md's body, and REPORT.md's section);
    every path is `prefix` + a path relative to the sweep folder."""
    recon = (
        " and reconstruction (test MSE of the reconstruction vs. of the noisy input itself, "
        "against the clean image)"
    )
    lines = [
        f"{max((r.n_seeds for r in sweep.rows), default=0)} seeds per configuration, "
        "accuracies in % as mean ± std over seeds"
        + ("." if sweep.note else "; chosen on the validation split, test reported."),
        "",
        sweep_table(sweep, class_names, prefix),
        "",
        *divergence_lines(sweep.rows),
        sweep.note or choice_text(sweep.choice),
        "",
        *comparison_lines(sweep),
        f"Fit diagnosis{recon if sweep.question == 'q2' else ''}:",
        "",
        diagnosis_table(sweep),
        "",
    ]
    if sweep.overlays:
        overlays = (image(f"{prefix}{f}", f"{sweep.title}: {f}") for f in sweep.overlays)
        lines += [" ".join(overlays), ""]
    lines += ["<details><summary>Per-configuration figures</summary>", ""]
    for r in sweep.rows:
        figs = [(f, t) for f, t in ROW_FIGURES if (r.dir / f).is_file()]
        if figs:
            lines += [
                f"**{link_text(r.label)}** (`{prefix}{r.name}/`)",
                "",
                " ".join(image(f"{prefix}{r.name}/{f}", f"{r.label}: {t}") for f, t in figs),
                "",
            ]
    return lines + ["</details>", ""]


def write_summary(sweep_dir: Path, recorded: Mapping) -> tuple[str, list[str]]:
    """Write a finished sweep's choice.json (`recorded`, then the choice), its overlay figures
    of the validation curves, and summary.md. -> (its verdict in words, warnings to print).

    `recorded`: what the sweep's definition says of it: `title`, `rows` (folder names, in
    order), and where they apply `question`, `position`, `roles` ({row: role}), `note` and
    `reference` (see `SweepResult`). With a `note`, no choice is made on the rows (a tuned
    recipe, the value of pretraining): the note says why, and the rows are compared with the
    `reference` row."""
    sweep_dir, title, note = Path(sweep_dir), recorded["title"], recorded.get("note")
    roles = recorded.get("roles") or {}
    rows = [
        replace(r, role=roles.get(r.name)) for r in read_sweep(sweep_dir, recorded["rows"]).rows
    ]
    choice = None if note else choose(rows)
    io.write_json(sweep_dir / CHOICE_JSON, {**recorded, **(choice or {})})
    histories = {r.label: io.read_json(r.dir / "history.json") for r in rows if r.complete}
    for metric in CURVE_METRICS:
        plots.overlay_curves(
            histories,
            sweep_dir / f"sweep_{metric}.png",
            title=f"{title}: {metric.replace('_', ' ')}",
            metric=metric,
        )
    sweep = read_sweep(sweep_dir, recorded["rows"])
    body = [f"# {title}", "", *sweep_section(sweep, class_names_of(sweep.rows))]
    io.write_text(sweep_dir / "summary.md", "\n".join(body).rstrip() + "\n")
    warnings = [line.replace("**", "") for line in divergence_lines(rows) if line]
    return note or choice_text(choice, markdown=False), warnings
