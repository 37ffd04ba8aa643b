"""Figures for the results: learning curves, overlays, confusion matrices, image rows, bars.

Everything uses `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no
global backend state, safe in worker processes and headless machines. Every figure is
written atomically through `fmnist_jax.io.atomic_path` (a crash never leaves a truncated
PNG under the final name) and the written `Path` is returned.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fmnist_jax.io import atomic_path

DPI = 110

_SET_STYLE = {
    "train": {"color": "tab:blue", "linestyle": "-"},
    "val": {"color": "tab:orange", "linestyle": "-"},
    "test": {"color": "tab:green", "linestyle": "-"},
    "val_noisy": {"color": "tab:orange", "linestyle": "--"},
    "test_noisy": {"color": "tab:green", "linestyle": "--"},
}
_EXTRA_COLORS = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive"]

_DEFAULT_YLABELS = {"loss": "loss", "accuracy": "accuracy"}


# --------------------------------------------------------------------------- helpers


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: str | os.PathLike | None) -> Path | Figure:
    """Write `fig` as PNG to `path` atomically and return the path; with no path, return the
    figure itself (to inspect it)."""
    if path is None:
        return fig
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _to_float(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"history value {v!r} is not a number") from exc


def _seed_matrix(per_seed: Any, name: str = "curve") -> np.ndarray:
    """Per-seed per-epoch values -> float array [n_seeds, max_epochs], ragged padded with NaN.

    Accepts a list of per-seed lists, a 2-D array, or a single flat list (one seed).
    Strings like "nan"/"inf" (as written by `io.write_json`) become floats.
    """
    if isinstance(per_seed, np.ndarray):
        arr = np.asarray(per_seed, dtype=float)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(
                f"{name}: expected per-seed per-epoch values (2-D), got shape {arr.shape}"
            )
        return arr
    if not isinstance(per_seed, Sequence) or isinstance(per_seed, (str, bytes)):
        raise ValueError(
            f"{name}: expected a list of per-seed lists, got {type(per_seed).__name__}"
        )
    seqs = list(per_seed)
    if seqs and not any(
        isinstance(s, (Sequence, np.ndarray)) and not isinstance(s, (str, bytes)) for s in seqs
    ):
        seqs = [seqs]  # a single seed given as a flat list
    rows = []
    for s in seqs:
        if isinstance(s, (str, bytes)) or not isinstance(s, (Sequence, np.ndarray)):
            raise ValueError(f"{name}: every seed must be a list of per-epoch values, got {s!r}")
        rows.append([_to_float(v) for v in np.asarray(s, dtype=object).ravel()])
    n_ep = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), n_ep), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _n_diverged(raw: np.ndarray, lengths: np.ndarray | None = None) -> int:
    """Seeds with any non-finite value among their recorded epochs."""
    return int(np.sum(~np.all(np.isfinite(raw) | _padding_mask(raw, lengths), axis=1)))


def _padding_mask(raw: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    mask = np.zeros_like(raw, dtype=bool)
    if lengths is not None:
        for i, n in enumerate(lengths):
            mask[i, n:] = True
    return mask


def _seed_lengths(per_seed: Any) -> np.ndarray | None:
    try:
        seqs = list(per_seed)
        if seqs and all(
            isinstance(s, (Sequence, np.ndarray)) and not isinstance(s, (str, bytes)) for s in seqs
        ):
            return np.array([len(s) for s in seqs])
    except TypeError:
        pass
    return None


def _stats(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs 1-based, nan-mean, nan-std) over seeds, ignoring non-finite values."""
    finite = np.where(np.isfinite(raw), raw, np.nan)
    n_ep = finite.shape[1]
    mean = np.full(n_ep, np.nan)
    std = np.full(n_ep, np.nan)
    counts = np.sum(np.isfinite(finite), axis=0)
    ok = counts > 0
    if np.any(ok):
        mean[ok] = np.nanmean(finite[:, ok], axis=0)
        std[ok] = np.nanstd(finite[:, ok], axis=0)
    return np.arange(1, n_ep + 1), mean, std


def _plot_mean_band(
    ax, raw: np.ndarray, label: str, color, linestyle="-", per_seed_lines=True
) -> bool:
    """Mean line + mean±std band (+ thin per-seed lines for few seeds). False if nothing finite."""
    epochs, mean, std = _stats(raw)
    if not np.any(np.isfinite(mean)):
        ax.plot([], [], color=color, linestyle=linestyle, label=f"{label} (no finite values)")
        return False
    marker = "o" if np.sum(np.isfinite(mean)) <= 3 else None
    ax.plot(
        epochs,
        mean,
        color=color,
        linestyle=linestyle,
        linewidth=1.8,
        marker=marker,
        markersize=4,
        label=label,
    )
    if raw.shape[0] > 1:
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)
        if raw.shape[0] <= 5 and per_seed_lines:
            finite = np.where(np.isfinite(raw), raw, np.nan)
            for row in finite:
                ax.plot(epochs, row, color=color, linestyle=linestyle, linewidth=0.6, alpha=0.35)
    return True


