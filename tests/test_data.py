"""fmnist_jax.sources and fmnist_jax.data: real-data facts, the task contract, bad data, download,
tfds."""

from __future__ import annotations

import functools
import gzip
import http.server
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fmnist_jax import data, sources
from fmnist_jax.sources import DataError

REAL_DIR = sources.DEBIAN_DIR
FIX_WORDS = ("--data-dir", "--source download")
HAS_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None


def debian_fix() -> str:
    """The fix naming the Debian package: use its files when installed, else install it."""
    return (
        str(REAL_DIR) if (REAL_DIR / "t10k-labels-idx1-ubyte.gz").is_file() else "apt-get install"
    )


@functools.cache
def real_bytes(name: str) -> bytes:
    """Decompressed bytes of one real file."""
    return gzip.decompress((REAL_DIR / f"{name}.gz").read_bytes())


def make_dir(root: Path, overrides: dict[str, bytes] | None = None, *, gz: bool = True) -> Path:
    """A data folder: real .gz files symlinked, `overrides` (name -> raw bytes) written."""
    root.mkdir(parents=True, exist_ok=True)
    for spec in sources.FILES.values():
        if overrides and spec.name in overrides:
            payload = overrides[spec.name]
            if gz:
                (root / f"{spec.name}.gz").write_bytes(gzip.compress(payload, compresslevel=1))
            else:
                (root / spec.name).write_bytes(payload)
        else:
            (root / f"{spec.name}.gz").symlink_to(REAL_DIR / f"{spec.name}.gz")
    return root


def with_header_field(raw: bytes, index: int, value: int) -> bytes:
    """`raw` with its big-endian uint32 header field `index` replaced."""
    return raw[: 4 * index] + value.to_bytes(4, "big") + raw[4 * index + 4 :]


def assert_clean_error(excinfo, *must_contain: str) -> str:
    """A DataError (exactly), no chained library traceback, mentioning every string."""
    assert type(excinfo.value) is DataError
    error = excinfo.value  # no numpy/gzip/urllib traceback chained onto it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    message = str(excinfo.value)
    for text in must_contain:
        assert text in message, f"{text!r} not in DataError message:\n{message}"
    return message


# ----------------------------------------------------------------------------- real data


def test_real_data_counts_dtypes_and_first_labels(raw_data):
    train, test = raw_data
    assert train.images.shape == (60_000, 28, 28) and test.images.shape == (10_000, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    assert test.labels.dtype == np.int32
    assert np.bincount(train.labels).tolist() == [6_000] * 10
    assert np.bincount(test.labels).tolist() == [1_000] * 10
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


def test_raw_and_gz_files_read_identically(tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(real_bytes(raw.name))
    from_raw = sources.read_idx(raw, expected_kind="labels", expected_count=10_000)
    from_gz = sources.read_idx(REAL_DIR / f"{raw.name}.gz", expected_kind="labels")
    np.testing.assert_array_equal(from_raw, from_gz)
    assert from_raw[:3].tolist() == [9, 2, 1]


@pytest.mark.parametrize("split", [0, 1])
def test_subset_keeps_file_order_and_relabels(raw_data, split):
    images, labels = raw_data[split].images, raw_data[split].labels
    sub_images, sub_labels = data.select_classes(images, labels)
    # Independent reference: a plain Python walk over the file.
    new_label = {1: 0, 3: 1, 5: 2, 7: 3, 9: 4}
    keep = [i for i, label in enumerate(labels.tolist()) if label in new_label]
    assert len(keep) == (30_000, 5_000)[split]
    assert sub_labels.dtype == np.int32
    assert sub_labels.tolist() == [new_label[labels[i]] for i in keep]
    np.testing.assert_array_equal(sub_images, images[keep])
    assert np.bincount(sub_labels).tolist() == [(6_000, 1_000)[split]] * 5


def test_select_classes_follows_the_given_class_order():
    images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1)
    labels = np.array([9, 1, 4, 1, 9, 2])
    sub_images, sub_labels = data.select_classes(images, labels, classes=(9, 1))
    assert sub_labels.tolist() == [0, 1, 1, 0]
    assert sub_images.ravel().tolist() == [0, 1, 3, 4]


def test_stratified_split_contract(raw_data):
    _, labels = data.select_classes(raw_data[0].images, raw_data[0].labels)
    train_idx, val_idx = data.stratified_split(labels, 0.1, seed=0)
    assert len(train_idx) == 27_000 and len(val_idx) == 3_000
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)
    assert np.intersect1d(train_idx, val_idx).size == 0
    np.testing.assert_array_equal(np.union1d(train_idx, val_idx), np.arange(30_000))
    assert np.bincount(labels[val_idx]).tolist() == [600] * 5
    again_train, again_val = data.stratified_split(labels, 0.1, seed=0)
    np.testing.assert_array_equal(again_val, val_idx)
    np.testing.assert_array_equal(again_train, train_idx)
    _, other_val = data.stratified_split(labels, 0.1, seed=1)
    assert not np.array_equal(other_val, val_idx)
    assert np.bincount(labels[other_val]).tolist() == [600] * 5


