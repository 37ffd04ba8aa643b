"""fmnist_jax.metrics: the on-device confusion matrix against scikit-learn, and the aggregation of
scikit-learn's per-seed reports over seeds, on random and real labels."""

import gzip
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, classification_report, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from fmnist_jax import metrics

C = 5
NAMES = ("Trouser", "Dress", "Sandal", "Sneaker", "Ankle boot")
LABELS_GZ = Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def real_labels():
    """The 5,000 test images of original classes 1,3,5,7,9, relabelled 0..4."""
    if not LABELS_GZ.exists():
        pytest.skip("Fashion-MNIST test labels not available")
    with gzip.open(LABELS_GZ, "rb") as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
    y = y[np.isin(y, (1, 3, 5, 7, 9))]
    assert y.shape == (5000,)
    return (y - 1) // 2


def corrupt(y, frac, seed):
    """A copy of y with `frac` of the entries changed to a different class (fixed numpy RNG)."""
    rng = np.random.default_rng(seed)
    pred = y.copy()
    idx = rng.choice(len(y), size=int(frac * len(y)), replace=False)
    pred[idx] = (pred[idx] + rng.integers(1, C, size=len(idx))) % C
    return pred


def random_pair(seed, n=400):
    rng = np.random.default_rng(seed)
    return rng.integers(0, C, n), rng.integers(0, C, n)


def sk_cm(y, p):
    return sk_confusion_matrix(y, p, labels=np.arange(C))