# --------------------------------------------------------------------------- learning curves


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
    Missing metrics/sets are skipped.

    Raises:
      ValueError: nothing at all is plottable.
    """
    if not isinstance(history, Mapping):
        raise ValueError(
            f"history must be a dict name -> per-seed lists, got {type(history).__name__}"
        )
    labels = dict(_DEFAULT_YLABELS)
    labels.update(ylabels or {})
    panels = []  # (metric, [(set, raw, lengths)])
    n_seeds = 0
    for metric in metrics:
        lines = []
        for s in sets:
            key = f"{s}_{metric}"
            if key not in history:
                continue
            raw = _seed_matrix(history[key], key)
            if raw.size == 0:
                continue
            lines.append((s, raw, _seed_lengths(history[key])))
            n_seeds = max(n_seeds, raw.shape[0])
        if lines:
            panels.append((metric, lines))
    if not panels:
        raise ValueError(
            f"history has no curves for metrics {tuple(metrics)} x sets {tuple(sets)}; "
            f"keys present: {sorted(history)}"
        )

    fig = _new_figure((5.0 * len(panels) + 0.4, 3.9))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, lines) in zip(axes, panels):
        extra = iter(_EXTRA_COLORS)
        for s, raw, lengths in lines:
            style = _SET_STYLE.get(s) or {"color": next(extra, "black"), "linestyle": "-"}
            k = _n_diverged(raw, lengths)
            label = s.replace("_", " ") + (f" ({k} diverged)" if k else "")
            _plot_mean_band(ax, raw, label, style["color"], style["linestyle"])
        ax.set_xlabel("epoch")
        ax.set_ylabel(labels.get(metric, metric))
        ax.set_title(metric.replace("_", " "))
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="best")
    seeds = f"{n_seeds} seed" + ("s" if n_seeds != 1 else "")
    band = ", mean ± std" if n_seeds > 1 else ""
    fig.suptitle(f"{title} ({seeds}{band})")
    return _finish(fig, path)


# --------------------------------------------------------------------------- overlay


def overlay_curves(
    curves: dict[str, dict],
    path,
    *,
    title: str,
    metric: str = "val_accuracy",
    ylabel: str | None = None,
) -> Path | Figure:
    """One mean line + band per configuration for `metric` (configs may differ in epochs).
    Configurations without `metric` are skipped.

    Raises:
      ValueError: no configuration has `metric`.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict config label -> history")
    series = []
    for label, hist in curves.items():
        if not isinstance(hist, Mapping) or metric not in hist:
            continue
        raw = _seed_matrix(hist[metric], f"{label}:{metric}")
        if raw.size == 0:
            continue
        series.append((str(label), raw, _seed_lengths(hist[metric])))
    if not series:
        raise ValueError(f"no configuration has the curve {metric!r}")

    fig = _new_figure((7.0, 4.2))
    ax = fig.subplots()
    colors = [f"C{i}" for i in range(10)]
    styles = ["-", "--", "-.", ":"]
    n_max = 0
    for i, (label, raw, lengths) in enumerate(series):
        n_max = max(n_max, raw.shape[0])
        k = _n_diverged(raw, lengths)
        full = f"{label} (n={raw.shape[0]})" + (f" ({k} diverged)" if k else "")
        _plot_mean_band(ax, raw, full, colors[i % 10], styles[(i // 10) % 4], per_seed_lines=False)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel or metric.replace("_", " "))
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="best", ncol=2 if len(series) > 6 else 1)
    band = ", mean ± std over seeds" if n_max > 1 else ""
    ax.set_title(f"{title}{band}")
    return _finish(fig, path)


# --------------------------------------------------------------------------- confusion matrix


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
    cbar = fig.colorbar(im, ax=ax, shrink=0.85)
    cbar.set_label("fraction of true class" if normalise else "count")
    fontsize = 9 if c <= 6 else 7 if c <= 10 else 5
    for i in range(c):
        for j in range(c):
            if normalise:
                text = f"{100 * frac[i, j]:.1f}%\n({int(round(cm[i, j]))})"
            else:
                text = (
                    f"{int(round(cm[i, j]))}" if float(cm[i, j]).is_integer() else f"{cm[i, j]:.1f}"
                )
            dark = shown[i, j] / vmax > 0.55
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(c), labels=names, rotation=30, ha="right")
    ax.set_yticks(range(c), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(round(cm.sum()))
    acc = np.trace(cm) / cm.sum() if cm.sum() > 0 else float("nan")
    what = "row-normalised" if normalise else "counts"
    ax.set_title(f"{title}\n({what}; n={total}, accuracy {100 * acc:.1f}%)", fontsize=10)
    return _finish(fig, path)


# --------------------------------------------------------------------------- denoising rows


def _as_images(x, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim < 2 or a.size != len(a) * 784:
        raise ValueError(
            f"{what}: expected images [n, 28, 28], [n, 784] or [n, 28, 28, 1], got shape {np.shape(x)}"
        )
    return a.reshape(len(a), 28, 28)


def denoising_rows(
    noisy, reconstructed, clean, path, *, title: str, labels: list[str] | None = None
) -> Path | Figure:
    """Three rows (noisy input / reconstruction / clean target) of n greyscale images
    (vmin 0, vmax 1, no ticks); column titles from `labels`.

    Raises:
      ValueError: mismatched image counts or sizes, or as many labels as images.
    """
    rows = [
        ("noisy input", _as_images(noisy, "noisy")),
        ("reconstruction", _as_images(reconstructed, "reconstructed")),
        ("clean target", _as_images(clean, "clean")),
    ]
    counts = {name: imgs.shape[0] for name, imgs in rows}
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"noisy/reconstructed/clean must hold the same number of images, got {counts}"
        )
    shapes = {name: imgs.shape[1:] for name, imgs in rows}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"noisy/reconstructed/clean images differ in size: {shapes}")
    n = counts["noisy input"]
    if n == 0:
        raise ValueError("no images to plot")
    if labels is not None:
        labels = [str(s) for s in labels]
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} images")

    fig = _new_figure((max(1.25 * n + 1.0, 4.0), 4.6))
    axes = fig.subplots(3, n, squeeze=False)
    for r, (row_name, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[r, j]
            ax.imshow(
                np.nan_to_num(imgs[j], nan=0.0),
                cmap="gray",
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(row_name, fontsize=9)
            if r == 0 and labels is not None:
                ax.set_title(labels[j], fontsize=9)
    fig.suptitle(title)
    return _finish(fig, path)


# --------------------------------------------------------------------------- bar comparison


def _mean_std(v: Any, where: str) -> tuple[float, float]:
    if isinstance(v, Mapping):
        if "mean" not in v:
            raise ValueError(f"{where}: expected (mean, std) or {{'mean', 'std'}}, got {v!r}")
        m, s = v["mean"], v.get("std", 0.0)
    elif isinstance(v, (tuple, list, np.ndarray)):
        if len(v) != 2:
            raise ValueError(f"{where}: expected (mean, std), got {v!r}")
        m, s = v
    else:
        m, s = v, 0.0
    m, s = _to_float(m), _to_float(s)
    if not math.isfinite(s):
        s = 0.0
    return m, abs(s)


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
    categories: list[str] = []
    for label, cats in groups.items():
        if not isinstance(cats, Mapping):
            raise ValueError(f"groups[{label!r}] must be a dict category -> (mean, std)")
        for c in cats:
            if c not in categories:
                categories.append(c)
    if not categories:
        raise ValueError("groups hold no categories")
    series = []
    for label, cats in groups.items():
        vals = [
            (_mean_std(cats[c], f"{label}/{c}") if c in cats else (math.nan, 0.0))
            for c in categories
        ]
        series.append((str(label), np.array([v[0] for v in vals]), np.array([v[1] for v in vals])))

    n_s, n_c = len(series), len(categories)
    width = 0.8 / n_s
    x = np.arange(n_c)
    fig = _new_figure((max(5.0, 1.0 + n_c * (0.35 * n_s + 0.5)), 4.2))
    ax = fig.subplots()
    for i, (label, means, stds) in enumerate(series):
        pos = x - 0.4 + width * (i + 0.5)
        ok = np.isfinite(means)
        ax.bar(
            pos[ok],
            means[ok],
            width * 0.95,
            yerr=stds[ok],
            capsize=3,
            label=label,
            color=f"C{i}",
            edgecolor="black",
            linewidth=0.5,
            error_kw={"linewidth": 0.9},
        )

    all_m = np.concatenate([m for _, m, _ in series])
    all_s = np.concatenate([s for _, _, s in series])
    ok = np.isfinite(all_m)
    if np.any(ok):
        lo = float(np.min(all_m[ok] - all_s[ok]))
        hi = float(np.max(all_m[ok] + all_s[ok]))
        span = max(hi - lo, 0.05)
        bottom = lo - 0.2 * span
        top = hi + 0.08 * span
        if np.all((all_m[ok] >= 0) & (all_m[ok] <= 1)) and np.max(all_m[ok]) >= 0.5:
            # accuracy-like: view up to 1.0
            bottom = max(0.0, bottom)
            top = 1.0 if hi <= 1.0 else top
        elif lo >= 0:
            bottom = max(0.0, bottom)
        ax.set_ylim(bottom, top)
    ax.set_xticks(
        x,
        labels=[str(c) for c in categories],
        rotation=20 if n_c > 5 else 0,
        ha="right" if n_c > 5 else "center",
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _finish(fig, path)