def test_stratified_split_rounds_per_class():
    labels = np.array([0] * 15 + [1] * 4)
    _, val_idx = data.stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[val_idx]).tolist() == [3, 1]


def test_to_float_range_shape_dtype():
    x = data.to_float(np.array([[[0, 255], [51, 102]]], np.uint8))
    assert x.shape == (1, 2, 2, 1) and x.dtype == np.float32
    assert x.ravel().tolist() == pytest.approx([0.0, 1.0, 0.2, 0.4])


def test_load_task_contract(task_data, raw_data):
    t = task_data
    assert (len(t.train_images), len(t.val_images), len(t.test_images)) == (27_000, 3_000, 5_000)
    for x, y in (
        (t.train_images, t.train_labels),
        (t.val_images, t.val_labels),
        (t.test_images, t.test_labels),
    ):
        assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1) and len(x) == len(y)
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert y.dtype == np.int32 and set(np.unique(y).tolist()) == {0, 1, 2, 3, 4}
    assert t.class_names == ("Trouser", "Dress", "Sandal", "Sneaker", "Ankle boot")
    # ⚑ the test set is the whole test subset, in file order
    sub_images, sub_labels = data.select_classes(raw_data[1].images, raw_data[1].labels)
    np.testing.assert_array_equal(t.test_labels, sub_labels)
    np.testing.assert_array_equal(t.test_images[..., 0], sub_images / np.float32(255))
    assert t.info["counts"] == {"train": 27_000, "val": 3_000, "test": 5_000}
    assert t.info["verified"] is True
    assert (t.info["source"], t.info["split_seed"], t.info["limit"]) == ("idx", 0, None)
    assert Path(t.info["directory"]).is_dir()


def test_load_task_limit():
    t = data.load_task(limit=400, split_seed=2)
    assert t.info["counts"] == {"train": 400, "val": 80, "test": 80}
    assert t.info["limit"] == 400 and t.info["split_seed"] == 2
    # Standardising would break the [0, 1] clipping of the augmentation, its black rotation fill
    # and the autoencoder's ReLU output: not an option.
    with pytest.raises(TypeError):
        data.load_task(limit=400, standardise=True)
    tiny = data.load_task(limit=20)
    assert tiny.info["counts"] == {"train": 20, "val": 50, "test": 50}
    with pytest.raises(ValueError):
        data.load_task(limit=0)


def test_unknown_source_lists_valid_ones():
    with pytest.raises(DataError) as excinfo:
        data.load_fashion_mnist("kaggle")
    assert_clean_error(excinfo, "'kaggle'", "idx", "download", "tfds")


def test_tfds_missing_is_a_data_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(DataError) as excinfo:
        data.load_fashion_mnist("tfds")
    assert_clean_error(excinfo, "pip install 'fmnist-jax[tfds]'")


# ----------------------------------------------------------------------------- bad data


def test_missing_explicit_folder(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError) as excinfo:
        data.load_fashion_mnist(data_dir=missing)
    assert_clean_error(excinfo, str(missing), "does not exist", debian_fix(), *FIX_WORDS)