def sklearn_values(y, p):
    """Reference numbers: per-class arrays, macro/weighted tuples, accuracy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        per = precision_recall_fscore_support(y, p, labels=np.arange(C), average=None)
        macro = precision_recall_fscore_support(y, p, labels=np.arange(C), average="macro")
        weighted = precision_recall_fscore_support(y, p, labels=np.arange(C), average="weighted")
    return per, macro, weighted, accuracy_score(y, p)


def sk_text(y, p, digits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return classification_report(
            y, p, labels=np.arange(C), target_names=list(NAMES), digits=digits
        )


def cases(real_labels):
    y = real_labels
    never2 = corrupt(y, 0.08, 1)
    never2[never2 == 2] = 3  # class 2 ("Sandal") is never predicted
    yield "random", *random_pair(0)
    yield "random-small", *random_pair(1, n=37)
    yield "real-8pct", y, corrupt(y, 0.08, 0)
    yield "never-predicted", y, never2
    keep = y != 4  # class 4 neither in labels nor predictions: zero support everywhere
    p = corrupt(y, 0.1, 2)[keep]
    yield "absent-class", y[keep], np.where(p == 4, 0, p)


# ----------------------------------------------------------------------------- confusion matrix


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_confusion_matrix_matches_sklearn(seed):
    y, p = random_pair(seed)
    cm = metrics.confusion_matrix(y, p, C)
    assert cm.dtype == np.int32 and cm.shape == (C, C)
    np.testing.assert_array_equal(np.asarray(cm), sk_cm(y, p))


def test_confusion_matrix_mask_jit_vmap():
    ys, ps, masks = [], [], []
    for seed in range(3):
        y, p = random_pair(seed + 10, n=300)
        m = np.random.default_rng(seed).random(300) < 0.7
        y = np.where(m, y, (y + 1) % C)  # padded entries carry valid but wrong labels
        ys.append(y), ps.append(p), masks.append(m)
    ys, ps, masks = map(np.stack, (ys, ps, masks))
    expected = np.stack([sk_cm(y[m], p[m]) for y, p, m in zip(ys, ps, masks, strict=False)])

    jitted = jax.jit(metrics.confusion_matrix, static_argnums=2)
    for s in range(3):
        np.testing.assert_array_equal(
            np.asarray(metrics.confusion_matrix(ys[s], ps[s], C, masks[s])), expected[s]
        )
        np.testing.assert_array_equal(np.asarray(jitted(ys[s], ps[s], C, masks[s])), expected[s])
    vmapped = jax.jit(jax.vmap(lambda y, p, m: metrics.confusion_matrix(y, p, C, m)))(ys, ps, masks)
    assert vmapped.shape == (3, C, C)
    np.testing.assert_array_equal(np.asarray(vmapped), expected)
    assert int(vmapped.sum()) == int(masks.sum())


# ----------------------------------------------------------------------------- multi-seed


def seed_predictions(y, n_seeds=3):
    return [
        corrupt(y, frac, 100 + s)
        for s, frac in zip(range(n_seeds), (0.05, 0.08, 0.12, 0.2), strict=False)
    ]


def test_mean_std():
    ms = metrics.mean_std(np.array([0.5, 0.7, 0.9], dtype=np.float32))
    # 0.7 and 0.9 in float32 are off by < 3e-8; the statistics are taken in float64: 1e-7.
    assert ms["mean"] == pytest.approx(0.7, abs=1e-7)
    assert ms["std"] == pytest.approx(0.2, abs=1e-7)  # the sample std, ddof=1
    assert ms["std"] != pytest.approx(np.std([0.5, 0.7, 0.9]))
    assert np.isnan(metrics.mean_std([0.25])["std"])  # one seed: the spread is undefined
    assert ms["per_seed"] == pytest.approx([0.5, 0.7, 0.9], abs=1e-7)
    assert all(type(v) is float for v in [ms["mean"], ms["std"], *ms["per_seed"]])


def test_multi_seed_report_matches_numpy_over_sklearn(real_labels):
    y = real_labels
    preds = seed_predictions(y)
    rep = metrics.multi_seed_report(y, np.stack(preds), NAMES)
    refs = [sklearn_values(y, p) for p in preds]

    def check(ms, values):  # float64 sums of a handful of terms: ~1e-16 each, so 1e-12
        values = np.asarray(values, dtype=np.float64)
        assert ms["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert ms["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert ms["per_seed"] == pytest.approx(values.tolist(), abs=1e-12)

    check(rep["accuracy"], [r[3] for r in refs])
    for i, cls in enumerate(NAMES):
        for j, k in enumerate(("precision", "recall", "f1-score", "support")):
            check(rep["per_class"][cls][k], [r[0][j][i] for r in refs])
        check(rep["per_class"][cls]["accuracy"], [r[0][1][i] for r in refs])
    for key, idx in (("macro avg", 1), ("weighted avg", 2)):
        for j, k in enumerate(("precision", "recall", "f1-score")):
            check(rep[key][k], [r[idx][j] for r in refs])
    assert rep["accuracy"]["std"] > 0
    np.testing.assert_array_equal(
        np.array(rep["confusion_matrix_sum"]), sum(sk_cm(y, p) for p in preds)
    )


def test_classification_report_text_multi(real_labels):
    y = real_labels
    preds = seed_predictions(y)
    text = metrics.classification_report_text(y, np.stack(preds), NAMES)
    assert "±" in text
    refs = [sklearn_values(y, p) for p in preds]
    lines = {line.strip().split("  ")[0]: line for line in text.splitlines() if line.strip()}
    for i, cls in enumerate(NAMES):
        mean_p = np.mean([r[0][0][i] for r in refs])
        std_p = np.std([r[0][0][i] for r in refs], ddof=1)
        mean_f1 = np.mean([r[0][2][i] for r in refs])
        assert f"{mean_p:.2f} ± {std_p:.2f}" in lines[cls]
        assert f"{mean_f1:.2f} ± " in lines[cls]
        assert lines[cls].rstrip().endswith(" 1000")
    acc = [r[3] for r in refs]
    assert f"{np.mean(acc):.2f} ± {np.std(acc, ddof=1):.2f}" in lines["accuracy"]
    assert lines["accuracy"].rstrip().endswith(" 5000")
    # one seed: sklearn's own table
    one = metrics.classification_report_text(y, np.stack(preds[:1]), NAMES, digits=4)
    assert one == sk_text(y, preds[0], 4) and "±" not in one
    # a class never predicted and one never present: 0.0, as sklearn's default zero_division
    for name, yy, pp in cases(real_labels):
        rep = metrics.multi_seed_report(yy, np.stack([pp, pp]), NAMES)
        (prec, rec, _, sup), *_ = sklearn_values(yy, pp)
        assert [rep["per_class"][n]["precision"]["mean"] for n in NAMES] == pytest.approx(
            prec, abs=1e-12
        ), name
        assert [rep["per_class"][n]["accuracy"]["mean"] for n in NAMES] == pytest.approx(
            rec, abs=1e-12
        ), name
