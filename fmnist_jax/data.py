"""The task (the original variant's five classes, or any 2 to 10 of Fashion-MNIST's): the raw
data from one of the sources (`fmnist_jax.sources.load_raw`: files on this machine, the official
download or TensorFlow Datasets), the classes kept, the stratified validation split, pixels in
[0, 1].

Pure NumPy: nothing here imports JAX, so data problems surface before any device work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from fmnist_jax.sources import DataError as DataError  # re-exported: callers catch data.DataError
from fmnist_jax.sources import RawSplit, load_raw

# Fashion-MNIST's class names by label 0..9 (github.com/zalandoresearch/fashion-mnist, README).
FASHION_MNIST_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CLASSES: tuple[int, ...] = (1, 3, 5, 7, 9)  # the original variant's (docs/assignment.md)
CLASS_NAMES: tuple[str, ...] = tuple(FASHION_MNIST_NAMES[c] for c in CLASSES)


def check_classes(classes) -> tuple[int, ...]:
    """`classes` as a tuple of ints: 2 to 10 distinct original labels 0..9, in the given order.

    Raises:
      ValueError: fewer than 2, a duplicate, or a label outside 0..9 (the message says which).
    """
    out = tuple(int(c) for c in classes)
    if not 2 <= len(out) <= 10:
        raise ValueError(f"a task needs 2 to 10 classes, got {len(out)}")
    if bad := [c for c in out if not 0 <= c <= 9]:
        raise ValueError(f"class labels must be in 0..9, got {', '.join(map(str, bad))}")
    if dupes := sorted({c for c in out if out.count(c) > 1}):
        raise ValueError(f"class labels must be distinct, got {', '.join(map(str, dupes))} twice")
    return out


@dataclass(frozen=True)
class TaskData:
    """The task: float32 images [N, 28, 28, 1] in [0, 1], int32 labels 0..k-1 [N] (k classes,
    named by `class_names`)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    info: dict


def load_fashion_mnist(
    source: str = "idx", data_dir: str | os.PathLike | None = None, *, verify: bool = True
) -> tuple[RawSplit, RawSplit]:
    """(train, test) of the full 10-class data from `source` (see `sources.load_raw`). TFDS and
    Kaggle's CSV files hold the examples in their own order, not the IDX files' order.

    Raises:
      DataError: the data is missing, damaged or not verified; the message says how to fix it.
    """
    train, test, _ = load_raw(source, data_dir, verify)
    return train, test


def select_classes(
    images: np.ndarray, labels: np.ndarray, classes: tuple[int, ...] = CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Keep examples whose label is in `classes` (file order); relabel to 0..len-1."""
    classes = tuple(int(c) for c in classes)
    if len(set(classes)) != len(classes) or min(classes, default=0) < 0:
        raise ValueError(f"classes must be distinct non-negative labels, got {classes}")
    labels = np.asarray(labels)
    lookup = np.full(max(int(labels.max(initial=0)), *classes) + 1, -1, np.int32)
    lookup[list(classes)] = np.arange(len(classes), dtype=np.int32)
    keep = lookup[labels] >= 0
    return np.asarray(images)[keep], lookup[labels[keep]]


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), both ascending; round(val_fraction * n_c) of each class to val."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    is_val = np.zeros(labels.shape[0], bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        is_val[rng.permutation(members)[: round(val_fraction * members.size)]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def to_float(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1] in [0, 1]."""
    return (np.asarray(images_uint8, np.float32) / np.float32(255.0))[..., None]


def load_task(
    data_dir: str | os.PathLike | None = None,
    source: str = "idx",
    *,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    limit: int | None = None,
    verify: bool = True,
    classes: tuple[int, ...] = CLASSES,
) -> TaskData:
    """Load → the `classes` (original labels, relabelled 0..k-1 in the given order) →
    stratified train/val split → (limit) → float in [0, 1].

    With `limit=None` the test set is all test-subset images in file order (5,000 for five
    classes). The split is per task: it stratifies the task's own labels, so it is fixed by
    the classes (their order included) and `split_seed`.
    `limit=n` keeps train[:n], val[:max(n//5, 50)], test[:max(n//5, 50)] (file order).
    `info["source"]` is "csv" when the folder held Kaggle's CSV files (another example order).

    Raises:
      DataError: see `load_fashion_mnist`.
      ValueError: bad `classes` (see `check_classes`) or `limit`.
    """
    classes = check_classes(classes)
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    train_raw, test_raw, where = load_raw(source, data_dir, verify)
    images, labels = select_classes(train_raw.images, train_raw.labels, classes)
    test_images, test_labels = select_classes(test_raw.images, test_raw.labels, classes)
    train_idx, val_idx = stratified_split(labels, val_fraction, split_seed)
    if limit is not None:
        small = max(limit // 5, 50)
        train_idx, val_idx = train_idx[:limit], val_idx[:small]
        test_images, test_labels = test_images[:small], test_labels[:small]
    x_train, x_val, x_test = (
        to_float(a) for a in (images[train_idx], images[val_idx], test_images)
    )
    names = tuple(FASHION_MNIST_NAMES[c] for c in classes)
    info = {
        "source": where["source"],
        "directory": where["directory"],
        "classes": list(classes),
        "split_seed": split_seed,
        "val_fraction": val_fraction,
        "counts": {"train": len(x_train), "val": len(x_val), "test": len(x_test)},
        "verified": bool(verify),
        "limit": limit,
        "file_order": where["file_order"],
    }
    return TaskData(
        x_train, labels[train_idx], x_val, labels[val_idx], x_test, test_labels, names, info
    )