def test_folder_missing_one_file(tmp_path):
    folder = make_dir(tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as excinfo:
        sources.find_data_dir(folder)
    assert_clean_error(excinfo, str(folder), "missing t10k-labels-idx1-ubyte", *FIX_WORDS)


def _truncated() -> tuple[str, bytes]:
    name = "t10k-images-idx3-ubyte"
    return name, real_bytes(name)[: -784 * 3 - 5]


def _wrong_magic() -> tuple[str, bytes]:
    name = "t10k-labels-idx1-ubyte"
    return name, with_header_field(real_bytes(name), 0, 2051)


def _wrong_count() -> tuple[str, bytes]:
    name = "t10k-labels-idx1-ubyte"
    return name, with_header_field(real_bytes(name), 1, 10_001)


def _consistent_but_short() -> tuple[str, bytes]:
    name = "t10k-labels-idx1-ubyte"  # header and payload agree, but not 10,000 labels
    return name, with_header_field(real_bytes(name), 1, 9_000)[: 8 + 9_000]


def _wrong_dims() -> tuple[str, bytes]:
    name = "t10k-images-idx3-ubyte"
    return name, with_header_field(real_bytes(name), 2, 27)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize(
    "case, expected",
    [
        (_truncated, "truncated"),
        (_wrong_magic, "magic number 2051"),
        (_wrong_count, "header says 10001 labels, expected 10000"),
        (_consistent_but_short, "header says 9000 labels, expected 10000"),
        (_wrong_dims, "27x28"),
    ],
)
def test_malformed_file_is_a_clear_data_error(tmp_path, case, expected, gz):
    name, payload = case()
    spec = next(f for f in sources.FILES.values() if f.name == name)
    path = tmp_path / (f"{name}.gz" if gz else name)
    path.write_bytes(gzip.compress(payload, compresslevel=1) if gz else payload)
    with pytest.raises(DataError) as excinfo:  # as the loader calls it
        sources.read_idx(path, expected_kind=spec.kind, expected_count=spec.count)
    assert_clean_error(excinfo, str(path), expected, "--source download")


def test_loader_checks_structure_even_unverified(tmp_path):
    name, payload = _truncated()
    folder = make_dir(tmp_path / "d", {name: payload})
    with pytest.raises(DataError) as excinfo:
        data.load_fashion_mnist(data_dir=folder, verify=False)
    assert_clean_error(
        excinfo, str(folder / f"{name}.gz"), "truncated", "delete it and use --source download"
    )


def test_truncated_gzip_stream(tmp_path):
    name = "train-labels-idx1-ubyte"
    path = tmp_path / f"{name}.gz"
    path.write_bytes((REAL_DIR / f"{name}.gz").read_bytes()[:5_000])
    with pytest.raises(DataError) as excinfo:
        sources.read_idx(path, expected_kind="labels", expected_count=60_000)
    assert_clean_error(excinfo, str(path), "gzip", "--source download")


def test_read_idx_wrong_kind(tmp_path):
    path = REAL_DIR / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DataError) as excinfo:
        sources.read_idx(path, expected_kind="images", expected_count=None)
    assert_clean_error(excinfo, str(path), "magic number 2049 is not 2051")


def test_read_idx_header_payload_mismatch(tmp_path):
    name, payload = _wrong_count()
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(DataError) as excinfo:  # no expected count: the header is checked
        sources.read_idx(path, expected_kind="labels", expected_count=None)
    assert_clean_error(excinfo, str(path), "needs 10009", "truncated")


def test_hash_mismatch_and_verify_false(tmp_path, raw_data):
    name = "t10k-images-idx3-ubyte"
    changed = bytearray(real_bytes(name))
    changed[16 + 1_000] ^= 0xFF  # one pixel; header and sizes stay valid
    folder = make_dir(tmp_path / "d", {name: bytes(changed)})
    with pytest.raises(DataError) as excinfo:
        data.load_fashion_mnist(data_dir=folder)
    assert_clean_error(
        excinfo,
        str(folder / f"{name}.gz"),
        sources.FILES["test_images"].sha256,
        "MNIST",
        "verify=False",
        "--allow-unverified-data",
    )
    train, test = data.load_fashion_mnist(data_dir=folder, verify=False)
    difference = np.argwhere(test.images != raw_data[1].images)
    assert difference.tolist() == [[1, 7, 20]]  # pixel 1000 = image 1, row 7, column 20
    np.testing.assert_array_equal(train.labels, raw_data[0].labels)
    task = data.load_task(data_dir=folder, verify=False, limit=100)
    assert task.info["verified"] is False


