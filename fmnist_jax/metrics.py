"""Classification metrics: an on-device confusion matrix and sklearn-compatible reports.

``confusion_matrix`` is pure JAX (jittable, vmappable over a seeds axis). Everything
else works on the small host-side ``[C, C]`` (or ``[S, C, C]``) count matrix and
reproduces ``sklearn.metrics.precision_recall_fscore_support`` / ``classification_report``
with sklearn's default ``zero_division="warn"`` convention (an undefined ratio is 0.0,
but no warning is raised here). Rows of a confusion matrix are true classes, columns
predicted classes.

A report built from a confusion matrix always covers all ``C`` classes; it equals
sklearn's report for ``labels=range(C)`` (which is sklearn's default whenever every
class occurs in ``y_true`` or ``y_pred``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_HEADERS = ("precision", "recall", "f1-score", "support")


def confusion_matrix(labels, predictions, num_classes: int, mask=None) -> jnp.ndarray:
    """int32 ``[C, C]`` counts of (true, predicted) pairs, computed on the device.

    ``mask`` (bool ``[N]``) excludes entries where it is False (e.g. batch padding);
    unmasked labels and predictions must lie in ``[0, num_classes)``.
    Jittable with ``num_classes`` static; vmap over a leading seeds axis works.
    """
    labels = jnp.asarray(labels).astype(jnp.int32)
    predictions = jnp.asarray(predictions).astype(jnp.int32)
    weights = jnp.ones(labels.shape, jnp.int32) if mask is None else jnp.asarray(mask).astype(jnp.int32)
    flat = jax.ops.segment_sum(weights, labels * num_classes + predictions, num_segments=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _divide(num, den) -> np.ndarray:
    """num / den elementwise, 0.0 where den == 0 (sklearn's zero_division='warn' value)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den == 0, 0.0, num / np.where(den == 0, 1.0, den))


def _scores(cm) -> dict:
    """Per-class arrays and averages exactly as sklearn computes them."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    tp, pred, true = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
    per = {"precision": _divide(tp, pred), "recall": _divide(tp, true), "f1-score": _divide(2.0 * tp, true + pred)}
    macro = {k: float(np.nanmean(v)) for k, v in per.items()}
    weighted = {k: float(np.average(v, weights=true)) if true.sum() > 0 else macro[k] for k, v in per.items()}
    total = int(true.sum())
    return {
        "per": per,
        "support": true,
        "accuracy": float(_divide(tp.sum(), total)),
        "macro": {**macro, "support": total},
        "weighted": {**weighted, "support": total},
    }


def report_from_confusion(cm, class_names) -> dict:
    """Metrics dict from a ``[C, C]`` confusion matrix (plain Python floats/ints).

    ``{"accuracy", "per_class": {name: {precision, recall, f1-score, support, accuracy}},
    "macro avg": {...}, "weighted avg": {...}}``. Per-class "accuracy" is the fraction of
    that class's images predicted correctly, i.e. equal to its recall.
    """
    s = _scores(cm)
    if len(class_names) != len(s["support"]):
        raise ValueError(f"{len(class_names)} class names for a {len(s['support'])}-class confusion matrix")
    per_class = {}
    for i, name in enumerate(class_names):
        row = {k: float(v[i]) for k, v in s["per"].items()}
        row["support"] = int(s["support"][i])
        row["accuracy"] = row["recall"]
        per_class[str(name)] = row
    return {"accuracy": s["accuracy"], "per_class": per_class, "macro avg": s["macro"], "weighted avg": s["weighted"]}


def _table(class_names, rows, accuracy, support_total, digits: int, cell_width: int = 9) -> str:
    """sklearn's classification_report layout; ``rows`` maps label -> (p, r, f1, support) as strings."""
    width = max(max(len(str(n)) for n in class_names), len("weighted avg"), digits)
    w = cell_width

    def line(label, cells):
        return f"{label:>{width}s} " + "".join(f" {c:>{w}}" for c in cells) + "\n"

    out = line("", _HEADERS) + "\n"
    for name in class_names:
        out += line(str(name), rows[str(name)])
    out += "\n" + line("accuracy", ["", "", accuracy, str(support_total)])
    for avg in ("macro avg", "weighted avg"):
        out += line(avg, rows[avg])
    return out


def classification_report_text(cm, class_names, digits: int = 2) -> str:
    """Text identical to ``sklearn.metrics.classification_report(y_true, y_pred,
    target_names=class_names, digits=digits)`` for the predictions behind ``cm``."""
    rep = report_from_confusion(cm, class_names)
    fmt = lambda d: [f"{d[k]:.{digits}f}" for k in _HEADERS[:3]] + [str(d["support"])]  # noqa: E731
    rows = {name: fmt(d) for name, d in rep["per_class"].items()}
    rows.update({avg: fmt(rep[avg]) for avg in ("macro avg", "weighted avg")})
    return _table(class_names, rows, f"{rep['accuracy']:.{digits}f}", rep["macro avg"]["support"], digits)


def mean_std(values) -> dict:
    """``{"mean", "std", "per_seed"}`` over seeds; std is the sample std (ddof=1), 0 for one seed."""
    v = [float(x) for x in np.asarray(values, dtype=np.float64).ravel()]
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "per_seed": v}


def multi_seed_report(cms, class_names) -> dict:
    """Aggregate ``[S, C, C]`` per-seed confusion matrices.

    Same structure as :func:`report_from_confusion`, but every number is replaced by
    :func:`mean_std` over seeds (mean, sample std with ddof=1, per-seed values);
    adds ``"confusion_matrix_sum"`` (``[C, C]`` nested list of ints summed over seeds).
    """
    cms = np.asarray(cms, dtype=np.int64)
    if cms.ndim != 3:
        raise ValueError(f"expected [S, C, C] confusion matrices, got shape {cms.shape}")
    reps = [report_from_confusion(cm, class_names) for cm in cms]

    def agg(path):
        def get(r):
            for k in path:
                r = r[k]
            return r

        return mean_std([get(r) for r in reps])

    first = reps[0]
    return {
        "accuracy": agg(["accuracy"]),
        "per_class": {n: {k: agg(["per_class", n, k]) for k in first["per_class"][n]} for n in first["per_class"]},
        **{avg: {k: agg([avg, k]) for k in first[avg]} for avg in ("macro avg", "weighted avg")},
        "confusion_matrix_sum": cms.sum(axis=0).tolist(),
    }


def classification_report_text_multi(cms, class_names, digits: int = 2) -> str:
    """The classification-report table with each score cell ``"mean ± std"`` over seeds
    (sample std, ddof=1). Support is printed as an int (the mean over seeds, rounded; the
    seeds normally share one test set). With one seed, equals :func:`classification_report_text`."""
    cms = np.asarray(cms, dtype=np.int64)
    if cms.ndim != 3:
        raise ValueError(f"expected [S, C, C] confusion matrices, got shape {cms.shape}")
    if cms.shape[0] == 1:
        return classification_report_text(cms[0], class_names, digits)
    rep = multi_seed_report(cms, class_names)
    cell = lambda ms: f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"  # noqa: E731
    fmt = lambda d: [cell(d[k]) for k in _HEADERS[:3]] + [str(int(round(d["support"]["mean"])))]  # noqa: E731
    rows = {name: fmt(d) for name, d in rep["per_class"].items()}
    rows.update({avg: fmt(rep[avg]) for avg in ("macro avg", "weighted avg")})
    acc = cell(rep["accuracy"])
    support_total = int(round(rep["macro avg"]["support"]["mean"]))
    return _table(class_names, rows, acc, support_total, digits, cell_width=max(9, len(acc)))
