"""Run the tfds source under tfds.testing.mock_data; print one JSON line of facts.

A separate process on purpose: TensorFlow and JAX in one process have crashed before.
"""

import json
import sys

import numpy as np
import tensorflow_datasets as tfds

from fmnist_jax import data, sources


def describe(split: sources.RawSplit) -> dict:
    return {
        "images_shape": list(split.images.shape),
        "images_dtype": str(split.images.dtype),
        "labels_shape": list(split.labels.shape),
        "labels_dtype": str(split.labels.dtype),
        "label_min": int(split.labels.min()),
        "label_max": int(split.labels.max()),
    }


def main(n: int) -> None:
    out = {}
    with tfds.testing.mock_data(num_examples=n):
        train, test = data.load_fashion_mnist("tfds", verify=False)
        out["train"], out["test"] = describe(train), describe(test)
        try:  # random mock examples are not the official ones
            data.load_fashion_mnist("tfds")
            out["verify_error"] = None
        except sources.DataError as e:
            out["verify_error"] = str(e)
        task = data.load_task(source="tfds", verify=False)
        out["task"] = {
            "train_shape": list(task.train_images.shape),
            "dtype": str(task.train_images.dtype),
            "in_unit_range": bool(task.train_images.min() >= 0 and task.train_images.max() <= 1),
            "labels": sorted(
                set(np.concatenate([task.train_labels, task.val_labels, task.test_labels]).tolist())
            ),
            "info": task.info,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]))