# ------------------------------------------------------------------------- layouts of other tools


def _place(folder: Path, names: dict[str, str], gz: bool) -> None:
    """The four real files in `folder`, named by `names` (standard name -> name there)."""
    folder.mkdir(parents=True, exist_ok=True)
    for spec in sources.FILES.values():
        name = names.get(spec.name, spec.name)
        if gz:
            (folder / f"{name}.gz").symlink_to(REAL_DIR / f"{spec.name}.gz")
        else:
            (folder / name).write_bytes(real_bytes(spec.name))


DOTTED = {spec.name: spec.name.replace("-idx", ".idx") for spec in sources.FILES.values()}


@pytest.mark.parametrize(
    "given, holder, names, gz",
    [
        ("d", "d", DOTTED, False),  # unpacked by an archive tool: train-images.idx3-ubyte
        ("d", "d", DOTTED, True),
        ("root", "root/FashionMNIST/raw", {}, False),  # torchvision's root=...
        ("root/FashionMNIST", "root/FashionMNIST/raw", {}, True),
        ("repo", "repo/data/fashion", {}, True),  # a clone of zalandoresearch/fashion-mnist
        ("datasets", "datasets/fashion-mnist", {}, True),  # Keras' ~/.keras/datasets
    ],
)
def test_layouts_other_tools_leave_are_found(tmp_path, raw_data, given, holder, names, gz):
    _place(tmp_path / holder, names, gz)
    assert sources.find_data_dir(tmp_path / given) == tmp_path / holder
    train, test, where = data.load_raw("idx", tmp_path / given, verify=True)
    assert where == {"source": "idx", "directory": str(tmp_path / holder), "file_order": True}
    np.testing.assert_array_equal(test.images, raw_data[1].images)
    np.testing.assert_array_equal(train.labels, raw_data[0].labels)


def _sorted_examples(split: sources.RawSplit) -> np.ndarray:
    rows = np.concatenate(
        [split.images.reshape(len(split.labels), -1), split.labels[:, None].astype(np.uint8)],
        axis=1,
    )
    return rows[np.lexsort(rows.T[::-1])]


def test_kaggle_csv_is_read_and_verified_in_its_own_order(kaggle_csv_dir, raw_data):
    train, test, where = data.load_raw("idx", kaggle_csv_dir, verify=True)
    assert where == {"source": "csv", "directory": str(kaggle_csv_dir), "file_order": False}
    for got, want in zip((train, test), raw_data, strict=True):
        assert got.images.shape == want.images.shape and got.images.dtype == np.uint8
        assert got.labels.dtype == np.int32
        assert not np.array_equal(got.labels, want.labels)  # another order ...
        np.testing.assert_array_equal(
            _sorted_examples(got), _sorted_examples(want)
        )  # ... same examples
    task = data.load_task(kaggle_csv_dir, limit=100)
    assert task.info["source"] == "csv" and task.info["file_order"] is False


def test_kaggle_csv_of_other_images_is_refused(kaggle_csv_dir, tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / sources.CSV_FILES["train"]).symlink_to(kaggle_csv_dir / sources.CSV_FILES["train"])
    blob = bytearray((kaggle_csv_dir / sources.CSV_FILES["test"]).read_bytes())
    last = blob.rindex(b",") + 1  # the last pixel of the last row: well-formed, another image
    blob[last : last + 1] = b"7" if blob[last : last + 1] != b"7" else b"8"
    (folder / sources.CSV_FILES["test"]).write_bytes(bytes(blob))
    with pytest.raises(DataError) as excinfo:
        data.load_fashion_mnist(data_dir=folder)
    assert_clean_error(
        excinfo,
        str(folder / sources.CSV_FILES["test"]),
        "does not hold the official Fashion-MNIST test examples",
        "--allow-unverified-data",
    )
    assert data.load_fashion_mnist(data_dir=folder, verify=False)[1].labels.shape == (10_000,)


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"label,pixel1\n1,2\n", "not Kaggle's header"),
        (sources.CSV_HEADER.encode() + b"\n1,2,3\n", "1 rows of 3 numbers"),
        (sources.CSV_HEADER.encode() + b"\n1,2,3\n1,2\n", "not rows of 785 integers"),
        (
            sources.CSV_HEADER.encode() + b"\n" + b",".join([b"300"] * 785) + b"\n",
            "not rows of 785 integers",
        ),
        (
            sources.CSV_HEADER.encode() + b"\n" + b",".join([b"1"] * 785) + b"\n",
            "1 rows of 785 numbers",
        ),
    ],
)
def test_malformed_kaggle_csv(tmp_path, body, expected):
    for name in sources.CSV_FILES.values():
        (tmp_path / name).write_bytes(body)
    with pytest.raises(DataError) as excinfo:
        data.load_fashion_mnist(data_dir=tmp_path, verify=False)
    assert_clean_error(excinfo, str(tmp_path / sources.CSV_FILES["train"]), expected)


