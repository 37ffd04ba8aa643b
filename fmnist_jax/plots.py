"""Figures for the results: learning curves, overlays, confusion matrices, image rows, bars.

Everything uses `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no global
backend state, safe in worker processes and headless machines. With a path, a figure is written
as PNG atomically through `fmnist_jax.io.atomic_path` (a crash never leaves a truncated PNG
under the final name) and the path is returned; with `path=None` the `Figure` itself is.

History format (shared across the project)::

    history: dict[str, list[list[float]]]   # "<set>_<metric>" -> per seed -> per epoch

Values may be NaN/inf (a diverged seed), or the strings "nan"/"inf"/"-inf" (how
`io.write_json` stores them); seeds may have different lengths. Non-finite values are
ignored in the mean and std, and a curve whose seeds contain any non-finite value says
"(k diverged)" in its legend entry.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fmnist_jax.io import atomic_path

DPI = 110

_SET_STYLE = {
    "train": ("tab:blue", "-"),
    "val": ("tab:orange", "-"),
    "test": ("tab:green", "-"),
    "val_noisy": ("tab:orange", "--"),
    "test_noisy": ("tab:green", "--"),
}
_EXTRA_COLORS = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive"]


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: str | os.PathLike | None) -> Path | Figure:
    if path is None:
        return fig
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _to_float(v: Any) -> float:
    try:
        return math.nan if v is None else float(v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"history value {v!r} is not a number") from exc


def _seeds(per_seed: Any, name: str) -> tuple[np.ndarray, int]:
    """Per-seed per-epoch values -> (float array [n_seeds, max_epochs], ragged seeds padded with
    NaN; the number of seeds with a non-finite value among their own epochs)."""
    try:
        rows = [[_to_float(v) for v in seed] for seed in per_seed]
    except TypeError:
        raise ValueError(f"{name}: expected a list of per-seed lists of per-epoch values") from None
    out = np.full((len(rows), max(map(len, rows), default=0)), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out, sum(not np.all(np.isfinite(row)) for row in rows)


def _plot_mean_band(ax, raw: np.ndarray, label: str, style, per_seed_lines=True) -> None:
    """Mean line + mean±std band over seeds, ignoring non-finite values (+ thin per-seed lines
    for up to 5 seeds)."""
    line = {"color": style[0], "linestyle": style[1]}
    finite = np.where(np.isfinite(raw), raw, np.nan)
    epochs, (mean, std) = np.arange(1, raw.shape[1] + 1), np.full((2, raw.shape[1]), np.nan)
    ok = np.any(np.isfinite(finite), axis=0)
    if not np.any(ok):
        ax.plot([], [], **line, label=f"{label} (no finite values)")
        return
    mean[ok], std[ok] = np.nanmean(finite[:, ok], axis=0), np.nanstd(finite[:, ok], axis=0)
    marker = "o" if np.sum(ok) <= 3 else None
    ax.plot(epochs, mean, **line, linewidth=1.8, marker=marker, markersize=4, label=label)
    if raw.shape[0] > 1:
        ax.fill_between(epochs, mean - std, mean + std, color=style[0], alpha=0.18, linewidth=0)
        if raw.shape[0] <= 5 and per_seed_lines:
            for row in finite:
                ax.plot(epochs, row, **line, linewidth=0.6, alpha=0.35)


def _epoch_axes(ax, ylabel: str, **legend) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="best", **legend)


def _diverged(label: str, k: int) -> str:
    return label + (f" ({k} diverged)" if k else "")


def learning_curves(
    history,
    path,
    *,
    title: str,
    metrics=("loss", "accuracy"),
    sets=("train", "val", "test"),
    ylabels: dict | None = None,
) -> Path | Figure:
    """One panel per metric present in `history`; per set the mean over seeds vs epoch
    (1-based) with a mean ± std band (and thin per-seed lines when there are <= 5 seeds).
    Missing metrics/sets are skipped; `ylabels` maps a metric to its axis label.

    Raises:
      ValueError: nothing at all is plottable.
    """
    if not isinstance(history, Mapping):
        raise ValueError(
            f"history must be a dict name -> per-seed lists, got {type(history).__name__}"
        )
    ylabels = {"loss": "loss", "accuracy": "accuracy", **(ylabels or {})}
    panels = {}  # metric -> [(set, raw, diverged)]
    for metric in metrics:
        keys = [(s, f"{s}_{metric}") for s in sets if f"{s}_{metric}" in history]
        lines = [(s, *_seeds(history[key], key)) for s, key in keys]
        if lines := [line for line in lines if line[1].size]:
            panels[metric] = lines
    if not panels:
        raise ValueError(
            f"history has no curves for metrics {tuple(metrics)} x sets {tuple(sets)}; "
            f"keys present: {sorted(history)}"
        )
    n_seeds = max(raw.shape[0] for lines in panels.values() for _, raw, _ in lines)

    fig = _new_figure((5.0 * len(panels) + 0.4, 3.9))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, lines) in zip(axes, panels.items(), strict=True):
        extra = iter(_EXTRA_COLORS)
        for s, raw, k in lines:
            style = _SET_STYLE.get(s) or (next(extra, "black"), "-")
            _plot_mean_band(ax, raw, _diverged(s.replace("_", " "), k), style)
        ax.set_title(metric.replace("_", " "))
        _epoch_axes(ax, ylabels.get(metric, metric))
    band = ", mean ± std" if n_seeds > 1 else ""
    fig.suptitle(f"{title} ({n_seeds} seed{'s' * (n_seeds != 1)}{band})")
    return _finish(fig, path)


def overlay_curves(
    curves: dict[str, dict], path, *, title: str, metric: str = "val_accuracy"
) -> Path | Figure:
    """One mean line + band per configuration (label -> history) for `metric`; configurations
    may differ in epochs, and those without `metric` are skipped.

    Raises:
      ValueError: no configuration has `metric`.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict config label -> history")
    series = [
        (str(label), *_seeds(hist[metric], f"{label}:{metric}"))
        for label, hist in curves.items()
        if isinstance(hist, Mapping) and metric in hist
    ]
    if not (series := [s for s in series if s[1].size]):
        raise ValueError(f"no configuration has the curve {metric!r}")

    fig = _new_figure((7.0, 4.2))
    ax = fig.subplots()
    for i, (label, raw, k) in enumerate(series):
        style = (f"C{i % 10}", ["-", "--", "-.", ":"][(i // 10) % 4])
        _plot_mean_band(ax, raw, _diverged(f"{label} (n={raw.shape[0]})", k), style, False)
    _epoch_axes(ax, metric.replace("_", " "), ncol=2 if len(series) > 6 else 1)
    band = ", mean ± std over seeds" if max(raw.shape[0] for _, raw, _ in series) > 1 else ""
    ax.set_title(f"{title}{band}")
    return _finish(fig, path)


def confusion_matrix(cm, class_names, path, *, title: str, normalise: bool = True) -> Path | Figure:
    """Heatmap of `cm` (rows true, cols predicted) with per-cell text: row-normalised %
    (and the count) if `normalise`, else counts.

    Raises:
      ValueError: a non-square matrix, negative counts, or a class-name count mismatch.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    names = [str(c) for c in class_names]
    if len(names) != cm.shape[0]:
        raise ValueError(
            f"{len(names)} class names for a {cm.shape[0]}x{cm.shape[0]} confusion matrix"
        )
    cm = cm.astype(float)
    if not np.all(np.isfinite(cm)) or np.any(cm < 0):
        raise ValueError("confusion matrix must hold finite, non-negative counts")
    c = cm.shape[0]
    row_sums = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, row_sums, out=np.zeros_like(cm), where=row_sums > 0)
    shown = frac if normalise else cm
    vmax = 1.0 if normalise else max(float(cm.max()), 1.0)

    side = max(4.2, 0.9 * c + 2.2)
    fig = _new_figure((side + 0.8, side))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax, shrink=0.85).set_label(
        "fraction of true class" if normalise else "count"
    )
    fontsize = 9 if c <= 6 else 7 if c <= 10 else 5
    for (i, j), n in np.ndenumerate(cm):
        count = f"{int(round(n))}" if n.is_integer() or normalise else f"{n:.1f}"
        text = f"{100 * frac[i, j]:.1f}%\n({count})" if normalise else count
        color = "white" if shown[i, j] / vmax > 0.55 else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
    ax.set_xticks(range(c), labels=names, rotation=30, ha="right")
    ax.set_yticks(range(c), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / cm.sum() if cm.sum() > 0 else float("nan")
    what = "row-normalised" if normalise else "counts"
    n = int(round(cm.sum()))
    ax.set_title(f"{title}\n({what}; n={n}, accuracy {100 * acc:.1f}%)", fontsize=10)
    return _finish(fig, path)


def denoising_rows(
    noisy, reconstructed, clean, path, *, title: str, labels: list[str] | None = None
) -> Path | Figure:
    """Three rows (noisy input / reconstruction / clean target) of n greyscale images, each
    [n, 28, 28], [n, 784] or [n, 28, 28, 1] in [0, 1] (vmin 0, vmax 1, no ticks); column
    titles from `labels`.

    Raises:
      ValueError: another shape, mismatched image counts, or not as many labels as images.
    """
    rows = {}
    names = ("noisy input", "reconstruction", "clean target")
    for name, x in zip(names, (noisy, reconstructed, clean), strict=True):
        a = np.asarray(x, dtype=float)
        if a.ndim < 2 or a.size != len(a) * 784:
            raise ValueError(
                f"{name}: expected images [n, 28, 28], [n, 784] or [n, 28, 28, 1], "
                f"got shape {np.shape(x)}"
            )
        rows[name] = a.reshape(len(a), 28, 28)
    counts = {name: len(imgs) for name, imgs in rows.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"noisy/reconstructed/clean must hold the same number of images, got {counts}"
        )
    n = counts["noisy input"]
    if n == 0:
        raise ValueError("no images to plot")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")

    fig = _new_figure((max(1.25 * n + 1.0, 4.0), 4.6))
    axes = fig.subplots(3, n, squeeze=False)
    image = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0, "interpolation": "nearest"}
    for r, (row_name, imgs) in enumerate(rows.items()):
        for j, ax in enumerate(axes[r]):
            ax.imshow(np.nan_to_num(imgs[j], nan=0.0), **image)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(row_name, fontsize=9)
            if r == 0 and labels is not None:
                ax.set_title(str(labels[j]), fontsize=9)
    fig.suptitle(title)
    return _finish(fig, path)


def _mean_std(cats: Mapping, c: str, label: str) -> tuple[float, float]:
    """Category `c` of series `label` as (mean, std); a missing one is (NaN, 0)."""
    v, where = cats.get(c, math.nan), f"{label}/{c}"
    if isinstance(v, Mapping) and "mean" in v:
        m, s = v["mean"], v.get("std", 0.0)
    elif isinstance(v, (tuple, list, np.ndarray)) and len(v) == 2:
        m, s = v
    elif isinstance(v, (Mapping, tuple, list, np.ndarray)):
        raise ValueError(f"{where}: expected (mean, std) or {{'mean', 'std'}}, got {v!r}")
    else:
        m, s = v, 0.0
    m, s = _to_float(m), _to_float(s)
    return m, abs(s) if math.isfinite(s) else 0.0


def bar_comparison(
    groups: dict[str, dict[str, tuple[float, float]]], path, *, title: str, ylabel: str
) -> Path | Figure:
    """Grouped bars (one colour per series, one group per category) with ±std error bars;
    the y axis is zoomed to the data (up to 1.0 for accuracy-like values in [0, 1]).
    Values may be (mean, std) tuples, {"mean", "std"} dicts, or bare numbers.

    Raises:
      ValueError: no groups or categories, or a value that is not (mean, std).
    """
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError("groups must be a non-empty dict series label -> {category: (mean, std)}")
    for label, cats in groups.items():
        if not isinstance(cats, Mapping):
            raise ValueError(f"groups[{label!r}] must be a dict category -> (mean, std)")
    categories = list(dict.fromkeys(c for cats in groups.values() for c in cats))
    if not categories:
        raise ValueError("groups hold no categories")
    values = np.array(  # [series, category, (mean, std)]
        [[_mean_std(cats, c, label) for c in categories] for label, cats in groups.items()]
    )

    n_s, n_c = len(groups), len(categories)
    width = 0.8 / n_s
    x = np.arange(n_c)
    fig = _new_figure((max(5.0, 1.0 + n_c * (0.35 * n_s + 0.5)), 4.2))
    ax = fig.subplots()
    bar = {"capsize": 3, "edgecolor": "black", "linewidth": 0.5, "error_kw": {"linewidth": 0.9}}
    for i, (label, (means, stds)) in enumerate(zip(groups, values.transpose(0, 2, 1), strict=True)):
        pos, ok = x - 0.4 + width * (i + 0.5), np.isfinite(means)
        ax.bar(
            pos[ok], means[ok], width * 0.95, yerr=stds[ok], label=str(label), color=f"C{i}", **bar
        )

    means, stds = values[..., 0].ravel(), values[..., 1].ravel()
    if np.any(ok := np.isfinite(means)):
        means, stds = means[ok], stds[ok]
        lo, hi = float(np.min(means - stds)), float(np.max(means + stds))
        span = max(hi - lo, 0.05)
        bottom, top = lo - 0.2 * span, hi + 0.08 * span
        if np.all((means >= 0) & (means <= 1)) and np.max(means) >= 0.5:
            bottom, top = max(0.0, bottom), 1.0 if hi <= 1.0 else top  # accuracy-like: up to 1
        elif lo >= 0:
            bottom = max(0.0, bottom)
        ax.set_ylim(bottom, top)
    rotation, ha = (20, "right") if n_c > 5 else (0, "center")
    ax.set_xticks(x, labels=[str(c) for c in categories], rotation=rotation, ha=ha)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _finish(fig, path)
