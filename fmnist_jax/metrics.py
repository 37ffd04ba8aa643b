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


def _sklearn_args(class_names) -> dict:
    classes = list(range(len(class_names)))
    return {"labels": classes, "target_names": list(class_names), "zero_division": 0}


def _reports(labels, predictions, class_names) -> list[dict]:
    """scikit-learn's report of each seed's predictions, with per-class "accuracy" (the share of
    the class's images predicted right, i.e. its recall)."""
    from sklearn import metrics as skm  # imported for a report, not with the engine

    reports = []
    for p in predictions:
        rep = skm.classification_report(labels, p, output_dict=True, **_sklearn_args(class_names))
        for name in class_names:
            rep[name]["accuracy"] = rep[name]["recall"]
        rep["accuracy"] = float(skm.accuracy_score(labels, p))
        reports.append(rep)
    return reports


def multi_seed_report(labels, predictions, class_names) -> dict:
    """The classification report of each seed's predictions int [S, N] against `labels` [N],
    every number as `mean_std` over seeds: ``{"accuracy", "per_class": {name: {precision,
    recall, f1-score, support, accuracy}}, "macro avg", "weighted avg"}`` plus
    ``"confusion_matrix_sum"`` ([C, C] counts summed over seeds)."""
    predictions = np.asarray(predictions)
    reps = _reports(labels, predictions, class_names)
    classes = len(class_names)
    cm_sum = confusion_matrix(np.tile(labels, len(predictions)), predictions.ravel(), classes)

    def over_seeds(key, fields):
        return {k: mean_std([r[key][k] for r in reps]) for k in fields}

    return {
        "accuracy": mean_std([r["accuracy"] for r in reps]),
        "per_class": {n: over_seeds(n, (*_HEADERS, "accuracy")) for n in class_names},
        "macro avg": over_seeds("macro avg", _HEADERS),
        "weighted avg": over_seeds("weighted avg", _HEADERS),
        "confusion_matrix_sum": np.asarray(cm_sum).tolist(),
    }


def classification_report_text(labels, predictions, class_names, digits: int = 2) -> str:
    """scikit-learn's classification-report table; with several seeds (predictions [S, N]) each
    score cell is ``"mean ± std"`` over seeds and the support is the seeds' mean."""
    predictions = np.asarray(predictions)
    if len(predictions) == 1:
        from sklearn.metrics import classification_report

        return classification_report(
            labels, predictions[0], digits=digits, **_sklearn_args(class_names)
        )
    rep = multi_seed_report(labels, predictions, class_names)
    averages = ("macro avg", "weighted avg")

    def cell(ms):
        return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"

    def row(d):
        return [cell(d[k]) for k in _HEADERS[:3]] + [str(int(round(d["support"]["mean"])))]

    width = max(len(n) for n in (*class_names, *averages))
    w = max(9, len(cell(rep["accuracy"])))

    def line(label, values):
        return f"{label:>{width}s} " + "".join(f" {v:>{w}}" for v in values) + "\n"

    accuracy = ["", "", cell(rep["accuracy"]), row(rep["macro avg"])[-1]]
    return "".join(
        [line("", _HEADERS), "\n", *(line(n, row(rep["per_class"][n])) for n in class_names)]
        + ["\n", line("accuracy", accuracy), *(line(a, row(rep[a])) for a in averages)]
    )