def test_what_was_found_is_named_with_the_fix(tmp_path):
    folder = tmp_path / "downloads"
    _place(folder / "FashionMNIST" / "raw", {}, gz=True)
    for spec in list(sources.FILES.values())[2:]:
        (folder / "FashionMNIST" / "raw" / f"{spec.name}.gz").unlink()
    (folder / "fashionmnist.zip").write_bytes(b"PK\x03\x04")
    (folder / sources.CSV_FILES["train"]).write_text(sources.CSV_HEADER + "\n")
    (folder / "fashion_mnist" / "3.0.1").mkdir(parents=True)
    (folder / "fashion_mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    with pytest.raises(DataError) as excinfo:
        sources.find_data_dir(folder)
    assert_clean_error(
        excinfo,
        "missing in FashionMNIST/raw/ t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
        "has fashion-mnist_train.csv but not fashion-mnist_test.csv",
        f"unzip {folder / 'fashionmnist.zip'} -d {folder}",
        f"--source tfds --data-dir {folder}",
        "holds FashionMNIST/, fashion-mnist_train.csv, fashion_mnist/, fashionmnist.zip",
    )


def test_a_file_given_as_the_folder(tmp_path):
    given = REAL_DIR / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DataError) as excinfo:
        sources.find_data_dir(given)
    assert_clean_error(
        excinfo, "a file, not a folder: it is gzip-compressed", f"--data-dir {REAL_DIR}"
    )


# --------------------------------------------------------------- files not what their name says


@pytest.mark.parametrize(
    "payload, expected",
    [
        (
            lambda: gzip.compress(gzip.compress(real_bytes("train-labels-idx1-ubyte"))),
            "gzip-compressed twice",
        ),
        (lambda: b"", "the file is empty"),
        (
            lambda: b"<!DOCTYPE html>\n<html><body>Access denied</body></html>\n",
            "it is an HTML page",
        ),
        (
            lambda: b"label,pixel1,pixel2\n9,0,0\n",
            "it is text (CSV?), starting 'label,pixel1,pixel2'",
        ),
        (
            lambda: b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n",
            "git lfs pull",
        ),
        (lambda: real_bytes("t10k-images-idx3-ubyte"), "it is an IDX images file"),
        (lambda: b"BZh91AY&SY" + bytes(40), "bzip2-compressed"),
        (lambda: b"PK\x03\x04" + bytes(40), "a zip archive"),
    ],
    ids=["gzip-twice", "empty", "html", "text", "git-lfs", "swapped", "bzip2", "zip"],
)
def test_a_file_that_is_not_what_its_name_says_is_described(tmp_path, payload, expected):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(payload())
    with pytest.raises(DataError) as excinfo:
        sources.read_idx(path, expected_kind="labels", expected_count=60_000)
    message = assert_clean_error(excinfo, str(path), expected)
    if expected == "gzip-compressed twice":  # the exact command that fixes it
        assert f"gzip -dc {path} > {path}.once && mv {path}.once {path}" in message


# ----------------------------------------------------------------------------- find_data_dir


