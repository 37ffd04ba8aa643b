"""The assignment's variant a result belongs to, read from its config.json: the task's classes,
the weight initialisation and, for the CNN, the pooling and the augmentation
(docs/variants.md). The assignment derives each student's variant from their birth date; this
project's defaults are the original report's (docs/assignment.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fmnist_jax.data import CLASSES, FASHION_MNIST_NAMES

# The original report's variant. Its pooling is either: the assignment asks for average pooling,
# the report's own table shows max pooling (docs/assignment.md), so both compare with it.
ORIGINAL = {
    "classes": list(CLASSES),
    "init": "xavier_uniform",
    "rotation_degrees": 10.0,
    "noise_std": 0.1,
    "flip": False,
}


def of_config(config: Mapping) -> dict | None:
    """The variant a row's config.json records: {"classes", "init"}, and for a CNN also
    {"pool", "rotation_degrees", "noise_std", "flip"} (an operation turned off counts as 0);
    None when it records no training configuration or data (e.g. a pretraining's cache)."""
    tc, info = config.get("train_config"), config.get("data_info")
    if not isinstance(tc, Mapping) or not isinstance(info, Mapping):
        return None
    out = {"classes": list(info.get("classes", CLASSES)), "init": tc.get("init", ORIGINAL["init"])}
    if tc.get("model") == "cnn":
        aug = tc.get("aug") or {}
        out.update(
            pool=tc.get("pool", "avg"),
            rotation_degrees=float(aug.get("max_degrees", 0)) if aug.get("rotate", True) else 0.0,
            noise_std=float(aug.get("noise_std", 0)) if aug.get("noise", True) else 0.0,
            flip=bool(aug.get("flip", False)),
        )
    return out


def of_configs(configs: Iterable[Mapping]) -> dict | None:
    """The variant of a set of rows (a study): each setting as the first row recording it."""
    out: dict = {}
    for config in configs:
        for key, value in (of_config(config) or {}).items():
            out.setdefault(key, value)
    return out or None


def conflicts(a: Mapping, b: Mapping) -> list[str]:
    """The settings two variants both record and differ in (pooling aside: a study's max-pooling
    rows sit beside its average-pooling ones, in folders of their own)."""
    return [k for k in a if k in b and k != "pool" and a[k] != b[k]]


def is_original(v: Mapping) -> bool:
    """Whether `v` is the original report's variant (either pooling)."""
    return not conflicts(v, ORIGINAL)


def class_names(classes: Iterable[int]) -> list[str]:
    """Fashion-MNIST's names of the original labels `classes`."""
    return [FASHION_MNIST_NAMES[c] for c in classes]


def classes_text(classes: Iterable[int]) -> str:
    """e.g. '0 T-shirt/top, 2 Pullover'."""
    return ", ".join(f"{c} {FASHION_MNIST_NAMES[c]}" for c in classes)


def augmentation_text(v: Mapping) -> str:
    """e.g. 'rotation ±10°, Gaussian noise σ 0.1, no flip'."""
    rot, noise = v.get("rotation_degrees", 0), v.get("noise_std", 0)
    return ", ".join(
        [
            f"rotation ±{rot:g}°" if rot else "no rotation",
            f"Gaussian noise σ {noise:g}" if noise else "no noise",
            "horizontal flip" if v.get("flip") else "no flip",
        ]
    )


def describe(v: Mapping) -> str:
    """One line naming every setting of `v`, e.g. 'classes 1 Trouser, 3 Dress, ...; init
    xavier_uniform; avg pooling; rotation ±10°, Gaussian noise σ 0.1, no flip'."""
    parts = ["classes " + classes_text(v.get("classes", [])), f"init {v.get('init')}"]
    if "pool" in v:
        parts += [f"{v['pool']} pooling", augmentation_text(v)]
    return "; ".join(parts)


def flags(v: Mapping) -> str:
    """The command-line flags that select `v` (its settings that are not the defaults)."""
    words = []
    if v.get("classes", ORIGINAL["classes"]) != ORIGINAL["classes"]:
        words.append("--classes " + ",".join(map(str, v["classes"])))
    if v.get("init", ORIGINAL["init"]) != ORIGINAL["init"]:
        words.append(f"--init {v['init']}")
    if v.get("pool", "avg") != "avg":
        words.append(f"--pool {v['pool']}")
    for key in ("rotation_degrees", "noise_std"):
        if key in v and v[key] != ORIGINAL[key]:
            words.append(f"--{key.replace('_', '-')} {v[key]:g}")
    if v.get("flip"):
        words.append("--flip")
    return " ".join(words)
