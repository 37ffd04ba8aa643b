"""Classification metrics: the on-device confusion matrix, and classification reports from
scikit-learn, one per seed, aggregated as mean ± std over seeds.

Rows of a confusion matrix are true classes, columns predicted classes. An undefined ratio (a
class never predicted) is 0.0, as scikit-learn's default `zero_division` gives it.
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
    weights = (
        jnp.ones(labels.shape, jnp.int32) if mask is None else jnp.asarray(mask).astype(jnp.int32)
    )
    flat = jax.ops.segment_sum(
        weights, labels * num_classes + predictions, num_segments=num_classes * num_classes
    )
    return flat.reshape(num_classes, num_classes)


def mean_std(values) -> dict:
    """``{"mean", "std", "per_seed"}`` over seeds; std is the sample std (ddof=1), NaN (undefined)
    for one seed."""
    v = [float(x) for x in np.asarray(values, dtype=np.float64).ravel()]
    return {
        "mean": float(np.mean(v)),
        "std": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
        "per_seed": v,
    }


def _skm():
    # Imported when a report is made, not with the engine (which needs only the confusion matrix).
    from sklearn import metrics as skm

    return skm


def _report(labels, predictions, class_names) -> dict:
    """scikit-learn's report of one seed, with per-class "accuracy" (the share of the class's
    images predicted right, i.e. its recall)."""
    skm = _skm()
    rep = skm.classification_report(
        labels,
        predictions,
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    for name in class_names:
        rep[name]["accuracy"] = rep[name]["recall"]
    rep["accuracy"] = float(skm.accuracy_score(labels, predictions))
    return rep


def multi_seed_report(labels, predictions, class_names) -> dict:
    """The classification report of each seed's predictions int [S, N] against `labels` [N],
    every number as `mean_std` over seeds: ``{"accuracy", "per_class": {name: {precision,
    recall, f1-score, support, accuracy}}, "macro avg", "weighted avg"}`` plus
    ``"confusion_matrix_sum"`` ([C, C] counts summed over seeds)."""
    predictions, skm = np.asarray(predictions), _skm()
    reps = [_report(labels, p, class_names) for p in predictions]
    per_class = {
        n: {k: mean_std([r[n][k] for r in reps]) for k in (*_HEADERS, "accuracy")}
        for n in class_names
    }
    return {
        "accuracy": mean_std([r["accuracy"] for r in reps]),
        "per_class": per_class,
        **{
            avg: {k: mean_std([r[avg][k] for r in reps]) for k in _HEADERS}
            for avg in ("macro avg", "weighted avg")
        },
        "confusion_matrix_sum": sum(
            skm.confusion_matrix(labels, p, labels=list(range(len(class_names))))
            for p in predictions
        ).tolist(),
    }


def classification_report_text(labels, predictions, class_names, digits: int = 2) -> str:
    """scikit-learn's classification-report table; with several seeds (predictions [S, N]) each
    score cell is ``"mean ± std"`` over seeds and the support is the seeds' mean."""
    predictions = np.asarray(predictions)
    if len(predictions) == 1:
        return _skm().classification_report(
            labels,
            predictions[0],
            labels=list(range(len(class_names))),
            target_names=list(class_names),
            digits=digits,
            zero_division=0,
        )
    rep = multi_seed_report(labels, predictions, class_names)
    cell = lambda ms: f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"  # noqa: E731 - several seeds
    rows = {n: rep["per_class"][n] for n in class_names} | {
        a: rep[a] for a in ("macro avg", "weighted avg")
    }
    cells = {
        n: [cell(d[k]) for k in _HEADERS[:3]] + [str(int(round(d["support"]["mean"])))]
        for n, d in rows.items()
    }
    width, w = (
        max(max(len(n) for n in class_names), len("weighted avg")),
        max(9, len(cell(rep["accuracy"]))),
    )

    def line(label, values):
        return f"{label:>{width}s} " + "".join(f" {v:>{w}}" for v in values) + "\n"

    support = str(int(round(rep["macro avg"]["support"]["mean"])))
    return (
        line("", _HEADERS)
        + "\n"
        + "".join(line(n, cells[n]) for n in class_names)
        + "\n"
        + line("accuracy", ["", "", cell(rep["accuracy"]), support])
        + "".join(line(a, cells[a]) for a in ("macro avg", "weighted avg"))
    )