@pytest.fixture
def no_default_places(tmp_path, monkeypatch):
    """Debian dir and user cache point at empty places; no $FMNIST_DATA_DIR."""
    debian, cache_home = tmp_path / "debian", tmp_path / "xdg"
    debian.mkdir()
    monkeypatch.setattr(sources, "DEBIAN_DIR", debian)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    return debian, cache_home / "fmnist_jax"


def test_nothing_found_lists_places_and_fixes(no_default_places):
    debian, cache = no_default_places
    with pytest.raises(DataError) as excinfo:
        sources.find_data_dir()
    message = assert_clean_error(
        excinfo,
        str(debian),
        str(cache),
        "--data-dir",
        "FMNIST_DATA_DIR",
        "--source download",
        "--source tfds",
        "t10k-images-idx3-ubyte",
    )
    # Only fixes that apply: no install of what is installed.
    assert ("sudo apt-get install dataset-fashion-mnist" in message) == bool(
        shutil.which("apt-get")
    )
    assert ("pip install" in message) != HAS_TFDS


def test_env_var_then_cache_are_used(no_default_places, tmp_path, monkeypatch):
    _, cache = no_default_places
    make_dir(cache)
    assert sources.find_data_dir() == cache
    env_dir = make_dir(tmp_path / "env")
    monkeypatch.setenv("FMNIST_DATA_DIR", str(env_dir))
    assert sources.find_data_dir() == env_dir
    explicit = make_dir(tmp_path / "explicit")
    assert sources.find_data_dir(explicit) == explicit
    # A wrong explicit setting is an error, not a silent fallback to other data.
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(DataError) as excinfo:
        sources.find_data_dir()
    assert_clean_error(excinfo, str(tmp_path / "typo"), "$FMNIST_DATA_DIR")


def test_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sources.user_cache_dir() == tmp_path / "fmnist_jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.user_cache_dir() == tmp_path / "home" / ".cache" / "fmnist_jax"


# ----------------------------------------------------------------------------- download


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over tmp_path/'srv' (real .gz files linked); logs request paths."""
    root = make_dir(tmp_path / "srv")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_lands_verified_files_once(server, tmp_path, raw_data):
    url, _, requests = server
    dest = tmp_path / "dest"
    assert sources.download(dest, base_url=url, timeout=10) == dest
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted(f"{f.name}.gz" for f in sources.FILES.values())  # no temp files
    assert len(requests) == 4
    train, test = data.load_fashion_mnist(data_dir=dest)
    np.testing.assert_array_equal(train.labels, raw_data[0].labels)
    np.testing.assert_array_equal(test.images, raw_data[1].images)
    # Present and valid: nothing fetched again, so source="download" works offline.
    sources.download(dest, base_url=url)
    train2, _ = data.load_fashion_mnist("download", dest)
    assert len(requests) == 4
    np.testing.assert_array_equal(train2.images, raw_data[0].images)


def _seed_other_files(dest: Path, except_name: str) -> None:
    dest.mkdir()
    for spec in sources.FILES.values():
        if spec.name != except_name:
            (dest / f"{spec.name}.gz").symlink_to(REAL_DIR / f"{spec.name}.gz")


def test_corrupt_download_is_rejected_and_leaves_nothing(server, tmp_path):
    url, root, requests = server
    name = "t10k-labels-idx1-ubyte"
    changed = bytearray(real_bytes(name))
    changed[-1] = (changed[-1] + 1) % 10  # still a well-formed IDX file
    (root / f"{name}.gz").unlink()
    (root / f"{name}.gz").write_bytes(gzip.compress(bytes(changed)))
    dest = tmp_path / "dest"
    _seed_other_files(dest, name)
    with pytest.raises(DataError) as excinfo:
        sources.download(dest, base_url=url)
    assert_clean_error(
        excinfo, f"{url}{name}.gz", sources.FILES["test_labels"].sha256, "Nothing was written"
    )
    assert requests == [f"/{name}.gz"]  # the three valid seeded files were not fetched
    assert not [p for p in dest.iterdir() if name in p.name]  # neither final nor temp


def test_download_http_error(server, tmp_path):
    url, root, _ = server
    name = "t10k-labels-idx1-ubyte"
    (root / f"{name}.gz").unlink()
    dest = tmp_path / "dest"
    _seed_other_files(dest, name)
    with pytest.raises(DataError) as excinfo:
        sources.download(dest, base_url=url)
    assert_clean_error(excinfo, f"{url}{name}.gz", "HTTP 404", debian_fix())
    assert not [p for p in dest.iterdir() if name in p.name]


def refused_url() -> str:
    """An address where nothing listens: a request fails at once, as with no network."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_without_network_fails_at_once_with_fixes_that_apply(tmp_path):
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    with pytest.raises(DataError) as excinfo:
        sources.download(dest, base_url=refused_url())
    assert time.monotonic() - t0 < 30  # the bound; retries with back-off took minutes
    message = assert_clean_error(excinfo, "Connection refused", "Nothing was written", "--data-dir")
    assert "--source download" not in message  # the source that just failed
    assert "pip install" not in message  # needs the network too
    assert not dest.exists()


def test_download_of_an_html_page_says_so(server, tmp_path):
    url, root, _ = server
    name = "t10k-labels-idx1-ubyte"
    (root / f"{name}.gz").unlink()
    (root / f"{name}.gz").write_bytes(b"<html><body>Please sign in</body></html>")
    dest = tmp_path / "dest"
    _seed_other_files(dest, name)
    with pytest.raises(DataError) as excinfo:
        sources.download(dest, base_url=url)
    assert_clean_error(excinfo, f"{url}{name}.gz", "it is an HTML page", "Nothing was written")
    assert not [p for p in dest.iterdir() if name in p.name]


# ----------------------------------------------------------------------------- tfds


@pytest.mark.tfds
def test_tfds_source_under_mock_data():
    if not HAS_TFDS:  # not imported here: see probe
        pytest.skip("install the tfds extra: pip install 'fmnist-jax[tfds]'")
    # PYTHONPATH: the probe imports this checkout's fmnist_jax, whatever the environment installed.
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "JAX_PLATFORMS": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(root),
    }
    probe = Path(__file__).with_name("_tfds_probe.py")
    done = subprocess.run(
        [sys.executable, str(probe), "40"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for split in ("train", "test"):
        facts = out[split]
        assert facts["images_shape"] == [40, 28, 28] and facts["images_dtype"] == "uint8"
        assert facts["labels_shape"] == [40] and facts["labels_dtype"] == "int32"
        assert 0 <= facts["label_min"] <= facts["label_max"] <= 9
    assert "does not hold the official Fashion-MNIST train examples" in out["verify_error"]
    assert "--allow-unverified-data" in out["verify_error"]
    task = out["task"]
    assert task["train_shape"][1:] == [28, 28, 1] and task["dtype"] == "float32"
    assert task["in_unit_range"] and set(task["labels"]) <= {0, 1, 2, 3, 4}
    assert task["info"]["source"] == "tfds" and task["info"]["file_order"] is False


def test_tfds_failing_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    """What an interrupted TFDS preparation leaves (temporary downloads, an incomplete folder)
    is removed; what was there before stays. TFDS is a stand-in here: no network, no TensorFlow."""
    import types

    root = tmp_path / "tfds"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "other_dataset.tar.gz").write_bytes(b"kept")
    (root / "mnist" / "3.0.1").mkdir(parents=True)

    def load(name, split, as_supervised, download, data_dir):
        if not download:
            raise AssertionError(f"Dataset {name}: could not find data in {data_dir}")
        (root / "downloads" / "fashion_mnist" / "t10k.gz.tmp.0123").mkdir(parents=True)
        (root / "downloads" / "extracted").mkdir()
        (root / "fashion_mnist" / "incomplete.AB12_3.0.1").mkdir(parents=True)
        raise ConnectionError("Connection reset by peer")

    fake = types.SimpleNamespace(
        load=load, builder=lambda name, data_dir: types.SimpleNamespace(data_dir_root=data_dir)
    )
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    monkeypatch.setattr(sources, "_check_reachable", lambda *args: None)  # never the network
    with pytest.raises(DataError) as excinfo:
        data.load_fashion_mnist("tfds", root)
    message = assert_clean_error(excinfo, "Connection reset by peer")
    assert "pip install" not in message  # tensorflow_datasets is importable here
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "downloads",
        "downloads/other_dataset.tar.gz",
        "mnist",
        "mnist/3.0.1",
    ]
